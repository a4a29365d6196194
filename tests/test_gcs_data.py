"""Corpora read from Cloud Storage in place (the emulator of tests/gcs_emulator.py): the same files under a gs://
prefix read to exactly the documents, training batches, valid split and resumed stream they read to on a local disk;
the read-ahead is bounded (nothing downloads a whole object to read its first documents); and what cannot be read
from gs:// (a missing prefix or bucket, another scheme, ArrayRecord shards) is refused in one line."""

from __future__ import annotations

import gzip
import json
import random

import fsspec
import gcsfs
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from chunklm.config import DataConfig
from chunklm.data import formats, prepare, sources
from chunklm.data.corpus import load_documents
from chunklm.data.feed import open_train_data, train_batches
from chunklm.data.shards import list_shards
from chunklm.data.split import run_valid_split, valid_budget
from chunklm.errors import DataError, UserError
from chunklm.storage import files
from conftest import tiny_config


def _words(rng: random.Random, n: int) -> str:
  return " ".join(rng.choice(["def", "self", "value", "return", "x", "for", "in", "héllo"]) for _ in range(n))


def write_corpus(root, seed: int = 0):
  """Text, JSONL, JSONL.gz and Parquet files in nested directories, with hidden ones that are skipped."""
  rng = random.Random(seed)
  (root / "sub" / "deeper").mkdir(parents=True)
  (root / ".hidden").mkdir()
  for i in range(4):
    (root / f"t{i}.txt").write_text(_words(rng, rng.randint(10, 60)))
  (root / "sub" / "z.txt").write_bytes(b"\xff\xfe raw bytes, not UTF-8 \x00" * 3)
  (root / "sub" / "docs.jsonl").write_text(
    "".join(json.dumps({"text": _words(rng, rng.randint(3, 40))}) + "\n" for _ in range(30))
  )
  with gzip.open(root / "sub" / "deeper" / "more.jsonl.gz", "wt") as f:
    f.writelines(json.dumps({"text": _words(rng, rng.randint(3, 40))}) + "\n" for _ in range(30))
  rows = [_words(rng, rng.randint(3, 30)) if i % 7 else None for i in range(40)]
  pq.write_table(pa.table({"text": rows}), root / "sub" / "rows.parquet", row_group_size=6)
  (root / ".hidden" / "skip.txt").write_text("never read")
  (root / ".dotfile.txt").write_text("never read")
  return root


def upload(local, url: str) -> None:
  """Every file under `local` as an object under `url` (gs://bucket/prefix), hidden ones included."""
  fs = fsspec.filesystem("gs")
  for f in sorted(p for p in local.rglob("*") if p.is_file()):
    fs.pipe(f"{url[len('gs://') :]}/{f.relative_to(local).as_posix()}", f.read_bytes())


@pytest.fixture
def corpus(tmp_path, gcs_emulator):
  """(the local corpus directory, the gs:// URL of the same files)."""
  local = write_corpus(tmp_path / "corpus")
  url = f"gs://{gcs_emulator.bucket()}/data/corpus"
  upload(local, url)
  return local, url


def _one_line(error: pytest.ExceptionInfo) -> str:
  text = str(error.value)
  assert "\n" not in text and "Traceback" not in text
  return text


def test_a_corpus_in_a_bucket_reads_to_the_same_documents_in_the_same_order(corpus):
  local, url = corpus
  here = sources.named_files((str(local),))
  there = sources.named_files((url,))
  assert [n for _, n in there] == [n for _, n in here]
  assert [n for _, n in here][:4] == [f"corpus/t{i}.txt" for i in range(4)], "a directory's files before its subdirs"
  assert not any(".hidden" in n or ".dotfile" in n for _, n in there)
  assert [str(f) for f, _ in there] == [f"{url}/{n.removeprefix('corpus/')}" for _, n in there]
  want = list(sources.iter_documents((str(local),)))
  got = list(sources.iter_documents((url,)))
  assert got == want and len(got) > 90
  kinds = {n.split(":")[0].rsplit(".", 1)[-1] for n, _ in got}
  assert kinds == {"txt", "jsonl", "gz", "parquet"}
  assert [str(f) for f in sources.list_files(url, include=("*.jsonl*",))] == [
    f"{url}/sub/docs.jsonl",
    f"{url}/sub/deeper/more.jsonl.gz",
  ]


def test_include_exclude_and_single_objects_as_on_disk(corpus):
  local, url = corpus
  for include, exclude in [(("*.jsonl*",), ()), (("*",), ("sub/*",)), (("sub/*",), ("*.parquet",))]:
    here = [n for _, n in sources.named_files((str(local),), include, exclude)]
    assert [n for _, n in sources.named_files((url,), include, exclude)] == here
  single = f"{url}/sub/docs.jsonl"
  assert [n for _, n in sources.named_files((single,))] == ["docs.jsonl"]
  assert list(sources.iter_documents((single,))) == list(sources.iter_documents((str(local / "sub" / "docs.jsonl"),)))


@pytest.mark.parametrize("file", ["sub/docs.jsonl", "sub/deeper/more.jsonl.gz", "sub/rows.parquet"])
def test_reading_from_a_record_inside_a_file_is_the_rest_of_its_records(corpus, file):
  local, url = corpus
  here = list(sources.file_documents(local / file, "f"))
  there = sources.as_path(f"{url}/{file}")
  for start in (0, 1, 13, len(here) - 1, len(here)):
    assert list(sources.file_documents(there, "f", start=start)) == here[start:]


def _config(source: str):
  return tiny_config("data.interleave=2", "data.shuffle_buffer_mb=0.004", f"data.sources=[{source}]")


def _batches(cfg, n: int, state=None):
  data = open_train_data(cfg.data, valid_budget(cfg))
  it = train_batches(data, cfg.data, cfg.train.batch_size, process_index=0, process_count=1)
  if state is not None:
    it.set_state(state)
  out = [next(it) for _ in range(n)]
  return out, it


def test_training_batches_valid_split_and_resume_from_a_bucket_match_the_local_copy(corpus):
  local, url = corpus
  here_cfg, there_cfg = _config(str(local)), _config(url)
  assert [s.size for s in list_shards(there_cfg.data.sources, there_cfg.data)] == [
    s.size for s in list_shards(here_cfg.data.sources, here_cfg.data)
  ]
  here_valid, there_valid = run_valid_split(here_cfg), run_valid_split(there_cfg)
  assert there_valid.names == here_valid.names and len(there_valid) > 0
  assert all(there_valid.doc(i) == here_valid.doc(i) for i in range(len(here_valid)))

  here, here_it = _batches(here_cfg, 12)
  there, there_it = _batches(there_cfg, 6)
  for a, b in zip(here, there, strict=False):
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  state = json.loads(json.dumps(there_it.get_state()))  # as a checkpoint keeps it
  there_it.close()
  resumed, resumed_it = _batches(there_cfg, 6, state)  # a new reader of the bucket, from the saved position
  for a, b in zip(here[6:], resumed, strict=True):
    assert all(np.array_equal(a[k], b[k]) for k in a)
  for it in (here_it, resumed_it):
    it.close()


def test_the_read_ahead_is_bounded_so_first_documents_cost_a_block_not_the_object(gcs_emulator, monkeypatch):
  assert files.READ_AHEAD_BYTES == 8 << 20
  url = f"gs://{gcs_emulator.bucket()}/big"
  line = json.dumps({"text": "x" * 1000}).encode() + b"\n"
  fsspec.filesystem("gs").pipe(f"{url[5:]}/a.jsonl", line * 4000)  # 4 MB
  fetched: list[int] = []
  fetch = gcsfs.core.GCSFile._fetch_range

  def counting(self, start, end):
    data = fetch(self, start, end)
    fetched.append(len(data))
    return data

  monkeypatch.setattr(gcsfs.core.GCSFile, "_fetch_range", counting)
  monkeypatch.setattr(files, "READ_AHEAD_BYTES", 64 << 10)
  (shard,) = list_shards((url,), DataConfig())
  assert shard.size == len(line) * 4000 and not fetched, "listing reads no object"
  docs = sources.file_documents(shard.path, shard.name)
  assert [next(docs)[1] for _ in range(3)] == [b"x" * 1000] * 3
  sniffed = 2 * formats.SNIFF_READ_AHEAD  # the first 512 bytes through a buffer of as much as the read-ahead
  assert 0 < sum(fetched) <= sniffed + 2 * (64 << 10), "sniffing, then a buffer and one block of lines"
  assert max(fetched) <= 2 * (64 << 10)
  docs.close()


def test_a_cache_of_a_bucket_corpus_is_used_again(corpus, tmp_path):
  local, url = corpus
  cfg = DataConfig(mmap_min_mb=0)
  first = load_documents((url,), cfg, cache_dir=tmp_path / "cache")
  again = load_documents((url,), cfg, cache_dir=tmp_path / "cache")
  assert len(list((tmp_path / "cache").glob("corpus-*.bin"))) == 1
  assert again.names == first.names == load_documents((str(local),), cfg).names


def test_data_prepare_reads_its_sources_from_a_bucket(corpus, tmp_path):
  local, url = corpus
  res = prepare.prepare(DataConfig(sources=(url,)), tmp_path / "out", shards=2, workers=1, show_progress=False)
  want = prepare.prepare(DataConfig(sources=(str(local),)), tmp_path / "ref", shards=2, workers=1, show_progress=False)
  assert res.documents == want.documents and res.bytes == want.bytes
  got = [d for _, d in sources.iter_documents((str(tmp_path / "out"),))]
  assert got == [d for _, d in sources.iter_documents((str(tmp_path / "ref"),))]
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert manifest["sources"][0]["path"].startswith(url)
  with pytest.raises(DataError, match="must be on a local disk or a mounted bucket") as e:
    prepare.prepare(DataConfig(sources=(url,)), f"{url}-prepared", show_progress=False)
  _one_line(e)


def test_what_cannot_be_read_from_a_bucket_is_refused_in_one_line(corpus, tmp_path, gcs_emulator):
  local, url = corpus
  with pytest.raises(DataError, match="no such file or directory") as e:
    sources.list_files(f"{url}-missing")
  _one_line(e)
  with pytest.raises(UserError, match="bucket gs://no-such-bucket-1 does not exist") as e:
    list(sources.iter_documents(("gs://no-such-bucket-1/corpus",)))
  _one_line(e)
  with pytest.raises(UserError, match=r"--valid-data s3://x/y: s3:// is not supported") as e:
    sources.named_files(("s3://x/y",), option="--valid-data")
  _one_line(e)
  with pytest.raises(UserError, match="s3:// is not supported"):
    open_train_data(DataConfig(sources=("s3://x/y",)), 0)

  (tmp_path / "ar").mkdir()
  writer = ArrayRecordWriter(str(tmp_path / "ar" / "documents-00000-of-00001.array_record"), "group_size:1")
  for i in range(5):
    writer.write(b"record %d" % i)
  writer.close()
  ar = f"gs://{gcs_emulator.bucket()}/ar"
  upload(tmp_path / "ar", ar)
  shard = (tmp_path / "ar" / "documents-00000-of-00001.array_record").read_bytes()
  fsspec.filesystem("gs").pipe(f"{ar[5:]}/renamed.bin", shard)
  for what in (ar, f"{ar}/renamed.bin"):  # by suffix and by magic bytes
    with pytest.raises(DataError, match="ArrayRecord shards must be on a local disk or a mounted bucket") as e:
      list(sources.iter_documents((what,)))
    assert "JSONL, text and Parquet stream from gs:// directly" in _one_line(e)
  with pytest.raises(DataError, match="ArrayRecord shards must be on a local disk"):
    open_train_data(DataConfig(sources=(ar,), seq_len=8, min_doc_bytes=1), 0)

  prepare.prepare(DataConfig(sources=(str(local),)), tmp_path / "prepared", shards=2, workers=1, show_progress=False)
  prepared = f"gs://{gcs_emulator.bucket()}/prepared"
  upload(tmp_path / "prepared", prepared)
  with pytest.raises(DataError, match="prepared data: ArrayRecord shards must be on a local disk") as e:
    sources.list_files(prepared)
  _one_line(e)
