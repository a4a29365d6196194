import bz2
import gzip
import io
import json
import lzma
import subprocess
import sys
import tarfile
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from chunklm.data import formats, sources
from chunklm.errors import DataError


def write_parquet(path, table, row_group_size=3, **kw):
  pq.write_table(table, path, row_group_size=row_group_size, **kw)
  return path


def write_array_record(path, records):
  w = ArrayRecordWriter(str(path), "group_size:1")
  for r in records:
    w.write(r)
  w.close()
  return path


def docs(path, **kw):
  return list(sources.file_documents(path, path.name, **kw))


TEXTS = ["zero", None, "twö", "three", None, None, "six", "", "eight", "nine"]


def test_parquet_rows_of_the_text_column_by_row_group(tmp_path):
  p = write_parquet(tmp_path / "t.parquet", pa.table({"id": list(range(10)), "text": TEXTS}))
  assert pq.ParquetFile(p).num_row_groups == 4
  want = [(f"t.parquet:{i}", t.encode()) for i, t in enumerate(TEXTS) if t is not None]
  assert docs(p) == want


def test_parquet_binary_column_and_magic_without_suffix(tmp_path):
  raw = [b"\xff\x00raw", None, b"\xc3\xa9"]
  p = write_parquet(tmp_path / "blob.bin", pa.table({"body": pa.array(raw, pa.binary())}), row_group_size=2)
  assert formats.sniff(p) == "parquet"
  assert docs(p, jsonl_field="body") == [("blob.bin:0", raw[0]), ("blob.bin:2", raw[2])]
  large = write_parquet(tmp_path / "l.parquet", pa.table({"text": pa.array(["a", "bc"], pa.large_string())}))
  assert [d for _, d in docs(large)] == [b"a", b"bc"]


def test_parquet_without_the_column_names_its_columns(tmp_path):
  p = write_parquet(tmp_path / "w.parquet", pa.table({"id": [1, 2], "body": ["a", "b"]}))
  with pytest.raises(DataError) as e:
    docs(p)
  msg = str(e.value)
  assert "\n" not in msg and str(p) in msg and "id: int64, body: string" in msg and "data.jsonl_field" in msg
  with pytest.raises(DataError, match="no string or binary column 'id'"):
    docs(p, jsonl_field="id")


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
  p = write_parquet(tmp_path / "t.parquet", pa.table({"text": ["a"]}))
  monkeypatch.setattr(formats, "pq", None)  # as when `import pyarrow.parquet` failed
  with pytest.raises(DataError, match=r"t.parquet is a Parquet file; install chunklm\[data\] \(pyarrow\)"):
    docs(p)


def test_array_record_records_are_documents(tmp_path):
  records = [b"first", b"", b"\xff\xfe binary", b"x" * 1000]
  p = write_array_record(tmp_path / "d.array_record", records)
  assert docs(p) == [(f"d.array_record:{i}", r) for i, r in enumerate(records)]
  bare = tmp_path / "train.array_record-00000-of-00002"  # grain's naming: found by the magic bytes
  bare.write_bytes(p.read_bytes())
  assert bare.read_bytes()[:24] == formats.ARRAY_RECORD_MAGIC
  assert [d for _, d in docs(bare)] == records
  (tmp_path / "cut.array_record").write_bytes(p.read_bytes()[:70])
  with pytest.raises(DataError, match="cannot read .*cut.array_record"):
    docs(tmp_path / "cut.array_record")


def _kinds(tmp_path):
  """One file of every kind, each with several records (blank lines, nulls and row groups included)."""
  (tmp_path / "t.txt").write_text("whole file")
  (tmp_path / "s.txt").write_text("a\n\nb\n\n\n\nc\n\nd")
  lines = [json.dumps({"text": f"r{i}"}) for i in range(7)]
  (tmp_path / "j.jsonl").write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")
  with gzip.open(tmp_path / "j.jsonl.gz", "wt") as f:
    f.write("\n".join(lines) + "\n")
  (tmp_path / "g.fa").write_text(">a\nAC\nGT\n>b\nTT\n>c x\nG\n>d\n")
  (tmp_path / "r.fq").write_text("".join(f"@r{i}\n{'ACGT'[i % 4] * (i + 1)}\n+\n{'I' * (i + 1)}\n" for i in range(5)))
  write_parquet(tmp_path / "p.parquet", pa.table({"text": TEXTS}))
  write_parquet(tmp_path / "n.parquet", pa.table({"text": TEXTS}), write_statistics=False)  # no null counts
  write_array_record(tmp_path / "a.array_record", [b"%d" % i for i in range(9)])
  return {
    "text": ("t.txt", {}),
    "text split": ("s.txt", {"doc_separator": "\n\n"}),
    "jsonl": ("j.jsonl", {}),
    "jsonl.gz": ("j.jsonl.gz", {}),
    "fasta": ("g.fa", {}),
    "fastq": ("r.fq", {}),
    "parquet": ("p.parquet", {}),
    "parquet without statistics": ("n.parquet", {}),
    "array_record": ("a.array_record", {}),
  }


@pytest.mark.parametrize(
  "kind",
  [
    "text",
    "text split",
    "jsonl",
    "jsonl.gz",
    "fasta",
    "fastq",
    "parquet",
    "parquet without statistics",
    "array_record",
  ],
)
def test_start_is_exact_for_every_kind(tmp_path, kind):
  name, kw = _kinds(tmp_path)[kind]
  p = tmp_path / name
  every = docs(p, **kw)
  assert len(every) >= (1 if kind == "text" else 4)
  for start in range(len(every) + 2):
    assert docs(p, start=start, **kw) == every[start:], start


def _containers():
  tar = io.BytesIO()
  with tarfile.open(fileobj=tar, mode="w") as t:
    info = tarfile.TarInfo("a.txt")
    info.size = 4
    t.addfile(info, io.BytesIO(b"text"))
  zipped = io.BytesIO()
  with zipfile.ZipFile(zipped, "w") as z:
    z.writestr("a.txt", "text")
  return {
    "x.zst": (b"\x28\xb5\x2f\xfd" + b"\0" * 20, "a zstd-compressed file"),
    "x.bz2": (bz2.compress(b"text" * 100), "a bzip2-compressed file"),
    "x.xz": (lzma.compress(b"text"), "an xz-compressed file"),
    "x.zip": (zipped.getvalue(), "a zip archive"),
    "x.tar": (tar.getvalue(), "a tar archive"),
    "x.7z": (b"7z\xbc\xaf\x27\x1c\0\x04" + b"\0" * 30, "a 7z archive"),
    "corpus.tar.gz": (gzip.compress(tar.getvalue()), "a tar archive inside gzip"),
    "x.tgz": (gzip.compress(tar.getvalue()), "a tar archive inside gzip"),
    "p.parquet.gz": (gzip.compress(b"PAR1" + b"\0" * 20 + b"PAR1"), "a Parquet file inside gzip"),
    "plain.txt": (gzip.compress(b"text"), "gzip-compressed file without the .gz suffix"),
    "train.tfrecord": (b"\0" * 16, "a TFRecord file"),
    "train.tfrecord-00003-of-00010": (b"\0" * 16, "tf.Example protos"),
  }


@pytest.mark.parametrize("name", list(_containers()))
def test_containers_are_refused_in_one_line(tmp_path, name):
  content, what = _containers()[name]
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "ok.txt").write_text("fine")
  (tmp_path / "d" / name).write_bytes(content)
  for given in (tmp_path / "d" / name, tmp_path / "d"):  # by itself and inside a directory
    with pytest.raises(DataError) as e:
      list(sources.iter_documents((str(given),)))
    msg = str(e.value)
    assert "\n" not in msg and what in msg and name in msg, msg


def test_text_that_looks_like_nothing_in_particular_is_text(tmp_path):
  for text in [b"BZh is how this line starts", b"PAR1 but no footer", b"", b"PK but not a zip"]:
    (tmp_path / "t.txt").write_bytes(text)
    assert formats.sniff(tmp_path / "t.txt") == "text"
    assert docs(tmp_path / "t.txt") == [("t.txt", text)]


def test_train_on_a_zstd_file_is_one_line_exit_2(tmp_path):
  (tmp_path / "corpus.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 100)
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "chunklm.cli",
      "train",
      "--data",
      str(tmp_path / "corpus.zst"),
      "--workdir",
      str(tmp_path / "w"),
    ],
    capture_output=True,
    text=True,
  )
  assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
  assert r.stderr.startswith("chunklm: error: ") and "a zstd-compressed file, not text" in r.stderr
