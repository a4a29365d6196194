import numpy as np
import pytest

from chunklm.config import DataConfig
from chunklm.data import corpus
from chunklm.errors import DataError
from conftest import write_corpus


def test_split_is_by_document_and_deterministic(corpus_dir):
  cfg = DataConfig(sources=(str(corpus_dir),), valid_fraction=0.2, min_doc_bytes=1)
  a, b = corpus.load_splits(cfg), corpus.load_splits(cfg)
  assert a.train.names == b.train.names and a.valid.names == b.valid.names
  assert set(a.train.names).isdisjoint(a.valid.names)
  assert len(a.train) + len(a.valid) == 24 and len(a.valid) >= 1
  # the split of a document does not depend on which other documents exist
  write_corpus(corpus_dir, n_docs=30)
  c = corpus.load_splits(cfg)
  assert set(a.valid.names) <= set(c.valid.names)
  other = corpus.load_splits(DataConfig(sources=(str(corpus_dir),), valid_fraction=0.2, split_seed=1))
  assert other.valid.names != c.valid.names


def test_valid_sources_and_short_documents(tmp_path, corpus_dir):
  (tmp_path / "v.txt").write_text("held out text " * 10)
  (corpus_dir / "tiny.py").write_text("x")
  cfg = DataConfig(sources=(str(corpus_dir),), valid_sources=(str(tmp_path / "v.txt"),), min_doc_bytes=4)
  s = corpus.load_splits(cfg)
  assert s.valid.names == ("v.txt",) and len(s.train) == 24 and s.skipped_short == 1


def test_unusable_corpora_are_data_errors(tmp_path):
  (tmp_path / "one.txt").write_text("just one document " * 30)
  with pytest.raises(DataError, match="cannot be split by document; pass --valid-data"):
    corpus.load_splits(DataConfig(sources=(str(tmp_path / "one.txt"),)))
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(DataError, match="training corpus is empty"):
    corpus.load_splits(DataConfig(sources=(str(tmp_path / "empty.txt"),), valid_sources=(str(tmp_path / "one.txt"),)))
  (tmp_path / "short.txt").write_text("too short for a window")
  with pytest.raises(DataError, match="shorter than one window"):
    corpus.load_splits(DataConfig(sources=(str(tmp_path / "short.txt"),), valid_sources=(str(tmp_path / "one.txt"),)))


def test_memory_mapped_corpus_equals_in_memory(tmp_path, corpus_dir):
  cfg = DataConfig(sources=(str(corpus_dir),))
  ram = corpus.load_documents(cfg.sources, cfg)
  mm_cfg = DataConfig(sources=(str(corpus_dir),), mmap_min_mb=0)
  mm = corpus.load_documents(mm_cfg.sources, mm_cfg, cache_dir=tmp_path / "cache")
  assert isinstance(mm.data, np.memmap)
  assert ram.names == mm.names and np.array_equal(ram.data, mm.data) and np.array_equal(ram.starts, mm.starts)
  again = corpus.load_documents(mm_cfg.sources, mm_cfg, cache_dir=tmp_path / "cache")  # reused from the cache
  assert np.array_equal(again.data, mm.data)
  assert not list((tmp_path / "cache").glob("*.tmp*"))


def test_order0_entropy():
  data = np.frombuffer(b"aabb" * 8, np.uint8)
  docs = corpus.Documents(data, np.array([0]), np.array([32]), ("d",))
  assert corpus.order0_entropy(docs) == pytest.approx(1.0)


def test_file_names_that_are_not_utf8_load_and_split(tmp_path):
  root = tmp_path / "d"
  root.mkdir()
  with open(bytes(root) + b"/caf\xe9.txt", "wb") as f:  # a Latin-1 file name
    f.write(b"hello world " * 200)
  (root / "b.txt").write_text("more text here " * 200)
  splits = corpus.load_splits(
    DataConfig(sources=(str(root),), valid_fraction=0.5, seq_len=32), cache_dir=tmp_path / "cache"
  )
  names = sorted(splits.train.names + splits.valid.names)
  assert names == ["d/b.txt", "d/caf\\xe9.txt"]
