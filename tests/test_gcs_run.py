"""Runs that live in Cloud Storage, against the emulator (tests/gcs_emulator.py): training with its workdir and data
at gs:// URLs, kill -9 and resume bit for bit, one trainer per URL (a lease), the commands that read a run, and
one-line errors for what cannot work."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import fsspec
import jax
import numpy as np
import pytest

import chunklm
from chunklm.cli import main
from chunklm.run.checkpoint import Checkpointer
from chunklm.run.lock import WorkdirBusy, workdir_lock
from chunklm.run.metrics import MetricsWriter, read_jsonl
from chunklm.run.trained import abstract_params, open_run, read_config
from chunklm.storage.objects import listing
from chunklm.storage.paths import location
from chunklm.train import trainer
from chunklm.train.init_from import load_init
from conftest import TINY, killed_child, tiny_config, write_corpus
from test_distributed import train_on_two_processes

QUIET = dict(progress=False, log=lambda *a, **k: None)
TINY_RUN = ("train.steps=4", "train.checkpoint_every=2")
SMALL = [
  "data.seq_len=64",
  "train.batch_size=2",
  "eval.batch_size=2",
  "eval.final_max_bytes=2048",
  "eval.sample_bytes=0",
]


@pytest.fixture(scope="module")
def bucket(gcs_emulator, tmp_path_factory):
  """A bucket holding a small corpus at gs://<bucket>/corpus."""
  name = gcs_emulator.bucket()
  local = write_corpus(tmp_path_factory.mktemp("gcs") / "corpus")
  fsspec.filesystem("gs").put(str(local), f"{name}/corpus", recursive=True)
  return name


def objects(url: str) -> list[str]:
  fs = fsspec.filesystem("gs")
  fs.invalidate_cache()
  return sorted(fs.find(url.removeprefix("gs://")))


@pytest.fixture(scope="module")
def straight(bucket):
  """An uninterrupted 4-step run, workdir and data in the bucket."""
  url = f"gs://{bucket}/straight"
  trainer.train(tiny_config(*TINY_RUN, data=f"gs://{bucket}/corpus"), url, **QUIET)
  return url


@pytest.mark.slow  # CI budget: two killed children and resumes (~40 s); .ci/run runs the slow tests of this file
@pytest.mark.parametrize("moment", ["training", "save"])
def test_kill_9_in_the_bucket_and_resume_matches_the_straight_run(moment, bucket, straight):
  url, data = f"gs://{bucket}/killed-{moment}", f"gs://{bucket}/corpus"
  killed_child(moment, url, data)
  committed = Checkpointer(f"{url}/checkpoints", read_only=True).steps()
  assert committed in ([], [2]) if moment == "training" else committed == [2]
  assert any(o.endswith("/.lock") for o in objects(url))  # the dead trainer's lease is still there
  unfinished = listing(location(f"{url}/checkpoints/4"))  # the killed write of step 4 (empty when killed training)
  res = trainer.train(tiny_config(*TINY_RUN, data=data), url, **QUIET)  # takes the dead process's lease over
  assert res.finished and res.step == 4
  jax.tree.map(np.testing.assert_array_equal, res.run.params, open_run(straight, log=lambda *a, **k: None).params)
  losses = lambda wd: [(r["step"], r["loss"]) for r in read_jsonl(f"{wd}/metrics.jsonl") if r["split"] == "train"]
  assert losses(url) == losses(straight)
  assert not any(o.endswith("/.lock") for o in objects(url))  # released
  rewritten = listing(location(f"{url}/checkpoints/4"))
  assert not {(k, v["generation"]) for k, v in unfinished.items()} & {
    (k, v["generation"]) for k, v in rewritten.items()
  }


@pytest.mark.slow  # CI budget (~15 s); .ci/run runs the slow tests of this file
def test_a_trainer_that_loses_its_lease_stops_and_writes_nothing_more(bucket, monkeypatch):
  """Another trainer takes the lease (here: overwrites it) while step 3 runs: the run stops before the checkpoint of
  step 4 with a one-line WorkdirBusy, and writes neither metrics nor checksums nor plots into the workdir after."""
  url = f"gs://{bucket}/lost"
  monkeypatch.setenv("CHUNKLM_LEASE_SECONDS", "0.4")  # renewed every 0.1 s
  seen: dict[str, bytes] = {}
  write = MetricsWriter.write

  def intrude_at_step_3(self, step, split, values):
    write(self, step, split, values)
    if split == "train" and step == 3:
      fs = fsspec.filesystem("gs")
      fs.pipe(f"{bucket}/lost/.lock", b'{"holder": "another trainer"}')
      seen["metrics"] = fs.cat(f"{bucket}/lost/metrics.jsonl")  # as the checkpoint of step 2 left it
      time.sleep(0.3)  # a renewal finds the other generation

  monkeypatch.setattr(MetricsWriter, "write", intrude_at_step_3)
  with pytest.raises(WorkdirBusy, match=rf"lost the lease of {url}: another process took it over"):
    trainer.train(tiny_config(*TINY_RUN, data=f"gs://{bucket}/corpus"), url, **QUIET)
  fs = fsspec.filesystem("gs")
  assert Checkpointer(f"{url}/checkpoints", read_only=True).steps() == [2]
  assert fs.cat(f"{bucket}/lost/metrics.jsonl") == seen["metrics"]
  assert fs.cat(f"{bucket}/lost/.lock") == b'{"holder": "another trainer"}'
  assert "loss.png" not in [o.rsplit("/", 1)[1] for o in objects(url)]


def test_the_run_directory_in_the_bucket(straight):
  names = [o.split("/straight/", 1)[1] for o in objects(straight)]
  for expected in ("config.yaml", "metrics.jsonl", "loss.png", "checkpoints/4/checksums.json"):
    assert expected in names
  assert any(n.startswith("tb/events.out.tfevents") for n in names)
  assert not any(n.startswith("cache/") or n == ".lock" for n in names)
  keys = [(r["step"], r["split"]) for r in read_jsonl(f"{straight}/metrics.jsonl")]
  assert keys[:5] == [(0, "run"), (1, "train"), (2, "train"), (3, "train"), (4, "train")] and keys[-1] == (4, "valid")
  assert not Path("gs:").exists()  # nothing local named after the URL


def test_a_replaced_object_reads_as_damaged_and_the_older_step_is_used(bucket, straight):
  fs = fsspec.filesystem("gs")
  url = f"gs://{bucket}/damaged"
  fs.copy(straight.removeprefix("gs://"), url.removeprefix("gs://"), recursive=True)
  state = next(o for o in objects(f"{url}/checkpoints/4/state") if "/d/" in o)
  fs.pipe(state, b"not the bytes that were saved")
  warnings: list[str] = []
  run = open_run(url, log=warnings.append)
  assert run.step == 2 and "does not match its checksum" in warnings[0]


@pytest.fixture(scope="module")
def hnet_run(bucket):
  """`chunklm train` of hnet_1stage_tiny for 10 steps, its workdir and data in the bucket."""
  url = f"gs://{bucket}/hnet"
  flags = ["train.steps=10", "train.checkpoint_every=5", "train.eval_every=0", *SMALL]
  argv = ["train", "--config", "hnet_1stage_tiny", "--workdir", url, "--data", f"gs://{bucket}/corpus/"]
  assert main([*argv, "--no-progress", *[a for f in flags for a in ("--set", f)]]) == 0
  return url


@pytest.mark.slow  # CI budget (the default suite measured 16:26 on a clean clone); .ci/run runs it
def test_the_commands_that_read_a_run_take_its_url(bucket, hnet_run, capsys):
  assert Checkpointer(f"{hnet_run}/checkpoints", read_only=True).steps() == [5, 10]
  assert main(["eval", "--workdir", hnet_run, "--json", f"{hnet_run}-eval.json"]) == 0
  assert "bits per byte" in capsys.readouterr().out
  assert main(["generate", "--workdir", hnet_run, "--prompt", "def", "--max-bytes", "8", "--seed", "1"]) == 0
  assert main(["report", "--workdir", hnet_run, "--samples", "0"]) == 0
  assert f"{hnet_run.removeprefix('gs://')}/report.html" in objects(hnet_run)
  weights = f"gs://{bucket}/exported/model.safetensors"
  assert main(["export", "--workdir", hnet_run, "--out", weights]) == 0
  assert main(["import", "--weights", weights, "--out", f"gs://{bucket}/imported"]) == 0
  model, again = chunklm.load(hnet_run), chunklm.load(f"gs://{bucket}/imported")
  jax.tree.map(np.testing.assert_array_equal, model.run.params, again.run.params)
  cfg = read_config(hnet_run)  # what `train --init-from URL` reads (the whole fine-tune: the slow test below)
  params, source = load_init(f"{hnet_run}/checkpoints/5", cfg, abstract_params(cfg)[1], None)
  assert source.step == 5 and str(source.workdir) == hnet_run


@pytest.mark.slow  # CI budget: one more H-Net compile (~15 s); .ci/run runs the slow tests of this file
def test_fine_tuning_from_a_run_in_the_bucket(bucket, hnet_run):
  tuned = f"gs://{bucket}/tuned"
  argv = ["train", "--config", "hnet_1stage_tiny", "--workdir", tuned, "--init-from", hnet_run, "--no-progress"]
  assert (
    main([*argv, "--data", f"gs://{bucket}/corpus", *[a for f in ["train.steps=2", *SMALL] for a in ("--set", f)]]) == 0
  )
  made_by = [r for r in read_jsonl(f"{tuned}/metrics.jsonl") if r["split"] == "run"][0]
  assert made_by["init_from"].startswith(f"{hnet_run} (step 10")


def test_a_second_trainer_on_the_url_is_refused_in_one_line(bucket, capsys):
  url = f"gs://{bucket}/busy"
  with workdir_lock(url):
    assert main(["train", "--workdir", url, "--stop-after", "1", "--no-progress"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and f"{url} is in use by chunklm train (pid {os.getpid()}" in err
  assert objects(url) == []  # the lease went with its holder; the refused trainer wrote nothing


@pytest.mark.slow  # CI budget: two 2-process trainings (~35 s); .ci/run runs the slow tests of this file
@pytest.mark.multiprocess
def test_two_processes_train_in_the_bucket_with_one_metrics_writer_and_resume(bucket, corpus_dir):
  """A 2-process --distributed run with its workdir in the bucket: checkpoints written by both processes together,
  metrics.jsonl by process 0 only (each record once), and a resume of both that continues where it stopped."""
  url = f"gs://{bucket}/two"
  settings = [*TINY, "train.steps=4", "train.checkpoint_every=2", "eval.sample_bytes=0"]

  def train(steps: int) -> None:
    cmd = [sys.executable, "-m", "chunklm.cli", "train", "--config", "byte_transformer_tiny", "--no-progress"]
    cmd += [a for o in [*settings, f"train.steps={steps}"] for a in ("--set", o)]
    train_on_two_processes([*cmd, "--data", str(corpus_dir)], url)

  train(4)
  assert Checkpointer(f"{url}/checkpoints", read_only=True).steps() == [2, 4]
  assert any(o.endswith("/data/process_1-of-2.json") for o in objects(f"{url}/checkpoints/4"))  # both processes
  train(6)  # a free change: the run resumes at step 4 and goes on
  keys = [(r["step"], r["split"]) for r in read_jsonl(f"{url}/metrics.jsonl")]
  train_steps = [s for s, split in keys if split == "train"]
  assert train_steps == [1, 2, 3, 4, 5, 6] and keys.count((4, "run")) == 1 and (6, "valid") in keys
  assert not any(o.endswith("/.lock") for o in objects(url))


@pytest.mark.slow  # CI budget: three more trainings (~1 min)
def test_mrt5_classify_and_tokenizer_runs_in_the_bucket(bucket, tmp_path, capsys):
  corpus = write_corpus(tmp_path / "corpus")
  assert (
    main(["tokenizer", "train", "--vocab-size", "300", "--data", str(corpus), "--out", f"gs://{bucket}/tok.model"]) == 0
  )
  mrt5 = ["mrt5.d_model=32", "mrt5.n_heads=2", "mrt5.enc_layers=3", "mrt5.gate_layer=1", "mrt5.dec_layers=1"]
  mrt5 += [
    "data.seq_len=48",
    "train.batch_size=4",
    "train.steps=3",
    "train.checkpoint_every=2",
    "train.log_every=1",
    f"data.sources=[{corpus}]",
  ]
  url = f"gs://{bucket}/mrt5"
  assert main(["mrt5", "train", "--workdir", url, "--no-progress", *[a for s in mrt5 for a in ("--set", s)]]) == 0
  assert Checkpointer(f"{url}/checkpoints", read_only=True).steps() == [2, 3]
  assert [r["step"] for r in read_jsonl(f"{url}/metrics.jsonl") if r["split"] == "train"] == [1, 2, 3]
  records = tmp_path / "records.jsonl"
  records.write_text(
    "".join(json.dumps({"text": "ab" * 20 if i % 2 else "xy" * 20, "label": i % 2}) + "\n" for i in range(24))
  )
  config = tmp_path / "tiny.yaml"
  config.write_text("model:\n  layout: [T1]\n  d_model: 32\n  n_heads: 2\n")
  out = f"gs://{bucket}/classifier"
  flags = ["--steps", "4", "--batch-size", "4", "--seq-len", "32", "--eval-every", "2", "--no-progress"]
  assert (
    main(
      [
        "classify",
        "train",
        "--config",
        str(config),
        "--data",
        str(records),
        "--test",
        str(records),
        *flags,
        "--out",
        out,
      ]
    )
    == 0
  )
  assert main(["classify", "eval", "--workdir", out, "--data", str(records)]) == 0
  assert {"classify.json", "confusion.png", "metrics.jsonl"} <= {o.rsplit("/", 1)[1] for o in objects(out)}
