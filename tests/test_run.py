"""The trained-run layer: what training returns equals what `open_run` restores (parameters only), and workdirs of
another config format are refused with one line."""

import jax
import numpy as np
import pytest
import yaml

from chunklm.cli import main
from chunklm.errors import CheckpointError
from chunklm.run.trained import open_run
from chunklm.train import trainer
from conftest import tiny_config


def test_open_run_restores_what_training_ended_with(tmp_path, corpus_dir):
  cfg = tiny_config("train.steps=4", "eval.sample_bytes=0", data=corpus_dir)
  result = trainer.train(cfg, tmp_path / "run", progress=False, log=lambda *a, **k: None)
  run = open_run(tmp_path / "run", log=lambda *a, **k: None)
  assert run.step == result.step == 4 and run.kind == "bytes" and run.vocab == {} and run.tokenizer is None
  for a, b in zip(jax.tree.leaves(result.run.params), jax.tree.leaves(run.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree.structure(result.run.params) == jax.tree.structure(run.params)


def test_a_run_of_an_older_config_format_is_refused(tmp_path, corpus_dir, capsys):
  cfg = tiny_config("train.steps=2", "eval.sample_bytes=0", data=corpus_dir)
  trainer.train(cfg, tmp_path / "run", progress=False, log=lambda *a, **k: None)
  saved = tmp_path / "run" / "config.yaml"
  tree = yaml.safe_load(saved.read_text())
  del tree["config_format"]  # as chunklm 0.1 wrote it
  saved.write_text(yaml.safe_dump(tree))
  with pytest.raises(CheckpointError, match=r"chunklm < 0\.2\.0 \(config format 1\)"):
    open_run(tmp_path / "run")
  assert main(["eval", "--workdir", str(tmp_path / "run")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "config format 1" in err[0]
  with pytest.raises(CheckpointError, match="config format 1"):  # resuming it is refused too, nothing is written
    trainer.train(cfg, tmp_path / "run", progress=False, log=lambda *a, **k: None)
