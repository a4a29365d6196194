import gzip
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chunklm.cli import main
from chunklm.config import DataConfig
from chunklm.data import formats, prepare, sources
from chunklm.errors import DataError


def corpus(tmp_path):
  """Sources of several kinds in a directory; returns the path given to --data."""
  d = tmp_path / "src"
  (d / "sub").mkdir(parents=True)
  with gzip.open(d / "a.jsonl.gz", "wt") as f:
    f.writelines(json.dumps({"text": f"json document {i} " * (i % 7)}) + "\n" for i in range(40))
  (d / "b.txt").write_text("one text file, one document")
  (d / "sub" / "g.fa").write_text("".join(f">s{i}\n{'ACGT' * (i + 1)}\n" for i in range(9)))
  pq.write_table(
    pa.table({"text": [f"row {i}" if i % 5 else None for i in range(23)]}), d / "c.parquet", row_group_size=4
  )
  return d


def source_documents(src):
  return [doc for _, doc in sources.iter_documents((str(src),))]


def prepared_documents(out):
  return [doc for _, doc in sources.iter_documents((str(out),))]


def expected_order(cfg, batch_bytes, shards):
  """The documented order: document j of batch k goes to shard (k + j) mod shards; shards in order, each in input order."""
  named = sources.named_files(cfg.sources)
  groups = prepare.batches([f.stat().st_size for f, _ in named], batch_bytes)
  per_shard = [[] for _ in range(shards)]
  for k, group in enumerate(groups):
    docs = [d for i in group for _, d in sources.file_documents(named[i][0], named[i][1])]
    for j, doc in enumerate(docs):
      per_shard[(k + j) % shards].append(doc)
  return [d for shard in per_shard for d in shard]


def test_round_trip_in_the_documented_order(tmp_path):
  src = corpus(tmp_path)
  cfg = DataConfig(sources=(str(src),))
  res = prepare.prepare(cfg, tmp_path / "out", shards=3, workers=1, show_progress=False, batch_bytes=200)
  want = source_documents(src)
  got = prepared_documents(tmp_path / "out")
  assert len(prepare.batches([f.stat().st_size for f, _ in sources.named_files(cfg.sources)], 200)) > 1
  assert got == expected_order(cfg, 200, 3)
  assert sorted(got) == sorted(want) and (res.documents, res.bytes) == (len(want), sum(map(len, want)))
  assert {p.name for p in tmp_path.iterdir()} == {"src", "out"}  # no temporary directory left


def test_manifest_fields(tmp_path):
  src = corpus(tmp_path)
  prepare.prepare(DataConfig(sources=(str(src),)), tmp_path / "out", shards=2, workers=1, show_progress=False)
  m = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert formats.prepared_manifest(tmp_path / "out") == m
  assert (m["format"], m["version"]) == ("chunklm-documents", 1) and m["chunklm"]
  assert [s["file"] for s in m["shards"]] == [f"documents-0000{i}-of-00002.array_record" for i in range(2)]
  for s in m["shards"]:
    shard = tmp_path / "out" / s["file"]
    docs = list(sources.file_documents(shard, s["file"]))
    assert (s["documents"], s["bytes"], s["file_bytes"]) == (
      len(docs),
      sum(len(d) for _, d in docs),
      shard.stat().st_size,
    )
  assert m["documents"] == sum(s["documents"] for s in m["shards"]) and m["bytes"] == sum(
    s["bytes"] for s in m["shards"]
  )
  files = [f for f, _ in sources.named_files((str(src),))]
  assert [s["path"] for s in m["sources"]] == [str(f) for f in files]
  for s, f in zip(m["sources"], files):
    assert (s["bytes"], s["sha256"]) == (f.stat().st_size, hashlib.sha256(f.read_bytes()).hexdigest())
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
    [*(s["file"] for s in m["shards"]), "manifest.json"]
  )


def test_same_bytes_with_one_and_two_workers(tmp_path):
  src = corpus(tmp_path)
  cfg = DataConfig(sources=(str(src),))
  for workers in (1, 2):
    prepare.prepare(cfg, tmp_path / f"w{workers}", shards=4, workers=workers, show_progress=False, batch_bytes=300)
  one, two = (sorted((tmp_path / f"w{w}").iterdir()) for w in (1, 2))
  assert [p.name for p in one] == [p.name for p in two]
  assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))


def test_refuses_a_non_empty_out_and_leaves_nothing_behind(tmp_path):
  src = corpus(tmp_path)
  cfg = DataConfig(sources=(str(src),))
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("mine")
  with pytest.raises(DataError, match="not an empty directory"):
    prepare.prepare(cfg, tmp_path / "full", workers=1, show_progress=False)
  assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
  (tmp_path / "empty").mkdir()
  prepare.prepare(cfg, tmp_path / "empty", workers=1, show_progress=False)  # an empty directory is fine
  assert (tmp_path / "empty" / "manifest.json").exists()
  (src / "zz.jsonl").write_text('{"text": "ok"}\n{broken\n')  # fails while reading, in a worker
  with pytest.raises(DataError, match="invalid JSON"):
    prepare.prepare(cfg, tmp_path / "new", workers=2, show_progress=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full", "src"]


def test_a_prepared_directory_is_checked_against_its_manifest(tmp_path):
  src = corpus(tmp_path)
  out = tmp_path / "out"
  prepare.prepare(DataConfig(sources=(str(src),)), out, shards=2, workers=1, show_progress=False)
  assert sources.list_files(out, include=("*.txt",)) == [
    out / f"documents-0000{i}-of-00002.array_record" for i in range(2)
  ]
  assert formats.prepared_manifest(src) is None
  shard = out / "documents-00001-of-00002.array_record"
  shard.write_bytes(shard.read_bytes() + b"\0")
  with pytest.raises(DataError, match="documents-00001-of-00002.array_record has .* bytes, manifest.json says"):
    sources.list_files(out)
  shard.unlink()
  with pytest.raises(DataError, match="without its shard documents-00001-of-00002"):
    sources.list_files(out)


def test_cli_prepare_prints_one_summary_line(tmp_path, capsys):
  src = corpus(tmp_path)
  args = ["data", "prepare", "--data", str(src), "--out", str(tmp_path / "out"), "--shards", "2", "--workers", "1"]
  assert main([*args, "--no-progress", "--set", 'data.exclude=["*.parquet"]']) == 0
  out = capsys.readouterr().out
  assert out.count("\n") == 1 and "documents" in out and "MB/s" in out
  assert sorted(prepared_documents(tmp_path / "out")) == sorted(
    d for _, d in sources.iter_documents((str(src),), exclude=("*.parquet",))
  )
  assert main([*args, "--no-progress"]) == 2
  assert "not an empty directory" in capsys.readouterr().err


def test_other_manifests_are_ordinary_files_and_a_damaged_one_is_refused(tmp_path):
  (tmp_path / "web").mkdir()
  (tmp_path / "web" / "manifest.json").write_text('{"name": "an app"}')
  assert formats.prepared_manifest(tmp_path / "web") is None
  assert sources.list_files(tmp_path / "web") == [tmp_path / "web" / "manifest.json"]
  src = corpus(tmp_path)
  out = tmp_path / "out"
  prepare.prepare(DataConfig(sources=(str(src),)), out, shards=1, workers=1, show_progress=False)
  manifest = out / "manifest.json"
  manifest.write_text(manifest.read_text()[:100])
  with pytest.raises(DataError, match="damaged manifest of prepared data"):
    sources.list_files(out)
