"""chunklm export / import: a run's parameters as one safetensors file (config in the metadata) and back into a
run directory that reads, evaluates and fine-tunes like the original, bit for bit."""

import os
import stat
import time

import numpy as np
import pytest
import safetensors.numpy

from chunklm.cli import main
from chunklm.model.functional import named_leaves
from chunklm.run.imported import read_origin
from chunklm.run.trained import open_run
from chunklm.train import trainer
from chunklm.train.init_from import params_sha256
from conftest import tiny_config, write_corpus

QUIET = dict(progress=False, log=lambda *a, **k: None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("weights")
  corpus = write_corpus(root / "corpus")
  run = root / "source"
  trainer.train(tiny_config("train.steps=2", "train.checkpoint_every=2", data=corpus), run, **QUIET)
  return run, corpus


def test_export_import_round_trip_is_bit_exact_and_fine_tunes(trained, tmp_path, capsys):
  run, corpus = trained
  file, copy = tmp_path / "m.safetensors", tmp_path / "copy"
  umask = os.umask(0o022)
  try:
    assert main(["export", "--workdir", str(run), "--out", str(file)]) == 0
  finally:
    os.umask(umask)
  assert stat.S_IMODE(file.stat().st_mode) == 0o644  # as any new file: others on a shared disk may read it
  assert main(["import", "--weights", str(file), "--out", str(copy)]) == 0
  a, b = open_run(run), open_run(copy)
  assert b.cfg == a.cfg and b.step == a.step == 2
  named_a, named_b = named_leaves(a.params), named_leaves(b.params)
  assert sorted(named_a) == sorted(named_b)
  assert all(np.asarray(named_a[k]).tobytes() == np.asarray(named_b[k]).tobytes() for k in named_a)
  assert read_origin(copy)["what"].startswith("imported from") and read_origin(run) is None
  # parameters only: resuming is refused with one line; --init-from starts a new run from them
  capsys.readouterr()
  assert main(["train", "--workdir", str(copy)]) == 2
  err = capsys.readouterr().err
  assert "holds parameters only" in err and "--init-from" in err and len(err.strip().splitlines()) == 1
  cfg = tiny_config("train.steps=1", f"train.init_from={copy}", data=corpus)
  result = trainer.train(cfg, tmp_path / "tuned", **QUIET)
  assert result.finished and result.run.step == 1
  header = (tmp_path / "tuned" / "config.yaml").read_text()
  assert f"parameters sha256 {params_sha256(a.params)[:16]}" in header


def test_bad_weight_files_are_one_line_errors(trained, tmp_path, capsys):
  run, _ = trained
  not_st = tmp_path / "x.safetensors"
  not_st.write_bytes(b"not a safetensors file at all")
  plain = tmp_path / "plain.safetensors"
  safetensors.numpy.save_file({"w": np.zeros(3, np.float32)}, str(plain))
  good = tmp_path / "good.safetensors"
  assert main(["export", "--workdir", str(run), "--out", str(good)]) == 0
  tensors = safetensors.numpy.load_file(str(good))
  with safetensors.safe_open(str(good), framework="numpy") as f:
    meta = f.metadata()
  cut = tmp_path / "cut.safetensors"
  safetensors.numpy.save_file({k: v for k, v in tensors.items() if k != "head.kernel"}, str(cut), metadata=meta)
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "x").write_text("x")
  cases = [
    (not_st, tmp_path / "r1", "not a safetensors file"),
    (plain, tmp_path / "r2", "without chunklm metadata"),
    (cut, tmp_path / "r3", "1 tensors missing (head.kernel)"),
    (good, busy, "is not empty"),
    (good, not_st / "r", "x.safetensors is a file, not a directory"),
    (tmp_path / "none.safetensors", tmp_path / "r4", "no such weights file"),
  ]
  for name, meta_over, message in DAMAGED_METADATA:
    damaged = tmp_path / f"{name}.safetensors"
    safetensors.numpy.save_file(tensors, str(damaged), metadata={**meta, **meta_over(meta)})
    cases.append((damaged, tmp_path / f"r-{name}", message))
  capsys.readouterr()
  for weights, out, message in cases:
    start = time.perf_counter()
    assert main(["import", "--weights", str(weights), "--out", str(out)]) == 2, message
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    bounded = "its config metadata:" in message  # the alias bomb and the over-large config: refused at once
    assert not bounded or time.perf_counter() - start < 1.0, message
    assert not out.exists() or out == busy
  for out, message in [(tmp_path, "is a directory; name the file to write"), (not_st / "m", "is a file, not a dir")]:
    assert main(["export", "--workdir", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


BOMB = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
  f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)
DAMAGED_METADATA = [  # (name, metadata over the good file's, the error's words)
  ("tok-b64", lambda m: {"tokenizer": "!!not base64"}, "its tokenizer metadata is damaged (not base64"),
  ("tok-junk", lambda m: {"tokenizer": "aGVsbG8="}, "its tokenizer metadata is damaged (not a sentencepiece model"),
  ("step", lambda m: {"step": "two"}, "its step 'two' is not a whole number"),
  ("bomb", lambda m: {"config": m["config"] + BOMB}, "its config metadata: YAML aliases expand to more than 100,000"),
  ("huge", lambda m: {"config": m["config"] + "#" * (1 << 20)}, "its config metadata: 1,0"),
  (
    "type",
    lambda m: {"config": m["config"].replace("vocab_size: 256", "vocab_size: many")},
    "vocab_size: expected int",
  ),
  ("base", lambda m: {"config": m["config"] + "base: hnet_1stage_tiny\n"}, "its config names a base"),
]
