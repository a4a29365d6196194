"""Shared helpers: tiny configs and small synthetic corpora, so tests run in seconds on 2 CPU cores."""

from __future__ import annotations

import random
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
