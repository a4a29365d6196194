"""Multi-host training through jax.distributed: two CPU processes on this machine train the same model as one
process would (same global batches, same parameters to float tolerance), and bad multi-host flags are clear errors."""

import json
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from chunklm.cli import main
from chunklm.run.trained import open_run
from conftest import TINY

SET = [a for o in TINY + ["train.steps=6", "train.checkpoint_every=3", "eval.sample_bytes=0"] for a in ("--set", o)]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def train_on_two_processes(cmd: list[str], workdir) -> list[tuple[str, str]]:
  """Runs `cmd` (a `chunklm train` command line without --workdir) as processes 0 and 1 of a --distributed run in
  `workdir`; (stdout, stderr) of each, after checking that both succeeded."""
  cmd = [*cmd, "--workdir", str(workdir), "--distributed", "--coordinator", f"localhost:{free_port()}"]
  procs = [
    subprocess.Popen(
      [*cmd, "--num-processes", "2", "--process-id", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, out[-2000:] + err[-3000:]
  return outs


def bpb(stdout: str) -> float:
  return float(re.search(r"valid bits per byte\s*: ([0-9.]+)", stdout).group(1))


@pytest.mark.slow  # CI budget: the default suite stays under 15 minutes on 2 cores
@pytest.mark.multiprocess
def test_two_processes_train_like_one(tmp_path, corpus_dir):
  cmd = [
    sys.executable,
    "-m",
    "chunklm.cli",
    "train",
    "--config",
    "byte_transformer_tiny",
    *SET,
    "--data",
    str(corpus_dir),
    "--no-progress",
  ]
  single = subprocess.run(cmd + ["--workdir", str(tmp_path / "one")], capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr
  outs = train_on_two_processes(cmd, tmp_path / "two")
  assert "process 0 of 2" in outs[0][0] and "process 1 of 2" in outs[1][0]
  assert "valid bits per byte" in outs[0][0] and "valid bits per byte" not in outs[1][0]  # process 0 reports
  assert bpb(outs[0][0]) == pytest.approx(bpb(single.stdout), rel=1e-4)
  one, two = (open_run(tmp_path / name, log=lambda *a, **k: None) for name in ("one", "two"))
  p1, s1, p2, s2 = one.params, one.step, two.params, two.step
  assert s1 == s2 == 6
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p2)


@pytest.mark.slow  # CI budget (the default suite measured 16:26 on a clean clone); .ci/run runs it
@pytest.mark.multiprocess
def test_two_processes_write_one_metrics_file_and_one_log(tmp_path, corpus_dir):
  """One writer per run: process 0 writes metrics.jsonl (each record once, in step order) and prints the run's
  lines; process 1 prints only its own start-up line, tagged with its index."""
  run = tmp_path / "two"
  cmd = [
    sys.executable,
    "-m",
    "chunklm.cli",
    "train",
    "--config",
    "byte_transformer_tiny",
    *SET,
    "--set",
    "train.steps=4",
    "--set",
    "train.eval_every=2",
    "--data",
    str(corpus_dir),
    "--no-progress",
  ]
  outs = train_on_two_processes(cmd, run)
  records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  keys = [(r["step"], r["split"]) for r in records]
  assert keys == [(0, "run"), (1, "train"), (2, "train"), (2, "valid"), (3, "train"), (4, "train"), (4, "valid")]
  ours = [[line for line in out.splitlines() if not line.startswith("[Gloo]")] for out, _ in outs]  # the collectives
  main_lines, other_lines = ours
  assert any(line.startswith("[p0/2] data: ") for line in main_lines) and "valid bits per byte" in outs[0][0]
  assert all(line.startswith("[p1/2] ") for line in other_lines) and len(other_lines) == 1, other_lines
  assert "process 1 of 2" in other_lines[0]


def test_bad_multi_host_flags(capsys):
  assert main(["train", "--num-processes", "2", "--workdir", "x"]) == 2
  assert "need --distributed" in capsys.readouterr().err
  assert main(["train", "--distributed", "--num-processes", "2", "--process-id", "2", "--workdir", "x"]) == 2
  assert "--process-id must be in [0, 2)" in capsys.readouterr().err
