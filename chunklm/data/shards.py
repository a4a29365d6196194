"""A corpus's files and how to read any of their documents again by address.

A document's address is (file, record, part): `file` indexes the corpus's sorted file list (every process lists the
same), `record` counts what the file yields (`sources.file_documents`: a line of JSONL, a FASTA record, a Parquet
value that is not null, an ArrayRecord record, a whole text file), `part` the pieces DNA cleaning may split a record
into. An address is all it takes to read a document again (`Reader.documents_at`), which is what makes the state of
a training stream a few integers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from array_record.python.array_record_module import ArrayRecordReader

from chunklm.config import DataConfig
from chunklm.data import sources as src
from chunklm.data.dna import clean
from chunklm.errors import DataError
from chunklm.storage import files
from chunklm.storage.files import AnyPath

Address = tuple[int, int, int]  # (file, record, part)


@dataclasses.dataclass(frozen=True)
class Shard:
  path: AnyPath  # a local file, or an object in Cloud Storage (read in place)
  name: str  # what documents are named after (a path relative to what was given)
  size: int  # bytes on disk (in the bucket)


def list_shards(paths: tuple[str, ...], cfg: DataConfig, option: str = "--data") -> tuple[Shard, ...]:
  """The files `paths` stand for, in the order every process lists them (() = the built-in corpus)."""
  if not paths:
    root = src.stdlib_dir()
    return tuple(Shard(f, f.relative_to(root).as_posix(), f.stat().st_size) for f in src.stdlib_files())
  return tuple(Shard(f, name, files.size(f)) for f, name in src.named_files(paths, cfg.include, cfg.exclude, option))


def describe_sources(paths: tuple[str, ...]) -> str:
  return ", ".join(paths) if paths else f"built-in corpus ({src.stdlib_dir()}, *.py)"


class Reader:
  """Reads documents of a corpus's shards as the config says (format options, DNA cleaning)."""

  def __init__(self, shards: tuple[Shard, ...], cfg: DataConfig, builtin: bool = False):
    self.shards, self.cfg = shards, cfg
    self.separator = "" if builtin else cfg.doc_separator
    self._random: dict[int, Any] = {}  # open ArrayRecord readers, by file

  def _cleaned(self, doc: src.Document) -> list[src.Document]:
    return [doc] if self.cfg.dna.is_default() else list(clean(iter([doc]), self.cfg.dna))

  def records(self, f: int, start: int = 0) -> Iterator[tuple[int, list[src.Document]]]:
    """(record, its documents after cleaning) for the records of file `f` from `start` on."""
    shard = self.shards[f]
    docs = src.file_documents(
      shard.path, shard.name, jsonl_field=self.cfg.jsonl_field, doc_separator=self.separator, start=start
    )
    for r, doc in enumerate(docs, start):
      yield r, self._cleaned(doc)

  def record(self, f: int, r: int) -> list[src.Document]:
    """The documents of record `r` of ArrayRecord file `f`, by random access (the file is kept open)."""
    if f not in self._random:
      self._random[f] = ArrayRecordReader(str(self.shards[f].path), "readahead_buffer_size:0")
    try:
      (data,) = self._random[f].read([r])
    except (RuntimeError, IndexError) as e:
      raise DataError(f"cannot read record {r} of {self.shards[f].path}: {e}") from None
    return self._cleaned((f"{self.shards[f].name}:{r}", data))

  def documents_at(self, addresses: list[Address]) -> dict[Address, src.Document]:
    """The documents at `addresses`, each file read once up to the last record asked of it."""
    by_file: dict[int, set[Address]] = {}
    for a in addresses:
      by_file.setdefault(a[0], set()).add(a)
    out: dict[Address, src.Document] = {}
    for f, wanted in by_file.items():
      records = {a[1] for a in wanted}
      for r, parts in self.records(f, min(records)):
        for a in wanted:
          if a[1] == r:
            if a[2] >= len(parts):
              raise DataError(f"{self.shards[f].path} changed since the run started: record {r} has no part {a[2]}")
            out[a] = parts[a[2]]
        if r >= max(records):
          break
    missing = set(addresses) - set(out)
    if missing:
      f, r, _ = min(missing)
      raise DataError(f"{self.shards[f].path} changed since the run started: it has no record {r}")
    return out
