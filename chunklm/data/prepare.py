"""`chunklm data prepare`: documents of any supported source written once into ArrayRecord shards plus a manifest, so
training reads records by index (resuming at a record, a seeded shuffle over all of them) instead of parsing JSONL or
Parquet on every host. Records are the documents' bytes as read (no DNA cleaning: that happens when training reads
them), and the directory is a `--data` source like any other (sources.list_files reads its manifest).

Order, the same for any number of workers: the input files, in the order `--data` lists them, are cut into batches of
consecutive files of about `batch_bytes` on disk; the j-th document of batch k goes to shard (k + j) mod N, and each
shard holds its documents in input order. Reading is parallel over batches (a worker writes a batch's documents to one
length-prefixed part file per shard), writing parallel over shards (a worker copies one shard's parts, batch by batch,
into its ArrayRecord file and deletes them), so memory stays constant whatever the corpus; the parts take as much disk
as the text, for a while. All of it happens in `OUT.tmp-<pid>`, renamed to OUT at the end, so a killed prepare leaves
no directory that looks complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import shutil
import signal
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from array_record.python.array_record_module import ArrayRecordWriter

from chunklm import progress
from chunklm.config import DataConfig
from chunklm.data.formats import MANIFEST, MANIFEST_FORMAT, sniff
from chunklm.data.sources import as_path, file_documents, named_files
from chunklm.errors import DataError
from chunklm.storage import files
from chunklm.storage.paths import is_remote

SHARD_FILE = "documents-{:05d}-of-{:05d}.array_record"
BATCH_BYTES = 64 << 20  # input files are read in batches of about this many bytes on disk (part of the order)
SHARD_TARGET_BYTES = 256 << 20  # the default number of shards gives each about this many bytes of input
WRITER_OPTIONS = "group_size:1"  # one record per chunk: reading any one document decompresses only it
_FLUSH_BYTES = 16 << 20  # a reading worker holds at most this much text before appending it to its part files
_LENGTH = struct.Struct("<Q")  # the length before each document in a part file


@dataclasses.dataclass(frozen=True)
class Prepared:
  out: Path
  shards: int
  documents: int
  bytes: int  # of document text
  seconds: float

  @property
  def mb_per_s(self) -> float:
    return self.bytes / 1e6 / max(self.seconds, 1e-9)


@dataclasses.dataclass(frozen=True)
class _Batch:
  index: int
  files: tuple[tuple[str, str], ...]  # (path, name) in input order
  shards: int
  parts: str
  jsonl_field: str
  doc_separator: str


@dataclasses.dataclass(frozen=True)
class _Shard:
  index: int
  shards: int
  batches: int
  parts: str
  out: str


def default_shards(input_bytes: int) -> int:
  """One shard per SHARD_TARGET_BYTES of input on disk, at least one."""
  return max(1, math.ceil(input_bytes / SHARD_TARGET_BYTES))


def batches(sizes: list[int], batch_bytes: int = BATCH_BYTES) -> list[list[int]]:
  """Consecutive file indices grouped until a group holds >= batch_bytes (a larger file is a group of its own)."""
  groups: list[list[int]] = []
  held = batch_bytes
  for i, size in enumerate(sizes):
    if held >= batch_bytes:
      groups.append([])
      held = 0
    groups[-1].append(i)
    held += size
  return groups


def _part(parts: str, shard: int, batch: int) -> Path:
  return Path(parts, f"{shard:05d}", f"{batch:06d}.part")


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with files.open_binary(as_path(path)) as f:
    while block := f.read(1 << 20):
      h.update(block)
  return h.hexdigest()


def _read_batch(job: _Batch) -> tuple[int, list[dict]]:
  """Writes the batch's documents to its part files (document j to shard (index + j) mod shards); returns the batch
  index and a manifest entry per input file."""
  buffers: dict[int, bytearray] = {}
  held = j = 0
  entries = []
  for path, name in job.files:
    docs = file_documents(as_path(path), name, jsonl_field=job.jsonl_field, doc_separator=job.doc_separator)
    for _, doc in docs:
      buf = buffers.setdefault((job.index + j) % job.shards, bytearray())
      buf += _LENGTH.pack(len(doc))
      buf += doc
      held, j = held + len(doc), j + 1
      if held >= _FLUSH_BYTES:
        _flush(buffers, job)
        held = 0
    entries.append({"path": path, "bytes": files.size(as_path(path)), "sha256": _sha256(path)})
  _flush(buffers, job)
  return job.index, entries


def _flush(buffers: dict[int, bytearray], job: _Batch) -> None:
  for shard, buf in buffers.items():
    if buf:
      with open(_part(job.parts, shard, job.index), "ab") as f:
        f.write(buf)
      buf.clear()


def _write_shard(job: _Shard) -> dict:
  """Copies the shard's parts, in batch order, into its ArrayRecord file; returns its manifest entry."""
  file = SHARD_FILE.format(job.index, job.shards)
  writer = ArrayRecordWriter(str(Path(job.out, file)), WRITER_OPTIONS)
  documents = nbytes = 0
  for batch in range(job.batches):
    part = _part(job.parts, job.index, batch)
    if not part.exists():
      continue
    with open(part, "rb") as f:
      while header := f.read(_LENGTH.size):
        (n,) = _LENGTH.unpack(header)
        writer.write(f.read(n))
        documents, nbytes = documents + 1, nbytes + n
    part.unlink()
  writer.close()
  return {"file": file, "documents": documents, "bytes": nbytes, "file_bytes": Path(job.out, file).stat().st_size}


def _quiet_interrupt() -> None:
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool


class _Runner:
  """Runs jobs in this process (one worker) or in a pool of spawned processes (spawn: the parent may hold jax's
  threads, which fork would copy mid-state); yields results as they finish."""

  def __init__(self, workers: int):
    self.pool = None
    if workers > 1:
      self.pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_quiet_interrupt)

  def run(self, fn: Callable, jobs: list) -> Iterator:
    if self.pool is None:
      return map(fn, jobs)
    return self.pool.imap_unordered(fn, jobs)

  def close(self) -> None:
    if self.pool is not None:
      self.pool.terminate()
      self.pool.join()


def _check_out(out: Path) -> None:
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise DataError(f"--out {out}: exists and is not an empty directory; data prepare never overwrites, name a new one")


def _version() -> str:
  try:
    return importlib.metadata.version("chunklm")
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def prepare(
  cfg: DataConfig,
  out: str | os.PathLike,
  *,
  shards: int = 0,
  workers: int = 0,
  show_progress: bool = True,
  batch_bytes: int = BATCH_BYTES,
) -> Prepared:
  """Writes the documents of `cfg.sources` (read as `cfg` says: include/exclude, jsonl_field, doc_separator) into
  `shards` ArrayRecord files under `out` (0: default_shards) with `workers` processes (0: one per CPU) and a
  manifest; `out` must not exist or be empty. Every input is listed and sniffed before any is read. More than one
  worker starts processes by spawn, which imports the caller's main module again: call it from a script under
  `if __name__ == "__main__":`."""
  if not cfg.sources:
    raise DataError("data prepare: no sources; pass --data PATH")
  if shards < 0 or workers < 0:
    raise DataError(f"data prepare: --shards and --workers must be >= 0, got {shards} and {workers}")
  if is_remote(as_path(out, "--out")):
    raise DataError(
      f"--out {out}: data prepare writes ArrayRecord shards, which must be on a local disk or a mounted bucket "
      "(gcsfuse); pass a local path (its --data may be gs://)"
    )
  out = Path(out)
  _check_out(out)
  named = named_files(cfg.sources, cfg.include, cfg.exclude)
  for f, _ in named:
    sniff(f)  # now: a container is refused before hours of reading, not after
  sizes = [files.size(f) for f, _ in named]
  n = shards or default_shards(sum(sizes))
  groups = batches(sizes, batch_bytes)
  tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
  start = time.perf_counter()
  try:
    tmp.mkdir(parents=True)
    parts = tmp / "parts"
    for s in range(n):
      (parts / f"{s:05d}").mkdir(parents=True)
    reads = [
      _Batch(k, tuple((str(named[i][0]), named[i][1]) for i in g), n, str(parts), cfg.jsonl_field, cfg.doc_separator)
      for k, g in enumerate(groups)
    ]
    writes = [_Shard(s, n, len(groups), str(parts), str(tmp)) for s in range(n)]
    runner = _Runner(min(workers or os.cpu_count() or 1, max(len(reads), n)))
    try:
      sources, shard_entries = _run(runner, reads, writes, [sum(sizes[i] for i in g) for g in groups], show_progress)
    finally:
      runner.close()
    shutil.rmtree(parts)
    manifest = _manifest(cfg, shard_entries, sources, batch_bytes)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    _publish(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return Prepared(out, n, manifest["documents"], manifest["bytes"], time.perf_counter() - start)


def _run(runner: _Runner, reads: list[_Batch], writes: list[_Shard], read_bytes: list[int], show: bool):
  """Both phases with their progress bars; (source entries in input order, shard entries in shard order)."""
  sources: list[list[dict]] = [[] for _ in reads]
  with progress.bar(enabled=show, desc="reading", total=sum(read_bytes), unit="B") as bar:
    bar.unit_scale = True  # bytes as kB, MB, GB
    for k, entries in runner.run(_read_batch, reads):
      sources[k] = entries
      bar.update(read_bytes[k])
  shard_entries = []
  with progress.bar(enabled=show, desc="writing shards", total=len(writes), unit="shard") as bar:
    for entry in runner.run(_write_shard, writes):
      shard_entries.append(entry)
      bar.update(1)
  return [e for batch in sources for e in batch], sorted(shard_entries, key=lambda e: e["file"])


def _manifest(cfg: DataConfig, shards: list[dict], sources: list[dict], batch_bytes: int) -> dict:
  return {
    "format": MANIFEST_FORMAT,
    "version": 1,
    "chunklm": _version(),
    "shards": shards,
    "documents": sum(s["documents"] for s in shards),
    "bytes": sum(s["bytes"] for s in shards),
    "sources": sources,
    "read_with": {"jsonl_field": cfg.jsonl_field, "doc_separator": cfg.doc_separator},
    "order": {"batch_bytes": batch_bytes, "rule": "document j of batch k -> shard (k + j) mod shards"},
    "writer_options": WRITER_OPTIONS,
  }


def _publish(tmp: Path, out: Path) -> None:
  """Renames the finished directory to `out` (an empty directory there is replaced; anything else refused)."""
  try:
    os.rename(tmp, out)
  except OSError as e:
    raise DataError(f"--out {out}: cannot move the prepared data there ({e.strerror}); nothing was written") from None
