"""Training loop: exact resume, metrics files, NaN guard, checkpoint fallback (resume compatibility and other
faults: test_faults.py)."""

import jax
import numpy as np
import pytest

from chunklm.run.checkpoint import Checkpointer
from chunklm.run.metrics import read_jsonl
from chunklm.run.trained import open_run
from chunklm.train import trainer
from conftest import tiny_config


def params_of(workdir):
  run = open_run(workdir, log=lambda *a, **k: None)
  return run.step, run.params


def train_records(workdir):
  return [(r["step"], r["loss"]) for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]


def test_resume_equals_straight_run(tmp_path, corpus_dir):
  cfg = tiny_config("train.steps=10", "train.checkpoint_every=100", data=corpus_dir)
  quiet = {"progress": False, "log": lambda *a, **k: None}
  straight = trainer.train(cfg, tmp_path / "straight", **quiet)
  first = trainer.train(cfg, tmp_path / "resumed", stop_after=5, **quiet)
  assert not first.finished and first.step == 5
  second = trainer.train(cfg, tmp_path / "resumed", **quiet)
  assert second.finished and second.step == 10
  (s1, p1), (s2, p2) = params_of(tmp_path / "straight"), params_of(tmp_path / "resumed")
  assert s1 == s2 == 10
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p1, p2)
  a, b = train_records(tmp_path / "straight"), train_records(tmp_path / "resumed")
  assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 11))
  assert [x for _, x in a] == pytest.approx([x for _, x in b], rel=1e-5)
  assert straight.valid["bpb"] == pytest.approx(second.valid["bpb"], rel=1e-5)
  for name in ("metrics.jsonl", "loss.png", "config.yaml"):
    assert (tmp_path / "straight" / name).exists()
  assert list((tmp_path / "straight" / "tb").glob("events.*"))


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, corpus_dir, monkeypatch):
  cfg = tiny_config("train.steps=10", "train.checkpoint_every=3", data=corpus_dir)
  real = trainer.make_train_step

  def poisoned(*args, **kwargs):
    step = real(*args, **kwargs)

    def run(state, batch):
      state, m = step(state, batch)
      if int(state["step"]) >= 5:
        m = dict(m, loss=m["loss"] * np.nan)
      return state, m

    return run

  monkeypatch.setattr(trainer, "make_train_step", poisoned)
  with pytest.raises(trainer.TrainingDiverged, match=r"diverged at step 5: loss=nan.*last good checkpoint is step 3"):
    trainer.train(cfg, tmp_path / "run", progress=False, log=lambda *a, **k: None)
  assert Checkpointer(tmp_path / "run" / "checkpoints", read_only=True).steps() == [3]


@pytest.mark.slow  # CI budget: test_faults.py's bit-flip case covers the fallback in the default suite
def test_corrupt_latest_checkpoint_falls_back(tmp_path, corpus_dir, capsys):
  cfg = tiny_config("train.steps=8", "train.checkpoint_every=4", data=corpus_dir)
  trainer.train(cfg, tmp_path / "run", stop_after=8, progress=False)
  ckpt_dir = tmp_path / "run" / "checkpoints"
  assert Checkpointer(ckpt_dir, read_only=True).steps() == [4, 8]
  for f in (ckpt_dir / "8" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b"garbage")
  capsys.readouterr()
  step = open_run(tmp_path / "run").step
  assert step == 4
  err = capsys.readouterr().err
  assert "checkpoint at step 8 is unreadable" in err and "using step 4" in err
  res = trainer.train(cfg, tmp_path / "run", progress=False)
  assert res.finished and res.step == 8


def test_bad_data_writes_nothing(tmp_path):
  cfg = tiny_config(data=tmp_path / "missing")
  with pytest.raises(Exception, match="no such file"):
    trainer.train(cfg, tmp_path / "run", progress=False)
  assert not (tmp_path / "run").exists()


def test_periodic_evals_cap_a_single_document_valid_set(tmp_path, corpus_dir):
  """eval.max_bytes caps the periodic evaluations even when the valid set is one long document (it is cut); the
  final evaluation reads all of it."""
  valid = tmp_path / "valid.txt"
  valid.write_bytes(b"".join((corpus_dir / f"doc{i:03d}.py").read_bytes() for i in range(8)))
  cfg = tiny_config("train.steps=4", "train.eval_every=2", "eval.max_bytes=700", data=corpus_dir, valid=valid)
  trainer.train(cfg, tmp_path / "run", progress=False, log=lambda *a, **k: None)
  evals = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "valid"]
  assert [r["step"] for r in evals] == [2, 4]
  assert evals[0]["bytes"] == 700 and evals[1]["bytes"] == valid.stat().st_size > 2000


def test_a_mixture_run_reports_each_sources_valid_bpb_and_its_share_of_training_bytes(tmp_path):
  from conftest import write_corpus

  folders = [write_corpus(tmp_path / name, seed=i) for i, name in enumerate(("prose", "code"))]
  mixture = (
    "["
    + ", ".join(f"{{name: {n}, sources: [{f}], weight: {w}}}" for n, f, w in zip(("prose", "code"), folders, (3, 1)))
    + "]"
  )
  cfg = tiny_config("train.steps=4", "train.checkpoint_every=2", "train.eval_every=2", f"data.mixture={mixture}")
  result = trainer.train(cfg, tmp_path / "run", progress=False, log=lambda *a, **k: None)
  assert set(result.valid["sources"]) == {"prose", "code"}
  records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
  valid = [r for r in records if r["split"] == "valid"]
  assert [r["step"] for r in valid] == [2, 4] and all(set(r["sources"]) == {"prose", "code"} for r in valid)
  parts = list(valid[-1]["sources"].values())
  assert min(parts) <= result.valid["bpb"] <= max(parts), "the whole is between its parts"
  mix = [r for r in records if r["split"] == "mixture"]
  assert [r["step"] for r in mix] == [2, 4]
  assert mix[-1]["prose"]["weight"] == pytest.approx(0.75) and mix[-1]["prose"]["share"] > 0.5
