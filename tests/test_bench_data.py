"""Issue 35's measuring tools: scripts/make_shards.py writes FineWeb-like gzipped JSONL of the requested size of text,
the same bytes for a seed; `chunklm bench data` runs training on it in a child process and reports its start-up
figures and the workdir's size."""

import gzip
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from chunklm.cli import main
from conftest import TINY

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_shards.py"
SET = [a for o in TINY for a in ("--set", o)]


def make_shards(out: Path, *extra: str) -> str:
  done = subprocess.run(
    [sys.executable, str(SCRIPT), "--out", str(out), "--gb", "0.002", "--shard-mb", "1.5", *extra],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr
  return done.stdout


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
  out = tmp_path_factory.mktemp("shards")
  make_shards(out)
  return out


def test_shards_are_jsonl_gz_of_the_requested_text(shards):
  files = sorted(shards.iterdir())
  assert [f.name for f in files] == ["shard-00000.jsonl.gz", "shard-00001.jsonl.gz"]  # 1.5 MB + 0.5 MB of text
  records = [json.loads(line) for f in files for line in gzip.open(f, "rt", encoding="utf-8")]
  assert all(set(r) == {"text", "id", "url"} and r["id"].startswith("<urn:uuid:") for r in records)
  lengths = [len(r["text"].encode()) for r in records]
  assert sum(lengths) == pytest.approx(2_000_000, rel=0.1)
  assert 1000 < statistics.median(lengths) < 3000 and max(lengths) > 4 * statistics.median(lengths)  # a tail
  text = "".join(r["text"] for r in records)
  assert "\n\n" in text and ". " in text and any(ord(c) > 127 for c in text) and '"' in text


def test_shards_are_the_same_bytes_for_a_seed(shards, tmp_path):
  make_shards(tmp_path / "again", "--workers", "1")
  make_shards(tmp_path / "other", "--seed", "1")
  for f in shards.iterdir():
    assert (tmp_path / "again" / f.name).read_bytes() == f.read_bytes()
    assert (tmp_path / "other" / f.name).read_bytes() != f.read_bytes()


def test_make_shards_refuses_a_directory_with_shards(shards):
  done = subprocess.run(
    [sys.executable, str(SCRIPT), "--out", str(shards), "--gb", "0.001"], capture_output=True, text=True, timeout=60
  )
  assert done.returncode == 2 and "already holds shards" in done.stderr


@pytest.mark.slow  # CI budget (the default suite measured 16:26 on a clean clone); .ci/run runs it
def test_bench_data_reports_start_up_figures(shards, tmp_path, capsys):
  figures_json = tmp_path / "data.json"
  root = tmp_path / "runs"
  argv = ["bench", "data", "--data", str(shards), "--config", "byte_transformer_tiny", *SET, "--steps", "1"]
  assert main(argv + ["--json", str(figures_json), "--workdir-root", str(root)]) == 0
  out = capsys.readouterr().out
  assert "CPU s to step 1" in out and "peak RSS MB" in out and "machine" in out
  figures = json.loads(figures_json.read_text())
  run = figures["runs"][0]
  (p,) = run["processes"]
  assert p["cpu_s"] > 0 and 0 < p["wall_s"] < p["total_s"] and p["peak_rss_bytes"] > 0
  assert 0 < p["rchar_first_step"] <= p["rchar"]
  assert run["checkpoint_bytes"] > 0 and run["other_bytes"] > 0  # a checkpoint at the last step; metrics.jsonl
  assert figures["median"] == run and not (root / "run-1").exists()  # workdirs go unless --keep


def test_bench_data_bad_input_is_one_line(tmp_path, capsys):
  assert main(["bench", "data"]) == 2
  assert "--data is required" in capsys.readouterr().err
  assert main(["bench", "data", "--data", str(tmp_path / "nothing")]) == 2
  assert "no such file" in capsys.readouterr().err
  assert main(["bench", "data", "--data", str(tmp_path), "--steps", "0"]) == 2
  assert "must be positive" in capsys.readouterr().err
