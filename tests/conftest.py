"""Shared helpers: tiny configs and small synthetic corpora, so tests run in seconds on 2 CPU cores."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest

from chunklm.config import load_config
from gcs_emulator import Emulator

# Synchronous CPU dispatch (set before the CPU client exists). The interpreted Pallas TPU kernels run their body in
# io_callbacks that dispatch JAX ops themselves; with asynchronous dispatch such an op can queue behind an op the
# test dispatched meanwhile, which waits for the kernel: the suite hung there once (test_kernels_interpret fuzz).
jax.config.update("jax_cpu_enable_async_dispatch", False)
# Implicit rank promotion (adding a [B, L] array to a [L] one) hides shape bugs, as in nanodo: every broadcast between
# arrays of different ranks is written out ([None], reshape, broadcast_to).
jax.config.update("jax_numpy_rank_promotion", "raise")

TINY = [
  "model.layout=[T2]",
  "model.d_model=32",
  "model.n_heads=2",
  "data.seq_len=32",
  "data.min_doc_bytes=4",
  "train.batch_size=4",
  "train.steps=8",
  "train.warmup_steps=2",
  "train.log_every=1",
  "train.checkpoint_every=4",
  "eval.batch_size=4",
  "eval.sample_bytes=8",
  "eval.max_bytes=2048",
]


def tiny_config(*overrides: str, data: Path | None = None, valid: Path | None = None):
  extra = list(overrides)
  if data is not None:
    extra.append(f"data.sources=[{data}]")
  if valid is not None:
    extra.append(f"data.valid_sources=[{valid}]")
  return load_config(None, TINY + extra)


def write_corpus(root: Path, n_docs: int = 24, seed: int = 0, size: int = 300) -> Path:
  """A directory of small Python-like text files (deterministic)."""
  rng = random.Random(seed)
  words = ["def", "return", "self", "value", "for", "in", "range", "if", "else", "print", "x", "y", "import"]
  root.mkdir(parents=True, exist_ok=True)
  for i in range(n_docs):
    lines = []
    while sum(len(s) + 1 for s in lines) < size:
      lines.append("    " * rng.randint(0, 2) + " ".join(rng.choice(words) for _ in range(rng.randint(2, 7))))
    (root / f"doc{i:03d}.py").write_text("\n".join(lines) + "\n")
  return root


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
  return write_corpus(tmp_path / "corpus")


@pytest.fixture(scope="session")
def gcs_emulator():
  """Cloud Storage on 127.0.0.1 (tests/gcs_emulator.py), for the whole session; `.bucket()` makes a fresh bucket."""
  emulator = Emulator().start()
  yield emulator
  emulator.stop()


# A child process that trains a tiny run and SIGKILLs itself at one moment, chosen by patching the code that runs then
# (no hook in chunklm itself):
#   training: while step 3's metrics are written (the checkpoint of step 2 may still be being written);
#   save:     in the background thread that commits step 4, after all its files are written, before the commit
#             (orbax's rename of the temporary directory on a disk; its commit file in a bucket).
_KILLED_CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config
    from chunklm.train import trainer
    from chunklm.run.metrics import MetricsWriter
    from orbax.checkpoint._src.path.atomicity import {commit} as Commit

    def die():
      os.kill(os.getpid(), signal.SIGKILL)

    if {moment!r} == "training":
      write = MetricsWriter.write
      def write_then_die(self, step, split, values):
        write(self, step, split, values)
        if split == "train" and step == 3:
          die()
      MetricsWriter.write = write_then_die
    else:
      finalize = Commit.finalize
      async def die_before_commit(self, *args, **kwargs):
        if self._final_path.name == {dying_step!r}:
          die()
        await finalize(self, *args, **kwargs)
      Commit.finalize = die_before_commit
    cfg = tiny_config("train.steps=4", "train.checkpoint_every=2", *{extra!r}, data={data!r})
    trainer.train(cfg, {workdir!r}, progress=False, log=lambda *a, **k: None)
""")


def killed_child(moment: str, workdir: str, data: str, extra: tuple[str, ...] = (), dying_step: int = 4) -> int:
  """Trains 4 steps (checkpoints at 2 and 4) of the tiny config (with `extra` overrides) in a child killed with -9
  at `moment` ("training", or "save": while the checkpoint of `dying_step` is committed); its return code."""
  commit = "CommitFileTemporaryPath" if workdir.startswith("gs://") else "AtomicRenameTemporaryPath"
  code = _KILLED_CHILD.format(
    tests=str(Path(__file__).parent),
    commit=commit,
    moment=moment,
    data=data,
    workdir=workdir,
    extra=tuple(extra),
    dying_step=str(dying_step),
  )
  child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert child.returncode == -9, child.stderr[-2000:]
  return child.returncode
