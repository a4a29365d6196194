"""A corpus in memory or memory-mapped: all documents' bytes in one uint8 array, split by document.

Small corpora live in RAM. A corpus larger than `data.mmap_min_mb` is written once to a cache file and memory-mapped,
so it can exceed RAM; the cache is keyed by the sources' paths, sizes and modification times and reused on resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from chunklm.config import DataConfig
from chunklm.data import sources as src
from chunklm.data.dna import clean
from chunklm.errors import DataError
from chunklm.storage.files import AnyPath, stamp


@dataclasses.dataclass(frozen=True)
class Documents:
  """Documents as (start, length) spans of one byte array."""

  data: np.ndarray  # uint8, concatenated documents (np.memmap for large corpora)
  starts: np.ndarray  # int64 [n_docs]
  lengths: np.ndarray  # int64 [n_docs]
  names: tuple[str, ...]

  @classmethod
  def one(cls, text: bytes, name: str = "text") -> Documents:
    """`text` as a single document."""
    return cls(np.frombuffer(text, np.uint8), np.array([0]), np.array([len(text)]), (name,))

  def __len__(self) -> int:
    return len(self.starts)

  @property
  def num_bytes(self) -> int:
    return int(self.lengths.sum())

  def doc(self, i: int, limit: int | None = None) -> bytes:
    """Document i, or its first `limit` bytes (only those read)."""
    n = int(self.lengths[i]) if limit is None else min(int(self.lengths[i]), limit)
    return bytes(self.data[self.starts[i] : self.starts[i] + n])

  def select(self, keep: np.ndarray) -> Documents:
    idx = np.flatnonzero(keep)
    return Documents(self.data, self.starts[idx], self.lengths[idx], tuple(self.names[i] for i in idx))

  def byte_counts(self) -> np.ndarray:
    counts = np.zeros(256, np.int64)
    for s, n in zip(self.starts, self.lengths):
      counts += np.bincount(self.data[s : s + n], minlength=256)
    return counts


def order0_entropy(docs: Documents) -> float:
  """Bits per byte of the best context-free byte model of `docs` (its unigram entropy)."""
  counts = docs.byte_counts().astype(np.float64)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log2(p)).sum())


def build(documents: Iterable[src.Document], cache_file: Path | None = None, spill_bytes: int = 1 << 62) -> Documents:
  """Concatenates documents; past `spill_bytes` they are streamed to `cache_file` and memory-mapped."""
  chunks: list[bytes] = []
  lengths: list[int] = []
  names: list[str] = []
  total = 0
  out = None
  tmp: Path | None = None
  try:
    for name, data in documents:
      names.append(name)
      lengths.append(len(data))
      total += len(data)
      if out is None:
        chunks.append(data)
        if total > spill_bytes and cache_file is not None:
          cache_file.parent.mkdir(parents=True, exist_ok=True)
          tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
          out = open(tmp, "wb")
          out.writelines(chunks)
          chunks = []
      else:
        out.write(data)
    if out is not None:
      assert cache_file is not None and tmp is not None  # out is opened only once both are set
      out.close()
      out = None
      meta = {"names": names, "lengths": lengths}
      cache_file.with_suffix(".json").write_text(json.dumps(meta))
      os.replace(tmp, cache_file)  # atomic: a crash leaves no half-written cache behind
      return _load_cached(cache_file)
  finally:
    if out is not None:
      out.close()
      if tmp is not None:  # always, while out is open
        tmp.unlink(missing_ok=True)
  bytes_N = np.frombuffer(b"".join(chunks), np.uint8) if total else np.zeros(0, np.uint8)
  return _documents(bytes_N, np.asarray(lengths, np.int64), names)


def _documents(data: np.ndarray, lengths: np.ndarray, names: list[str]) -> Documents:
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else np.zeros(0, np.int64)
  return Documents(data, starts, lengths, tuple(names))


def _load_cached(cache_file: Path) -> Documents:
  meta = json.loads(cache_file.with_suffix(".json").read_text())
  data = np.memmap(cache_file, np.uint8, mode="r")
  return _documents(data, np.asarray(meta["lengths"], np.int64), meta["names"])


def _fingerprint(paths: tuple[str, ...], cfg: DataConfig, option: str) -> str:
  h = hashlib.sha256()
  files: list[AnyPath] = (
    [*src.stdlib_files()]
    if not paths
    else [f for p in paths for f in src.list_files(p, cfg.include, cfg.exclude, option)]
  )
  for f in files:
    if isinstance(f, Path):
      st = f.stat()
      h.update(os.fsencode(f.resolve()) + f"|{st.st_size}|{st.st_mtime_ns}\n".encode())  # any file name, as bytes
    else:  # an object in Cloud Storage: its URL, size and generation
      h.update(f"{f}|{stamp(f)}\n".encode())
  h.update(
    f"{cfg.jsonl_field}|{cfg.doc_separator}|{cfg.dna.case}|{cfg.dna.iupac}|{cfg.dna.n_runs}|"
    f"{cfg.dna.n_run_min}".encode()
  )
  return h.hexdigest()[:16]


def load_documents(
  paths: tuple[str, ...], cfg: DataConfig, cache_dir: Path | None = None, option: str = "--data"
) -> Documents:
  """All documents of `paths` (() = the built-in corpus), memory-mapped from `cache_dir` when large; errors name
  the command-line `option` the paths came from."""
  cache_file = None
  if cache_dir is not None:
    cache_file = Path(cache_dir) / f"corpus-{_fingerprint(paths, cfg, option)}.bin"
    if cache_file.exists() and cache_file.with_suffix(".json").exists():
      return _load_cached(cache_file)
  if paths:
    docs = src.iter_documents(
      paths,
      include=cfg.include,
      exclude=cfg.exclude,
      jsonl_field=cfg.jsonl_field,
      doc_separator=cfg.doc_separator,
      option=option,
    )
  else:
    docs = src.default_documents()
  return build(clean(docs, cfg.dna), cache_file, cfg.mmap_min_mb << 20)


def split_hash(name: str, seed: int) -> float:
  """Where a document's name falls in [0, 1) for the train/valid split (held out below data.valid_fraction)."""
  digest = hashlib.blake2b(f"{seed}\0{name}".encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little") / 2.0**64


@dataclasses.dataclass(frozen=True)
class Splits:
  train: Documents
  valid: Documents
  description: str  # one line: where the data came from and how it was split
  skipped_short: int  # documents dropped for being shorter than data.min_doc_bytes


def load_splits(cfg: DataConfig, cache_dir: Path | None = None) -> Splits:
  """Train and valid documents as configured; raises DataError for anything unusable."""
  what = ", ".join(cfg.sources) if cfg.sources else f"built-in corpus ({src.stdlib_dir()}, *.py)"
  docs = load_documents(cfg.sources, cfg, cache_dir)
  if cfg.valid_sources:
    train = docs
    valid = load_documents(cfg.valid_sources, cfg, cache_dir, option="--valid-data")
    how = f"valid from {', '.join(cfg.valid_sources)}"
  else:
    if len(docs) < 2:
      raise DataError(
        f"{what}: {len(docs)} document(s) cannot be split by document; pass --valid-data PATH "
        "or set data.doc_separator to split files into documents"
      )
    h = np.array([split_hash(n, cfg.split_seed) for n in docs.names])
    is_valid = h < cfg.valid_fraction
    if not is_valid.any():
      is_valid[np.argmin(h)] = True  # tiny corpora: hold out at least one document
    if is_valid.all():
      is_valid[np.argmax(h)] = False
    train, valid = docs.select(~is_valid), docs.select(is_valid)
    how = f"split by document hash (seed {cfg.split_seed}, valid fraction {cfg.valid_fraction})"
  long_enough = [d.select(d.lengths >= cfg.min_doc_bytes) for d in (train, valid)]
  skipped = len(train) + len(valid) - sum(len(d) for d in long_enough)
  train, valid = long_enough
  if train.num_bytes == 0:
    raise DataError(
      f"{what}: the training corpus is empty (documents shorter than data.min_doc_bytes="
      f"{cfg.min_doc_bytes} are skipped)"
    )
  if train.num_bytes + len(train) < cfg.seq_len + 1:
    raise DataError(
      f"{what}: the training corpus has {train.num_bytes} bytes, shorter than one window of "
      f"data.seq_len={cfg.seq_len} bytes"
    )
  if valid.num_bytes == 0:
    raise DataError(f"{what}: the validation split is empty")
  desc = (
    f"{what}: {len(train)} train docs ({train.num_bytes:,} bytes), {len(valid)} valid docs "
    f"({valid.num_bytes:,} bytes); {how}"
  )
  return Splits(train, valid, desc, skipped)
