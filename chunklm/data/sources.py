"""Where documents come from: text files, directories, JSONL, FASTA/FASTQ, their .gz, Parquet, ArrayRecord, a
directory `chunklm data prepare` wrote, and the built-in corpus.

Every source yields `(name, bytes)` documents. Bytes are taken as they are on disk: binary and invalid UTF-8 are
valid input, but compressed files and archives other than gzip are refused in one line (formats.sniff). The built-in
default corpus is the source code of the running Python's standard library (no download).

A path may be a `gs://bucket/prefix`: it is listed in one flat listing (the same files, names and order as the same
tree on a disk) and its objects are streamed in place with a bounded read-ahead (storage.files.open_binary), never
copied to the local disk; ArrayRecord files must be local (formats.array_record_refusal). Another scheme (`s3://`) is
a one-line UserError.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import itertools
import os
import re
import sysconfig
import zlib
from collections.abc import Iterator
from pathlib import Path

from etils import epath

from chunklm.config import Refused, load_json
from chunklm.data.formats import (
  MANIFEST,
  Format,
  array_record_documents,
  array_record_refusal,
  is_prepared_manifest,
  parquet_documents,
  prepared_manifest,
  sniff,
)
from chunklm.errors import DataError
from chunklm.storage import files
from chunklm.storage.files import AnyPath
from chunklm.storage.objects import check_access, reason
from chunklm.storage.paths import is_remote, location

Document = tuple[str, bytes]

FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".ffn", ".faa", ".frn")
FASTQ_SUFFIXES = (".fq", ".fastq")
JSONL_SUFFIXES = (".jsonl",)
_STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def as_path(path: str | os.PathLike, option: str = "--data") -> AnyPath:
  """The file or directory `path` names: a local path, or a `gs://bucket/prefix` read in place (no local copy);
  another scheme (`s3://`, `http://`) is a one-line UserError naming `option`."""
  if isinstance(path, epath.Path) and is_remote(path):
    return path
  if not _URL.match(os.fspath(path)):
    return Path(path)
  found = location(path, option)
  return found if is_remote(found) else Path(os.fspath(found))


def _open_bytes(path: AnyPath) -> io.BufferedIOBase:
  return files.open_binary(path, gunzip=path.suffix == ".gz")


def _kind(path: AnyPath) -> str:
  suffix = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
  suffix = suffix.lower()
  if suffix in FASTA_SUFFIXES:
    return "fasta"
  if suffix in FASTQ_SUFFIXES:
    return "fastq"
  if suffix in JSONL_SUFFIXES:
    return "jsonl"
  return "text"


# what a damaged file raises: unreadable, truncated, a bad gzip header or CRC, corrupt deflate data
READ_ERRORS = (OSError, EOFError, gzip.BadGzipFile, zlib.error)


def _read_all(path: AnyPath) -> bytes:
  try:
    with _open_bytes(path) as f:
      return f.read()
  except READ_ERRORS as e:
    raise DataError(f"cannot read {path}: {reason(e)}") from None


def _lines(path: AnyPath) -> Iterator[bytes]:
  """The file's lines (without line ends), streamed so large JSONL/FASTA/FASTQ files need not fit in memory twice."""
  try:
    with _open_bytes(path) as f:
      for line in f:
        yield line.rstrip(b"\r\n")
  except READ_ERRORS as e:
    raise DataError(f"cannot read {path}: {reason(e)}") from None


def _text_documents(path: AnyPath, name: str, separator: bytes, start: int) -> Iterator[Document]:
  if not separator:
    if not start:  # one record: the whole file
      yield name, _read_all(path)
    return
  yield from itertools.islice(
    ((f"{name}#{i}", part) for i, part in enumerate(split_stream(path, separator))), start, None
  )


def split_stream(path: AnyPath, separator: bytes, block: int = 1 << 20) -> Iterator[bytes]:
  """`contents.split(separator)` of the file, read `block` bytes at a time: a file of many documents is never held
  whole (only the document being read and one block)."""
  pending = bytearray()
  try:
    with _open_bytes(path) as f:
      while chunk := f.read(block):
        searched = max(len(pending) - len(separator) + 1, 0)  # no separator starts before this: it was searched
        pending += chunk
        lo = 0
        while (i := pending.find(separator, max(lo, searched))) >= 0:
          yield bytes(pending[lo:i])
          lo = i + len(separator)
        del pending[:lo]
  except READ_ERRORS as e:
    raise DataError(f"cannot read {path}: {reason(e)}") from None
  yield bytes(pending)


def jsonl_objects(path: AnyPath, skip: int = 0) -> Iterator[tuple[int, dict]]:
  """(line number, object) for every non-blank line of a JSONL file (plain or .gz), streamed; a line that is not a
  JSON object (invalid JSON, not UTF-8, nested more than 100 levels: config.untrusted) is a one-line DataError naming
  the file and line. The first `skip` non-blank lines are passed over unparsed (resuming inside a file)."""
  for lineno, line in enumerate(_lines(path), 1):
    if not line.strip():
      continue
    if skip:
      skip -= 1
      continue
    try:
      record = load_json(line, limit=None)  # a record may hold a whole document
    except Refused as e:
      raise DataError(f"{path}:{lineno}: invalid JSON ({e.problem})" if e.syntax else f"{path}:{lineno}: {e}") from None
    if not isinstance(record, dict):
      raise DataError(f"{path}:{lineno}: not a JSON object")
    yield lineno, record


def _jsonl_documents(path: AnyPath, name: str, field: str, start: int) -> Iterator[Document]:
  for lineno, record in jsonl_objects(path, start):
    if field not in record:
      raise DataError(f"{path}:{lineno}: record has no field {field!r} (set data.jsonl_field)")
    text = record[field]
    if not isinstance(text, str):
      raise DataError(f"{path}:{lineno}: field {field!r} is not a string")
    yield f"{name}:{lineno}", text.encode("utf-8", errors="surrogatepass")


def _record_name(header: bytes, fallback: int) -> str:
  """The first word of a FASTA/FASTQ header line (without '>' or '@'), or the record number."""
  words = header[1:].split(maxsplit=1)
  return words[0].decode("utf-8", "replace") if words else str(fallback)


def _fasta_documents(path: AnyPath, name: str) -> Iterator[Document]:
  """One document per record: the sequence lines joined, without header or newlines."""
  header, count = None, 0
  seq: list[bytes] = []
  for line in _lines(path):
    if line.startswith(b">"):
      if header is not None:
        yield f"{name}:{header}", b"".join(seq)
      header, seq, count = _record_name(line, count), [], count + 1
    elif line.strip():
      if header is None:
        raise DataError(f"{path}: FASTA sequence before the first '>' header")
      seq.append(line.strip())
  if header is not None:
    yield f"{name}:{header}", b"".join(seq)


def _fastq_documents(path: AnyPath, name: str) -> Iterator[Document]:
  """One document per read: the sequence line only (records are 4 lines: @id, sequence, +, qualities)."""
  record: list[bytes] = []
  count = 0
  for line in _lines(path):
    if not line.strip():
      continue
    record.append(line)
    if len(record) == 4:
      if not record[0].startswith(b"@") or not record[2].startswith(b"+"):
        raise DataError(f"{path}: malformed FASTQ record {count + 1} (expected @id, sequence, +, qualities)")
      yield f"{name}:{_record_name(record[0], count)}", record[1].strip()
      record, count = [], count + 1
  if record:
    raise DataError(f"{path}: FASTQ must have 4 lines per record; the last record has {len(record)}")


def file_documents(
  path: AnyPath, name: str, *, jsonl_field: str = "text", doc_separator: str = "", start: int = 0
) -> Iterator[Document]:
  """The documents of one file, from its `start`-th on: exactly `list(file_documents(path, name))[start:]`, read
  without the documents before where the format allows (Parquet skips row groups, ArrayRecord seeks, JSONL skips
  lines unparsed). What the file is comes from its name and first bytes (formats.sniff)."""
  return _documents(path, name, sniff(path), jsonl_field, doc_separator, start)


def _documents(
  path: AnyPath, name: str, fmt: Format, jsonl_field: str, doc_separator: str, start: int
) -> Iterator[Document]:
  """file_documents of a file already sniffed (iter_documents sniffs every file before reading any)."""
  if start < 0:
    raise ValueError(f"start must be >= 0, got {start}")
  if fmt == "parquet":
    return parquet_documents(path, name, jsonl_field, start)
  if fmt == "array_record":
    return array_record_documents(path, name, start)
  kind = _kind(path)
  if kind == "fasta":
    return itertools.islice(_fasta_documents(path, name), start, None)
  if kind == "fastq":
    return itertools.islice(_fastq_documents(path, name), start, None)
  if kind == "jsonl":
    return _jsonl_documents(path, name, jsonl_field, start)
  return _text_documents(path, name, doc_separator.encode("utf-8"), start)


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
  base = rel.rsplit("/", 1)[-1]
  return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(base, p) for p in patterns)


def list_files(
  path: str | os.PathLike, include: tuple[str, ...] = ("*",), exclude: tuple[str, ...] = (), option: str = "--data"
) -> list[AnyPath]:
  """The files a path given with `option` stands for, sorted; raises DataError for missing paths or empty
  directories. A directory `chunklm data prepare` wrote stands for its shards, in its manifest's order (include and
  exclude do not apply). A `gs://bucket/prefix` is listed in one flat listing and its objects are read in place."""
  p = as_path(path, option)
  if isinstance(p, epath.Path):
    return _remote_files(p, path, include, exclude, option)
  if not p.exists():
    raise DataError(f"{option} {path}: no such file or directory")
  if p.is_file():
    if not os.access(p, os.R_OK):
      raise DataError(f"{option} {path}: permission denied")
    return [p]
  if not p.is_dir():
    raise DataError(f"{option} {path}: not a regular file or directory")
  manifest = prepared_manifest(p)
  if manifest is not None:
    return [p / shard["file"] for shard in manifest["shards"]]
  found: list[AnyPath] = []
  for root, dirs, names in os.walk(p):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for n in sorted(names):
      f = Path(root, n)
      rel = f.relative_to(p).as_posix()
      if n.startswith(".") or not f.is_file() or not _matches(rel, include) or _matches(rel, exclude):
        continue
      found.append(f)
  return _some(found, path, include, exclude, option)


def _some(
  found: list[AnyPath], path: str | os.PathLike, include: tuple[str, ...], exclude: tuple[str, ...], option: str
) -> list[AnyPath]:
  if not found:
    raise DataError(
      f"{option} {path}: directory has no files matching include={list(include)} "
      f"exclude={list(exclude)} (set data.include / data.exclude)"
    )
  return found


def _remote_files(
  p: epath.Path, path: str | os.PathLike, include: tuple[str, ...], exclude: tuple[str, ...], option: str
) -> list[AnyPath]:
  """list_files of a gs:// prefix or object: the same rules (hidden names, include/exclude, walk order) from one
  flat listing; a missing bucket and missing credentials fail first, in one line."""
  check_access(p, option)
  listed = files.walk_files(p)
  if not listed:
    if files.kind(p) == "file":
      return [p]
    raise DataError(f"{option} {path}: no such file or directory")
  names = [rel for rel, _ in listed]
  if MANIFEST in names and is_prepared_manifest(p / MANIFEST):
    raise array_record_refusal(p, "prepared data")
  found: list[AnyPath] = [
    p / rel
    for rel in names
    if not any(part.startswith(".") for part in rel.split("/"))
    and _matches(rel, include)
    and not _matches(rel, exclude)
  ]
  return _some(found, path, include, exclude, option)


def printable(name: str) -> str:
  """A file name as valid text: bytes that are not UTF-8 (kept by Python as surrogates) written as \\xNN."""
  return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def iter_documents(
  paths: tuple[str, ...],
  *,
  include: tuple[str, ...] = ("*",),
  exclude: tuple[str, ...] = (),
  jsonl_field: str = "text",
  doc_separator: str = "",
  option: str = "--data",
) -> Iterator[Document]:
  """All documents of `paths` in a deterministic order. Every path is checked (and every file sniffed) before any is
  read."""
  plan = [(f, name, sniff(f)) for f, name in named_files(paths, include, exclude, option)]
  for f, name, fmt in plan:
    yield from _documents(f, name, fmt, jsonl_field, doc_separator, 0)


def named_files(
  paths: tuple[str, ...], include: tuple[str, ...] = ("*",), exclude: tuple[str, ...] = (), option: str = "--data"
) -> list[tuple[AnyPath, str]]:
  """(file, the name its documents are named after) for every file of `paths`, in order: a file given by itself is
  named by its file name, a file in a directory by the directory's name and its path inside it (the same names for
  a directory on disk and the same files under a gs:// prefix)."""
  named = []
  for path in paths:
    root = as_path(path, option)
    for f in list_files(path, include, exclude, option):
      named.append((f, printable(f.name if f == root else f"{root.name}/{f.relative_to(root).as_posix()}")))
  return named


def stdlib_dir() -> Path:
  return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
  """The built-in corpus: the standard library's .py files, without test suites and installed packages."""
  root = stdlib_dir()
  found: list[Path] = []
  for dirpath, dirs, names in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d not in _STDLIB_SKIP_DIRS and not d.startswith("."))
    found.extend(Path(dirpath, n) for n in sorted(names) if n.endswith(".py"))
  if not found:
    raise DataError(f"the built-in corpus is empty: no .py files under {root}; pass --data PATH")
  return found


def default_documents() -> Iterator[Document]:
  root = stdlib_dir()
  for f in stdlib_files():
    yield f.relative_to(root).as_posix(), _read_all(f)
