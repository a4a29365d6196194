"""Object storage that cannot work is one line and exit 2, and leaves nothing behind; the workdir lease (one trainer
per URL) against the emulator: refused while held, taken over once it lapses, lost when someone else renews it."""

from __future__ import annotations

import json
import time

import fsspec
import pytest

from chunklm.cli import main
from chunklm.run import lease as lease_module
from chunklm.run.kind import kind_of
from chunklm.run.lease import Lease, WorkdirBusy
from chunklm.run.workdir import RunDir
from chunklm.storage.objects import put_if
from chunklm.storage.paths import location
from gcs_emulator import ErrorServer


def test_unknown_schemes_and_bad_bucket_names_are_one_line(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  cases = [
    (["train", "--workdir", "s3://bucket/run"], "s3:// is not supported"),
    (["train", "--workdir", "hdfs://host/run"], "hdfs:// is not supported"),
    (["train", "--workdir", "gs://Not_A_Bucket/run"], "is not a Cloud Storage bucket name"),
    (["train", "--workdir", "gs:/bucket/run"], "did you mean gs://bucket/run?"),
    (["train", "--workdir", "run", "--data", "s3://bucket/corpus"], "s3:// is not supported"),
    (["eval", "--workdir", "s3://bucket/run"], "s3:// is not supported"),
    (["export", "--workdir", "run", "--out", "s3://bucket/w.safetensors"], "is not supported"),
  ]
  for argv, message in cases:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, (argv, err)
  assert list(tmp_path.iterdir()) == []  # no local folder named after a URL, no half-made run


def test_a_bucket_that_does_not_exist_is_one_line(gcs_emulator, capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  missing = "gs://no-such-bucket-here"
  for argv in (
    ["train", "--workdir", f"{missing}/run"],
    ["train", "--workdir", "run", "--data", f"{missing}/corpus"],
    ["eval", "--workdir", f"{missing}/run"],
    ["train", "--workdir", "run", "--init-from", f"{missing}/run"],
    ["tokenizer", "train", "--vocab-size", "300", "--out", f"{missing}/tok.model"],  # refused before training
    ["export", "--workdir", "run", "--out", f"{missing}/w.safetensors"],
    ["report", "--workdir", "run", "--out", f"{missing}/report.html"],
    ["eval", "--workdir", "run", "--json", f"{missing}/eval.json"],
    ["classify", "train", "--config", "x", "--data", f"{missing}/r.jsonl", "--test", "t", "--out", "c"],
  ):
    assert main([*argv, "--no-progress"] if argv[0] == "train" else argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the bucket gs://no-such-bucket-here does not exist" in err, (argv, err)
  assert list(tmp_path.iterdir()) == []
  assert "no-such-bucket-here" not in fsspec.filesystem("gs").ls("")  # never created by accident


def test_an_account_that_may_read_but_not_write_is_one_line(gcs_emulator, capsys, tmp_path, monkeypatch):
  bucket = gcs_emulator.bucket()
  with ErrorServer(403, read_only=gcs_emulator.url) as server:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", server.url)
    fsspec.filesystem("gs").clear_instance_cache()
    try:
      assert main(["train", "--workdir", f"gs://{bucket}/run", "--no-progress"]) == 2  # the lease cannot be written
    finally:
      monkeypatch.undo()
      fsspec.filesystem("gs").clear_instance_cache()
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "permission denied by Cloud Storage" in err, err
  assert fsspec.filesystem("gs").find(bucket) == []


@pytest.fixture
def refusing(request, monkeypatch, gcs_emulator):
  """Cloud Storage that answers every request with `request.param` (401: no credentials, 403: no permission)."""
  with ErrorServer(request.param) as server:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", server.url)
    fsspec.filesystem("gs").clear_instance_cache()
    yield request.param
    monkeypatch.undo()
    fsspec.filesystem("gs").clear_instance_cache()


@pytest.mark.parametrize("refusing", [401, 403], indirect=True)
@pytest.mark.parametrize("flag", ["--workdir", "--data", "--init-from"])
def test_missing_credentials_and_permissions_are_one_line(refusing, flag, capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  argv = ["train", "--no-progress", "--workdir", "gs://bucket/run" if flag == "--workdir" else "run"]
  if flag != "--workdir":
    argv += [flag, "gs://bucket/x"]
  assert main(argv) == 2
  err = capsys.readouterr().err.strip()
  expected = "no credentials for Cloud Storage" if refusing == 401 else "permission denied by Cloud Storage"
  assert len(err.splitlines()) == 1 and expected in err and f"{flag} gs://bucket/" in err, err
  assert list(tmp_path.iterdir()) == []


def _foreign_lease(path, seconds: float) -> None:
  stamp = {"holder": "chunklm train (pid 1 on elsewhere)", "machine": "elsewhere", "pid": 1, "seconds": seconds}
  assert put_if(path, json.dumps(stamp).encode(), 0) is not None


def test_a_live_lease_of_another_host_refuses_and_a_lapsed_one_is_taken_over(gcs_emulator, caplog):
  workdir = location(f"gs://{gcs_emulator.bucket()}/run")
  lock = RunDir(workdir).lock
  _foreign_lease(lock, seconds=2.0)
  with pytest.raises(WorkdirBusy, match=r"in use by chunklm train \(pid 1 on elsewhere\); its lease was renewed"):
    Lease(lock, workdir, "me").acquire()
  time.sleep(3.5)  # the server's clock has whole seconds
  lease = Lease(lock, workdir, "me", seconds=30)
  lease.acquire()
  assert "took over the lease" in caplog.text and "not renewed for" in caplog.text
  assert json.loads(lock.read_text())["holder"] == "me"
  lease.release()
  assert not lock.exists()


def test_a_lease_that_cannot_be_renewed_is_lost_before_another_may_take_it(gcs_emulator, monkeypatch):
  workdir = location(f"gs://{gcs_emulator.bucket()}/run")
  lease = Lease(RunDir(workdir).lock, workdir, "me", seconds=0.4)
  lease.acquire()

  def cut(*args, **kwargs):
    raise OSError("network unreachable")

  monkeypatch.setattr(lease_module, "put_if", cut)  # renewals fail from now on, as in a network cut
  time.sleep(0.1)
  lease.check()
  time.sleep(0.3)  # 3/4 of the term without a renewal: another trainer may take it a quarter-term later
  with pytest.raises(WorkdirBusy, match=r"could not be renewed for 0\.\d s of its 0\.4 s term"):
    lease.check()
  monkeypatch.undo()
  lease.release()


def test_a_conditional_write_that_succeeded_but_was_retried_is_ours(gcs_emulator, monkeypatch):
  """A client retry of a write that reached the server is refused (412): the lease's token says it is ours."""
  workdir = location(f"gs://{gcs_emulator.bucket()}/run")
  real = lease_module.put_if

  def retried(path, data, generation):
    real(path, data, generation)
    return None  # what the retry of a write that succeeded answers

  monkeypatch.setattr(lease_module, "put_if", retried)
  lease = Lease(RunDir(workdir).lock, workdir, "me", seconds=0.4)
  lease.acquire()
  time.sleep(0.35)  # renewals through the same retried writes
  lease.check()
  monkeypatch.undo()
  lease.release()
  assert not RunDir(workdir).lock.exists()


def test_a_lease_renewed_by_someone_else_is_lost_and_says_so(gcs_emulator):
  workdir = location(f"gs://{gcs_emulator.bucket()}/run")
  lock = RunDir(workdir).lock
  lease = Lease(lock, workdir, "me", seconds=0.4)  # renewed every 0.1 s
  lease.acquire()
  time.sleep(0.35)
  lease.check()  # still ours after a few renewals
  fs = fsspec.filesystem("gs")
  fs.pipe(str(lock).removeprefix("gs://"), b'{"holder": "an intruder"}')  # written without the precondition
  time.sleep(0.4)
  with pytest.raises(WorkdirBusy, match="lost the lease of .*another process took it over"):
    lease.check()
  lease.release()
  assert b"intruder" in lock.read_bytes()  # the new holder's lease is left alone


def test_bad_input_for_a_run_in_a_bucket_leaves_nothing_there(gcs_emulator, capsys, tmp_path):
  bucket = gcs_emulator.bucket()
  url = f"gs://{bucket}/run"
  assert main(["train", "--workdir", url, "--data", str(tmp_path / "missing"), "--no-progress"]) == 2
  assert "no such file or directory" in capsys.readouterr().err
  assert main(["train", "--workdir", url, "--data", f"gs://{bucket}/nothing-here", "--no-progress"]) == 2
  assert "no such file or directory" in capsys.readouterr().err
  assert fsspec.filesystem("gs").find(bucket) == []  # not even the lease


def test_comparisons_keep_their_runs_on_a_local_disk(gcs_emulator, capsys, tmp_path):
  bucket = gcs_emulator.bucket()
  for argv in (
    ["compare", "--spec", "tiny_code", "--out", f"gs://{bucket}/c"],
    ["mrt5", "compare", "--sweep", "mrt5.target_deletion=0,0.5", "--out", f"gs://{bucket}/c"],
  ):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "keeps its runs and report in a local directory" in err, err


def test_run_kinds_in_a_bucket_are_told_apart(gcs_emulator, capsys):
  """run/kind.py in a bucket: folders are prefixes there, told apart by a fresh listing of their names."""
  bucket = gcs_emulator.bucket()
  clf = location(f"gs://{bucket}/clf")
  (clf / "classify.json").write_text("{}")
  (clf / "config.yaml").write_text("# written by chunklm classify train\nmodel: {}\n")
  (location(f"gs://{bucket}/run/checkpoints") / "x").write_text("x")
  assert [kind_of(f"gs://{bucket}/{p}") for p in ("clf", "run", "nothing")] == ["classifier", "other", "new"]
  for workdir, message in [("clf", "is a classifier (made by"), ("nothing", "does not exist")]:
    assert main(["eval", "--workdir", f"gs://{bucket}/{workdir}"]) == 2
    assert message in capsys.readouterr().err
  assert main(["eval", "--workdir", f"gs://{bucket}/clf", "--json", f"gs://{bucket}/clf/config.yaml"]) == 2
  assert "would replace config.yaml of the run" in capsys.readouterr().err
