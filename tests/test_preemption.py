"""A real kill: SIGTERM mid-run saves a checkpoint and exits 143; re-running finishes like an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from chunklm.run.trained import open_run
from chunklm.train.signals import StopFlag
from conftest import TINY


def train_cmd(workdir, corpus_dir, steps):
  sets = [
    a
    for o in TINY + [f"train.steps={steps}", "train.checkpoint_every=1000", "eval.sample_bytes=0"]
    for a in ("--set", o)
  ]
  return [
    sys.executable,
    "-m",
    "chunklm.cli",
    "train",
    "--config",
    "byte_transformer_tiny",
    "--no-progress",
    "--workdir",
    str(workdir),
    "--data",
    str(corpus_dir),
    *sets,
  ]


@pytest.mark.slow  # CI budget: the default suite stays under 15 minutes on 2 cores
def test_sigterm_saves_and_resume_matches_straight_run(tmp_path, corpus_dir):
  steps = 400
  killed = tmp_path / "killed"
  proc = subprocess.Popen(
    train_cmd(killed, corpus_dir, steps), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  metrics = killed / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 20:
      break
    time.sleep(0.2)
  assert proc.poll() is None, proc.communicate()
  os.kill(proc.pid, signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err
  assert "received SIGTERM: saved checkpoint at step" in out
  stopped_at = open_run(killed, log=lambda *a, **k: None).step
  assert 20 <= stopped_at < steps

  resumed = subprocess.run(train_cmd(killed, corpus_dir, steps), capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr
  assert f"resumed from checkpoint at step {stopped_at}" in resumed.stdout
  straight = subprocess.run(
    train_cmd(tmp_path / "straight", corpus_dir, steps), capture_output=True, text=True, timeout=300
  )
  assert straight.returncode == 0, straight.stderr
  p1 = open_run(killed, log=lambda *a, **k: None).params
  p2 = open_run(tmp_path / "straight", log=lambda *a, **k: None).params
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p1, p2)
  curve = lambda wd: [
    (r["step"], round(r["loss"], 5)) for r in map(json.loads, (wd / "metrics.jsonl").open()) if r["split"] == "train"
  ]
  assert curve(killed) == curve(tmp_path / "straight")


def test_a_sigterm_caught_by_an_outer_flag_stops_the_inner_loop_too():
  """`chunklm compare` holds a flag while it sets up each model's run; a SIGTERM then must stop that run's loop at
  its first step boundary (not after it trains to the end), and one inside the loop stops the comparison."""
  with StopFlag() as outer:
    os.kill(os.getpid(), signal.SIGTERM)
    assert outer.set
    with StopFlag() as inner:
      assert inner.set
  with StopFlag() as outer:
    with StopFlag() as inner:
      assert not inner.set
      os.kill(os.getpid(), signal.SIGTERM)
    assert inner.set and outer.set
