"""Faults around a run's start and its readers: a fine-tune killed while writing its first checkpoint restarts from
its source, bit for bit; a resume naming another source is refused; a reader never calls a readable checkpoint
damaged (a config.yaml edited after training, a checkpoint pruned by the trainer while it is read); an MrT5 resume
follows the same resume rule as a language model's."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest

from chunklm.errors import CheckpointError
from chunklm.run.checkpoint import Checkpointer, StateMismatch
from chunklm.run.metrics import read_jsonl
from chunklm.run.trained import open_run
from chunklm.seq2seq.trainer import load_mrt5_config, train_mrt5
from chunklm.train import trainer
from conftest import killed_child, tiny_config, write_corpus
from test_mrt5_train import TINY as MRT5_TINY

QUIET = dict(progress=False, log=lambda *a, **k: None)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def source(tmp_path_factory, corpus):
  run = tmp_path_factory.mktemp("source") / "run"
  trainer.train(tiny_config("train.steps=2", "train.checkpoint_every=2", data=corpus), run, **QUIET)
  return run


def _losses(workdir):
  return [(r["step"], r["loss"]) for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]


@pytest.mark.slow  # CI budget: a killed child and two fine-tunes (~40 s on 2 cores); run by .ci/run
def test_a_fine_tune_killed_in_its_first_save_restarts_from_its_source(source, corpus, tmp_path):
  fine_tune = (f"train.init_from={source}", "train.freeze=[embed]")
  killed = tmp_path / "killed"
  killed_child("save", str(killed), str(corpus), extra=fine_tune, dying_step=2)
  assert Checkpointer(killed / "checkpoints", read_only=True).steps() == []  # only the unfinished write is there
  cfg = tiny_config("train.steps=4", "train.checkpoint_every=2", *fine_tune, data=corpus)
  lines: list[str] = []
  res = trainer.train(cfg, killed, progress=False, log=lines.append)
  assert any(line.startswith(f"initialised from {source}") for line in lines)
  straight = trainer.train(cfg, tmp_path / "straight", **QUIET)
  jax.tree.map(np.testing.assert_array_equal, res.run.params, straight.run.params)
  assert _losses(killed) == _losses(tmp_path / "straight")
  src = open_run(source).params
  jax.tree.map(np.testing.assert_array_equal, res.run.params["embed"], src["embed"])  # frozen: the source's


@pytest.mark.slow  # CI budget: three short trainings (~30 s on 2 cores); run by .ci/run
def test_a_resume_from_another_source_is_refused(source, corpus, tmp_path):
  run = tmp_path / "ft"
  cfg = tiny_config("train.steps=2", "train.checkpoint_every=2", f"train.init_from={source}", data=corpus)
  trainer.train(cfg, run, **QUIET)
  other = shutil.copytree(source, tmp_path / "other")
  more = tiny_config("train.steps=4", "train.checkpoint_every=2", f"train.init_from={other}", data=corpus)
  with pytest.raises(CheckpointError, match=r"another model or optimizer state \(train\.init_from: "):
    trainer.train(more, run, **QUIET)
  # resumed without --init-from: the run keeps its own source
  res = trainer.train(tiny_config("train.steps=4", "train.checkpoint_every=2", data=corpus), run, **QUIET)
  assert res.finished and res.run.cfg.train.init_from == str(source)


def test_an_edited_config_is_named_not_called_damage(source, tmp_path):
  run = shutil.copytree(source, tmp_path / "run")
  config = run / "config.yaml"
  config.write_text(config.read_text().replace("d_model: [32]", "d_model: [48]"))
  with pytest.raises(StateMismatch, match=r"holds another model than the config describes .*config\.yaml edited"):
    open_run(run)
  assert not (tmp_path / "run" / "checkpoints-unreadable").exists()


def test_a_checkpoint_pruned_while_it_is_read_is_not_damage(source, tmp_path, monkeypatch):
  """A reader lists step 2; before it reads it, the trainer (keep_checkpoints=1) writes step 3 and prunes 2."""
  run = shutil.copytree(source, tmp_path / "run")
  reader = Checkpointer(run / "checkpoints", read_only=True)
  like = {"params": open_run(source).params}
  real = Checkpointer.restore
  pruned = []

  def restore(self, step, *args, **kwargs):
    if not pruned:
      pruned.append(step)
      writer = Checkpointer(run / "checkpoints", keep=1, asynchronous=False)
      writer.save(3, {"params": like["params"]}, None, {})
      writer.close()
      assert not (run / "checkpoints" / "2").exists()
    return real(self, step, *args, **kwargs)

  monkeypatch.setattr(Checkpointer, "restore", restore)
  warnings: list[str] = []
  step, state, _ = reader.restore_latest(like, log=warnings.append, partial=True)
  assert (step, pruned, warnings) == (3, [2], [])


@pytest.mark.slow  # CI budget: two short MrT5 trainings (~30 s on 2 cores); run by .ci/run
def test_an_mrt5_resume_follows_the_resume_rule(corpus, tmp_path):
  def cfg(*extra):
    return load_mrt5_config("mrt5_tiny", [*MRT5_TINY, "train.checkpoint_every=2", f"data.sources=[{corpus}]", *extra])

  run = tmp_path / "mrt5"
  train_mrt5(cfg("train.steps=2"), run, **QUIET)
  with pytest.raises(CheckpointError, match=r"another model or optimizer state \(train\.grad_clip: 1\.0 -> 0\.0"):
    train_mrt5(cfg("train.steps=4", "train.grad_clip=0"), run, **QUIET)
  with pytest.raises(CheckpointError, match=r"another data stream \(seq2seq\.noise_density.*resume with the orig"):
    train_mrt5(cfg("train.steps=4", "seq2seq.noise_density=0.2", "seq2seq.target_len=24"), run, **QUIET)
  lines: list[str] = []
  train_mrt5(cfg("train.steps=4", "train.lr=1e-4"), run, progress=False, log=lines.append)
  assert "resumed from step 2" in lines and any("train.lr: 0.001 -> 0.0001" in line for line in lines)
  assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"] == [1, 2, 3, 4]
