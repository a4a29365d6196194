import gzip
import json

import pytest

from chunklm.data import sources
from chunklm.errors import DataError


def docs(paths, **kw):
  return list(sources.iter_documents(tuple(str(p) for p in paths), **kw))


def test_text_file_is_one_document_and_bytes_are_raw(tmp_path):
  raw = b"caf\xc3\xa9 \xff\xfe invalid utf-8 \x00 binary"
  (tmp_path / "a.bin").write_bytes(raw)
  assert docs([tmp_path / "a.bin"]) == [("a.bin", raw)]


def test_doc_separator_splits_text(tmp_path):
  (tmp_path / "a.txt").write_text("one\n\ntwo\n\nthree")
  assert [d for _, d in docs([tmp_path / "a.txt"], doc_separator="\n\n")] == [b"one", b"two", b"three"]


def test_directory_recursive_with_globs(tmp_path):
  (tmp_path / "sub" / "deep").mkdir(parents=True)
  (tmp_path / "a.py").write_text("a")
  (tmp_path / "b.txt").write_text("b")
  (tmp_path / "sub" / "c.py").write_text("c")
  (tmp_path / "sub" / "deep" / "d.py").write_text("d")
  (tmp_path / ".hidden.py").write_text("h")
  got = docs([tmp_path], include=("*.py",), exclude=("sub/deep/*",))
  assert [n for n, _ in got] == [f"{tmp_path.name}/a.py", f"{tmp_path.name}/sub/c.py"]


def test_jsonl_field(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_text(json.dumps({"text": "héllo"}) + "\n\n" + json.dumps({"text": "b", "id": 2}) + "\n")
  assert [d for _, d in docs([path])] == ["héllo".encode(), b"b"]
  path.write_text(json.dumps({"body": "x"}) + "\n")
  with pytest.raises(DataError, match=r"x.jsonl:1: record has no field 'text'"):
    docs([path])
  path.write_text("{not json\n")
  with pytest.raises(DataError, match=r"x.jsonl:1: invalid JSON"):
    docs([path])


def test_fasta_and_fastq_keep_sequences_only(tmp_path):
  (tmp_path / "g.fa").write_text(">chr1 desc\nACGT\nTTGA\n\n>chr2\nGGG\n")
  assert docs([tmp_path / "g.fa"]) == [("g.fa:chr1", b"ACGTTTGA"), ("g.fa:chr2", b"GGG")]
  (tmp_path / "r.fastq").write_text("@r1\nACGT\n+\nIIII\n@r2\nGG\n+\nII\n")
  assert [d for _, d in docs([tmp_path / "r.fastq"])] == [b"ACGT", b"GG"]
  (tmp_path / "bad.fq").write_text("@r1\nACGT\n+\n")
  with pytest.raises(DataError, match="4 lines per record; the last record has 3"):
    docs([tmp_path / "bad.fq"])


def test_gz_of_each_kind(tmp_path):
  for name, payload in [("t.txt.gz", b"plain"), ("s.fa.gz", b">x\nAC\nGT\n"), ("j.jsonl.gz", b'{"text": "j"}\n')]:
    with gzip.open(tmp_path / name, "wb") as f:
      f.write(payload)
  assert [d for _, d in docs([tmp_path / "t.txt.gz", tmp_path / "s.fa.gz", tmp_path / "j.jsonl.gz"])] == [
    b"plain",
    b"ACGT",
    b"j",
  ]
  (tmp_path / "broken.gz").write_bytes(b"not gzip at all")
  with pytest.raises(DataError, match="cannot read"):
    docs([tmp_path / "broken.gz"])


def test_missing_path_and_empty_directory(tmp_path):
  with pytest.raises(DataError, match="no such file or directory"):
    docs([tmp_path / "nope"])
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no files matching"):
    docs([tmp_path / "empty"])
  (tmp_path / "only.txt").write_text("x")
  with pytest.raises(DataError, match="no files matching"):
    docs([tmp_path], include=("*.py",))


def test_every_path_is_checked_before_reading(tmp_path, monkeypatch):
  (tmp_path / "a.txt").write_text("a")
  read = []
  monkeypatch.setattr(sources, "_read_all", lambda p: read.append(p) or b"")
  with pytest.raises(DataError):
    docs([tmp_path / "a.txt", tmp_path / "missing"])
  assert read == []


def test_default_corpus_is_stdlib_without_tests():
  files = sources.stdlib_files()
  assert len(files) > 100
  assert all(f.suffix == ".py" for f in files)
  assert not any("/test/" in f.as_posix() or "site-packages" in f.as_posix() for f in files)
