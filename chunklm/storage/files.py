"""Reading files that may be local or objects in Cloud Storage, without copying them to the local disk.

- `open_binary(path)`: a read-only binary file; a local one is the builtin `open(path, "rb")` (`gzip.open` with
  `gunzip=True`), an object is read in ranged requests through gcsfs with a bounded read-ahead: each request fetches
  what was asked for plus at most `READ_AHEAD_BYTES` (8 MiB) more, and only the last such block is held (fsspec's
  "readahead" cache, behind a Python buffer of at most `BUFFER_BYTES`, 256 KiB, which splits lines fast), so reading
  a file's first lines costs one block, never the whole object. `seek` works (a seek outside the held block is a new
  ranged request), which Parquet's footer-then-row-groups reads need.
- `walk_files(root)`: every object under a prefix, in the order `os.walk` with sorted names visits a directory's
  files (a directory's files before its subdirectories), from one flat listing (no per-directory requests).
- `kind`, `size`, `stamp`: what a path is, its size, and a line that changes when the object does.
"""

from __future__ import annotations

import gzip
import io
import os
import pathlib
from typing import Literal, TypeAlias

from etils import epath

from chunklm.storage.objects import filesystem, listing
from chunklm.storage.paths import is_remote

READ_AHEAD_BYTES = 8 << 20  # an open object holds at most the bytes last asked for plus this much
BUFFER_BYTES = 256 << 10  # lines are split in Python's buffered reader, fed this much at a time from the block

# what chunklm reads data from: a local path (pathlib) or a gs:// object or prefix (etils.epath)
AnyPath: TypeAlias = "pathlib.Path | epath.Path"


class _Gunzipped(gzip.GzipFile):
  """A gzip stream over an object, closing the object with it (GzipFile leaves a file object it was given open)."""

  def __init__(self, source: io.BufferedIOBase):
    super().__init__(fileobj=source, mode="rb")
    self._source = source

  def close(self) -> None:
    try:
      super().close()
    finally:
      self._source.close()


def open_binary(path: AnyPath, *, gunzip: bool = False, read_ahead: int | None = None) -> io.BufferedIOBase:
  """`path` opened for reading bytes (decompressed with `gunzip`). An object is fetched in ranged requests of what
  is asked for plus `read_ahead` bytes (default READ_AHEAD_BYTES; a reader of a few bytes, like a format sniffer,
  asks for less), through a buffer of at most BUFFER_BYTES, so an open object holds at most both."""
  if not is_remote(path):
    return gzip.open(path, "rb") if gunzip else open(path, "rb")
  fs, key = filesystem(epath.Path(os.fspath(path)))
  block = READ_AHEAD_BYTES if read_ahead is None else read_ahead
  raw = fs.open(key, "rb", block_size=block, cache_type="readahead")
  source = io.BufferedReader(raw, max(min(BUFFER_BYTES, block), io.DEFAULT_BUFFER_SIZE))
  return _Gunzipped(source) if gunzip else source


def _walk_key(rel: str) -> tuple[tuple[int, str], ...]:
  """Where os.walk (names sorted) visits the file `rel`: a directory's files (0) before its subdirectories (1)."""
  parts = rel.split("/")
  return (*((1, d) for d in parts[:-1]), (0, parts[-1]))


def walk_files(root: epath.Path) -> list[tuple[str, int]]:
  """(path relative to `root`, size) of every object under the prefix `root`, in os.walk order; [] when none."""
  found = listing(root)
  names = [rel for rel in found if rel and "" not in rel.split("/")]  # not "dir/" placeholders
  return [(rel, found[rel]["size"]) for rel in sorted(names, key=_walk_key)]


def kind(path: AnyPath) -> Literal["file", "directory"] | None:
  """Whether `path` is a file (an object), a directory (a prefix objects are under, or a bucket), or neither."""
  if not is_remote(path):
    p = pathlib.Path(path)
    return "file" if p.is_file() else "directory" if p.is_dir() else None
  fs, key = filesystem(epath.Path(os.fspath(path)))
  try:
    info = fs.info(key)
  except FileNotFoundError:
    return None
  return "file" if info.get("type") == "file" else "directory"


def size(path: AnyPath) -> int:
  """The size of the file `path` in bytes (an object's from the listing gcsfs keeps, else one request)."""
  if not is_remote(path):
    return os.stat(path).st_size
  fs, key = filesystem(epath.Path(os.fspath(path)))
  return int(fs.size(key))


def stamp(path: AnyPath) -> str:
  """A line that changes when the file changes: `size|mtime_ns` of a local file, `size|generation` of an object."""
  if not is_remote(path):
    st = os.stat(path)
    return f"{st.st_size}|{st.st_mtime_ns}"
  fs, key = filesystem(epath.Path(os.fspath(path)))
  info = fs.info(key)
  return f"{info['size']}|{info.get('generation')}"
