"""Multi-host training through jax.distributed: two CPU processes on this machine train the same model as one
process would (same global batches, same parameters to float tolerance), and bad multi-host flags are clear errors."""

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


def bpb(stdout: str) -> float:
  return float(re.search(r"valid bits per byte\s*: ([0-9.]+)", stdout).group(1))


@pytest.mark.slow  # CI budget: the default suite stays under 15 minutes on 2 cores
@pytest.mark.multiprocess
def test_two_processes_train_like_one(tmp_path, corpus_dir):
  cmd = [sys.executable, "-m", "chunklm.cli", "train", "--config", "byte_transformer_tiny", *SET, "--data",
         str(corpus_dir), "--no-progress"]
  single = subprocess.run(cmd + ["--workdir", str(tmp_path / "one")], capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr
  coordinator = f"localhost:{free_port()}"
  procs = [subprocess.Popen(cmd + ["--workdir", str(tmp_path / "two"), "--distributed", "--coordinator", coordinator,
                                   "--num-processes", "2", "--process-id", str(i)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, out[-2000:] + err[-3000:]
  assert "process 0 of 2" in outs[0][0] and "process 1 of 2" in outs[1][0]
  assert "valid bits per byte" in outs[0][0] and "valid bits per byte" not in outs[1][0]  # process 0 reports
  assert bpb(outs[0][0]) == pytest.approx(bpb(single.stdout), rel=1e-4)
  one, two = (open_run(tmp_path / name, log=lambda *a, **k: None) for name in ("one", "two"))
  p1, s1, p2, s2 = one.params, one.step, two.params, two.step
  assert s1 == s2 == 6
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p2)


def test_bad_multi_host_flags(capsys):
  assert main(["train", "--num-processes", "2", "--workdir", "x"]) == 2
  assert "need --distributed" in capsys.readouterr().err
  assert main(["train", "--distributed", "--num-processes", "2", "--process-id", "2", "--workdir", "x"]) == 2
  assert "--process-id must be in [0, 2)" in capsys.readouterr().err
