"""Fault injection around training (each case cheap: the tiny config, a few steps). Every case asserts the error
class (so the CLI's exit code), its one-line message, and that no committed checkpoint was lost or altered.
SIGTERM mid-run is in test_preemption.py (slow)."""

import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chunklm.cli import main
from chunklm.config import load_config
from chunklm.errors import CheckpointError, ConfigError
from chunklm.run.checkpoint import Checkpointer, StateMismatch
from chunklm.run.lock import WorkdirBusy, workdir_lock
from chunklm.run.metrics import read_jsonl
from chunklm.run.trained import open_run
from chunklm.train import trainer
from chunklm.train.resume import check_resume, field_class
from conftest import TINY, killed_child, tiny_config

QUIET = dict(progress=False, log=lambda *a, **k: None)


def snapshot(workdir):
  """{relative path: sha256} of every file of every checkpoint."""
  root = workdir / "checkpoints"
  return {
    str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
  }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_dir_module):
  """A 4-step run with checkpoints at 2 and 4, copied fresh for each test that changes it."""
  run = tmp_path_factory.mktemp("faults") / "run"
  trainer.train(tiny_config("train.steps=4", "train.checkpoint_every=2", data=corpus_dir_module), run, **QUIET)
  return run


@pytest.fixture
def run(trained, tmp_path):
  import shutil

  dst = tmp_path / "run"
  shutil.copytree(trained, dst)
  return dst


@pytest.fixture(scope="module")
def corpus_dir_module(tmp_path_factory):
  from conftest import write_corpus

  return write_corpus(tmp_path_factory.mktemp("corpus"))


def test_every_config_field_has_a_resume_class():
  flat = {}

  def walk(d, prefix=""):
    for k, v in d.items():
      walk(v, f"{prefix}{k}.") if isinstance(v, dict) else flat.setdefault(f"{prefix}{k}", v)

  from chunklm.config import to_dict

  walk(to_dict(load_config(None, TINY)))
  classes = {k: field_class(k) for k in flat}
  assert classes["model.d_model"] == classes["train.seed"] == "state"
  assert classes["data.seed"] == classes["data.sources"] == classes["train.batch_size"] == "data"
  assert classes["train.lr"] == classes["train.steps"] == classes["mesh.fsdp"] == classes["data.prefetch"] == "free"
  assert set(classes.values()) <= {"state", "data", "free"}


def test_a_change_of_optimizer_structure_is_refused_and_moves_nothing(run, corpus_dir_module):
  before = snapshot(run)
  cfg = tiny_config("train.steps=6", "train.checkpoint_every=2", "train.grad_clip=0", data=corpus_dir_module)
  with pytest.raises(CheckpointError, match=r"another model or optimizer state \(train\.grad_clip: 1\.0 -> 0\.0"):
    trainer.train(cfg, run, **QUIET)
  assert snapshot(run) == before and not (run / "checkpoints-unreadable").exists()
  with pytest.raises(CheckpointError):  # and again: a re-run never starts over silently
    trainer.train(cfg, run, **QUIET)
  wider = tiny_config("train.steps=6", "model.d_model=48", "data.seq_len=16", data=corpus_dir_module)
  with pytest.raises(CheckpointError, match=r"another model or optimizer state \(model\.d_model: \[32\] -> \[48\]\)"):
    trainer.train(wider, run, **QUIET)  # the model's change is named, not the data's
  assert snapshot(run) == before


def test_a_data_change_needs_consent_and_every_change_is_recorded(run, corpus_dir_module, capsys):
  before = snapshot(run)
  cfg = tiny_config(
    "train.steps=6", "train.checkpoint_every=2", "data.seed=7", "train.lr=0.001", data=corpus_dir_module
  )
  with pytest.raises(CheckpointError, match=r"another data stream \(data\.seed: 0 -> 7\).*--allow-data-change"):
    trainer.train(cfg, run, **QUIET)
  assert snapshot(run) == before
  capsys.readouterr()
  res = trainer.train(cfg, run, allow_data_change=True, stop_after=1, progress=True, log=lambda *a, **k: None)
  assert res.step == 5
  err = capsys.readouterr().err  # not a terminal: plain progress lines, no carriage returns
  assert "\r" not in err and any(line.startswith("step 5/6 loss ") for line in err.splitlines()), err
  (record,) = [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "resume"]
  assert record["step"] == 4 and record["data_changed"]
  assert "data.seed: 0 -> 7" in record["changed"] and any(c.startswith("train.lr:") for c in record["changed"])
  # every start records what produced the run: versions, commit, devices (config.yaml as comments, so it loads)
  made = [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "run"]
  assert made[-1]["step"] == 4 and made[-1]["jax"] == jax.__version__ and "devices" in made[-1]
  text = (run / "config.yaml").read_text()
  assert text.startswith("# written by chunklm train\n# chunklm: ") and f"# jax: {jax.__version__}" in text
  assert load_config(str(run / "config.yaml")).data.seed == 7


def test_free_changes_pass_the_rule_without_consent(corpus_dir_module, tmp_path):
  old = tiny_config("train.steps=4", data=corpus_dir_module)
  new = tiny_config("train.steps=8", "train.lr=0.001", "eval.max_bytes=100", "mesh.data=1", data=corpus_dir_module)
  changes = check_resume(tmp_path, old, new, lambda c: trainer.setup_state(c, abstract=True)[2])
  assert not changes.data and not changes.record()["data_changed"]
  assert {c.split(":")[0] for c in changes.free} == {"train.steps", "train.lr", "eval.max_bytes", "mesh.data"}


def test_a_second_writer_is_refused_naming_the_holder(run, corpus_dir_module):
  before = snapshot(run)
  cfg = tiny_config("train.steps=6", data=corpus_dir_module)
  with workdir_lock(run, what="chunklm train"):
    with pytest.raises(WorkdirBusy, match=rf"in use by chunklm train \(pid {os.getpid()} on .*another --workdir"):
      trainer.train(cfg, run, **QUIET)
  assert snapshot(run) == before
  with workdir_lock(run):  # released when its holder is done
    pass


def test_non_finite_state_after_the_update_is_never_saved(tmp_path, corpus_dir_module, monkeypatch):
  real = trainer.make_train_step

  def poisoned(*args, **kwargs):
    step = real(*args, **kwargs)

    def run(state, batch):
      state, m = step(state, batch)
      if int(state["step"]) == 2:  # the loss stays finite (taken before the update); the parameters do not
        state = dict(state, params=jax.tree.map(lambda v: v * jnp.nan, state["params"]))
      return state, m

    return run

  monkeypatch.setattr(trainer, "make_train_step", poisoned)
  cfg = tiny_config("train.steps=4", "train.checkpoint_every=1", data=corpus_dir_module)
  with pytest.raises(
    trainer.TrainingDiverged,
    match=r"step 2: the parameters or optimizer state are not finite.*"
    r"last good checkpoint is step 1",
  ):
    trainer.train(cfg, tmp_path / "run", **QUIET)
  assert Checkpointer(tmp_path / "run" / "checkpoints", read_only=True).steps() == [1]


def test_non_finite_settings_are_refused_at_load():
  for bad in ("train.lr=inf", "train.lr=nan", "model.target_ratio=[inf]", "eval.temperature=nan"):
    with pytest.raises(ConfigError, match="finite"):
      load_config(None, TINY + [bad])


def test_when_no_checkpoint_can_be_read_nothing_is_moved(run, corpus_dir_module):
  for f in (run / "checkpoints").rglob("*"):
    if f.is_file() and f.parent.name != "meta" and f.stat().st_size > 0:
      f.write_bytes(b"garbage")
  damaged = snapshot(run)
  cfg = tiny_config("train.steps=4", "train.checkpoint_every=2", data=corpus_dir_module)
  for _ in range(2):  # a second run does not start over either
    with pytest.raises(CheckpointError, match=r"no checkpoint .* can be read .*nothing was moved"):
      trainer.train(cfg, run, **QUIET)
  assert snapshot(run) == damaged


def test_workdir_that_is_a_file_is_one_line(tmp_path, corpus_dir_module, capsys):
  f = tmp_path / "run"
  f.write_text("x")
  code = main(
    ["train", "--config", "hnet_1stage_tiny", "--workdir", str(f), "--data", str(corpus_dir_module), "--no-progress"]
  )
  err = capsys.readouterr().err.strip()
  assert code == 2 and err.count("\n") == 0 and "is a file" in err


def test_a_full_disk_is_one_line_naming_the_last_complete_checkpoint(tmp_path, monkeypatch):
  """A patched writer (CI cannot mount a small filesystem): the failure of the write, started in the background,
  surfaces as one CheckpointError at the next save, not as a traceback one save later."""
  ckpt = Checkpointer(tmp_path / "checkpoints")
  state = {"w": jnp.ones((4,))}
  ckpt.save(1, state, None, {})
  ckpt.wait()
  real = ckpt.manager.wait_until_finished
  monkeypatch.setattr(
    ckpt.manager,
    "wait_until_finished",
    lambda: (_ for _ in ()).throw(
      ValueError(
        "RESOURCE_EXHAUSTED: Error writing ...: Failed to write 3821568 bytes to file 9: No space left on device"
      )
    ),
  )
  ckpt._pending = 2  # as if step 2 were being written
  with pytest.raises(
    CheckpointError,
    match=r"cannot write the checkpoint of step 2 .*no space left on device "
    r"\(.* MiB free\); the newest complete checkpoint is step 1",
  ):
    ckpt.save(3, state, None, {})
  monkeypatch.setattr(ckpt.manager, "wait_until_finished", real)
  ckpt.close()
  assert Checkpointer(tmp_path / "checkpoints", read_only=True).steps() == [1]


def test_asking_for_other_parts_than_saved_is_one_line_not_damage(tmp_path):
  state = {"params": {"w": jnp.arange(4.0)}, "opt": {"m": jnp.zeros((4,))}}
  ckpt = Checkpointer(tmp_path / "checkpoints")
  ckpt.save(1, state, None, {})
  ckpt.save(2, {**state, "extra": {"x": jnp.zeros(())}}, None, {})  # step 2 by another kind of run
  ckpt.close()
  before = snapshot(tmp_path)
  read = Checkpointer(tmp_path / "checkpoints")
  quiet = dict(log=lambda *a, **k: None)
  # the newest does not hold what is asked for: one line, raised at once, step 2 not moved aside for step 1
  with pytest.raises(StateMismatch, match=r"step 2 .* holds \['extra', 'opt', 'params'\], not \['opt', 'params'\]"):
    read.restore_latest(state, **quiet)
  with pytest.raises(StateMismatch, match=r"not \['params'\]: .* restore with partial=True"):
    read.restore(1, {"params": state["params"]})
  with pytest.raises(StateMismatch, match=r"holds \['opt', 'params'\], not \['gate', 'params'\]"):  # partial, absent
    read.restore(1, {"params": state["params"], "gate": {"g": jnp.zeros(())}}, partial=True)
  assert snapshot(tmp_path) == before and not (tmp_path / "checkpoints-unreadable").exists()
  got, _ = read.restore(1, state)  # what each checkpoint holds still reads
  assert np.array_equal(got["opt"]["m"], np.zeros(4))
  read.close()
  read = Checkpointer(tmp_path / "checkpoints", read_only=True)  # (one orbax manager: whole or partial restores)
  step, got, _ = read.restore_latest({"params": state["params"]}, partial=True, **quiet)
  assert step == 2 and np.array_equal(got["params"]["w"], np.arange(4.0))
  read.close()


def test_flipped_bytes_fail_their_checksum_and_the_previous_checkpoint_is_used(run, capsys):
  newest = run / "checkpoints" / "4"
  assert (newest / "checksums.json").exists() and (run / "checkpoints" / "2" / "checksums.json").exists()
  victim = max((p for p in (newest / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(victim.read_bytes())
  data[len(data) // 2] ^= 0xFF  # one bit-rotted byte in the middle of the largest array file
  victim.write_bytes(bytes(data))
  capsys.readouterr()
  assert open_run(run).step == 2
  err = capsys.readouterr().err
  assert "checkpoint at step 4 is unreadable (checksum mismatch: state/" in err and "using step 2" in err


def test_nan_policy_skip_drops_updates_and_stops_after_the_limit(tmp_path, corpus_dir_module, monkeypatch):
  from chunklm.train import step as step_module

  real = step_module.loss_fn
  monkeypatch.setattr(step_module, "loss_fn", lambda *a, **k: (lambda lm: (lm[0] * jnp.nan, lm[1]))(real(*a, **k)))
  cfg = tiny_config(
    "train.steps=8",
    "train.checkpoint_every=1",
    "train.nan_policy=skip",
    "train.nan_skip_limit=3",
    "train.log_every=1",
    data=corpus_dir_module,
  )
  init = trainer.setup_state(cfg)[2]["params"]
  with pytest.raises(
    trainer.TrainingDiverged,
    match=r"step 3: 3 steps in a row had a non-finite loss or gradient "
    r"and were skipped.*last good checkpoint is step 2",
  ):
    trainer.train(cfg, tmp_path / "run", **QUIET)
  saved = Checkpointer(tmp_path / "run" / "checkpoints", read_only=True)
  assert saved.steps() == [1, 2]
  restored, _ = saved.restore(2, {"params": init}, partial=True)
  assert all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(restored["params"]), jax.tree.leaves(init)))
  records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
  assert [r["skipped_total"] for r in records] == [1.0, 2.0]


def test_a_checkpoint_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
  from collections import namedtuple

  from chunklm.run import checkpoint as checkpoint_module

  ckpt = Checkpointer(tmp_path / "checkpoints")
  state = {"w": jnp.ones((1024, 1024))}  # 4 MiB
  ckpt.save(1, state, None, {})
  ckpt.wait()
  usage = namedtuple("usage", "total used free")
  monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda path: usage(10 << 20, 9 << 20, 2 << 20))
  with pytest.raises(
    CheckpointError,
    match=r"step 2 .*no space left on device \(needs 5 MiB, 2 MiB free\); the "
    r"newest complete checkpoint is step 1",
  ):
    ckpt.save(2, state, None, {})
  monkeypatch.undo()
  ckpt.close()
  assert Checkpointer(tmp_path / "checkpoints", read_only=True).steps() == [1]


@pytest.mark.parametrize(
  "moment", [pytest.param("training", marks=pytest.mark.slow), "save"]
)  # CI budget: the kill while training runs in .ci/run (the bucket's twin too); the kill while saving stays here
def test_kill_9_loses_no_committed_checkpoint_and_resume_matches_the_straight_run(
  moment, trained, tmp_path, corpus_dir_module
):
  workdir = tmp_path / "killed"
  killed_child(moment, str(workdir), str(corpus_dir_module))
  committed = Checkpointer(workdir / "checkpoints", read_only=True).steps()
  assert committed in ([], [2]) if moment == "training" else committed == [2]
  before = {k: v for k, v in snapshot(workdir).items() if k.split("/")[0] in map(str, committed)}
  res = trainer.train(
    tiny_config("train.steps=4", "train.checkpoint_every=2", data=corpus_dir_module), workdir, **QUIET
  )
  assert res.finished and res.step == 4
  after = snapshot(workdir)
  assert {k: v for k, v in after.items() if k in before} == before  # nothing committed before the kill changed
  straight = open_run(trained, log=lambda *a, **k: None)
  jax.tree.map(np.testing.assert_array_equal, res.run.params, straight.params)
  steps = lambda wd: [(r["step"], r["loss"]) for r in read_jsonl(wd / "metrics.jsonl") if r["split"] == "train"]
  assert steps(workdir) == steps(trained)
