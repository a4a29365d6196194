"""What a data file is, found from its first bytes, and the record formats read without a text path: Parquet (rows of
one column) and ArrayRecord (one document per record), plus the manifest of a `chunklm data prepare` directory.

A file given as text is sniffed first (a few hundred bytes, once): compressed files and archives that are not gzip
(zstd, bzip2, xz, lz4, zip, tar, 7z) and TFRecord files are refused in one line instead of being trained on as raw
bytes, and Parquet or ArrayRecord files are read as records whatever their names.

Files in Cloud Storage (gs://) are read in place through `storage.files.open_binary` (ranged requests, a bounded
read-ahead), Parquet included; the ArrayRecord reader opens local files only, so an ArrayRecord file on gs:// is
refused in one line (`array_record_refusal`): mount the bucket (gcsfuse) and pass the mount's path.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader

from chunklm.errors import DataError
from chunklm.storage import files
from chunklm.storage.files import AnyPath
from chunklm.storage.objects import reason
from chunklm.storage.paths import is_remote

try:
  import pyarrow as pa
  import pyarrow.parquet as pq
except ImportError:  # the optional extra chunklm[data]: without it a Parquet file is refused in one line
  pa = pq = None

Format = Literal["text", "parquet", "array_record"]

HEAD_BYTES = 512  # enough for every magic below, tar's "ustar" at offset 257 included
SNIFF_READ_AHEAD = 16 << 10  # what sniffing an object in Cloud Storage fetches per request past what it reads
PARQUET_MAGIC = b"PAR1"  # at the start and at the end of every Parquet file
# The first 24 bytes of every ArrayRecord file: the riegeli block header that the file signature chunk starts with
# (its hash, previous chunk 0, next chunk at byte 64), the same in every file ArrayRecordWriter writes.
ARRAY_RECORD_MAGIC = bytes.fromhex("83af70d10d884a3f00000000000000004000000000000000")
GZIP_MAGIC = b"\x1f\x8b"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "chunklm-documents"
_TFRECORD_NAME = re.compile(r"\.tfrecords?(-\d+-of-\d+)?(\.gz)?$", re.IGNORECASE)
_READ_ERRORS = (OSError, EOFError, gzip.BadGzipFile, zlib.error)  # as sources.READ_ERRORS

# (magic, what the file is, how to make text of it); `_container` also checks bzip2 and tar, which need more than a
# prefix to tell from text.
_MAGICS = (
  (b"\x28\xb5\x2f\xfd", "a zstd-compressed file", "decompress it (zstd -d) and pass the result"),
  (b"\xfd7zXZ\x00", "an xz-compressed file", "decompress it (xz -d) and pass the result"),
  (b"\x04\x22\x4d\x18", "an lz4-compressed file", "decompress it (lz4 -d) and pass the result"),
  (b"PK\x03\x04", "a zip archive", "extract it (unzip) and pass the files it holds"),
  (b"7z\xbc\xaf\x27\x1c", "a 7z archive", "extract it (7z x) and pass the files it holds"),
)
# what a .gz may not hold besides those: records chunklm reads only uncompressed, and gzip in gzip
_INNER = (
  (PARQUET_MAGIC, "a Parquet file", "pass the Parquet file"),
  (ARRAY_RECORD_MAGIC, "an ArrayRecord file", "pass the ArrayRecord file"),
  (GZIP_MAGIC, "a gzip file", "pass the inner file"),
)


def _cannot_read(path: AnyPath, e: BaseException) -> DataError:
  return DataError(f"cannot read {path}: {reason(e)}")


def _container(head: bytes) -> tuple[str, str] | None:
  """(what, fix) when `head` starts a compressed file or archive chunklm does not read as text, else None."""
  for magic, what, fix in _MAGICS:
    if head.startswith(magic):
      return what, fix
  # "BZh", the block size 1-9, then a block's or the end of stream's magic: plain text rarely starts so
  if head[:3] == b"BZh" and head[3:4] in b"123456789" and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
    return "a bzip2-compressed file", "decompress it (bunzip2) and pass the result"
  if head[257:262] == b"ustar":
    return "a tar archive", "extract it (tar -xf) and pass the files it holds"
  return None


def _refusal(path: AnyPath, what: str, fix: str) -> DataError:
  return DataError(f"{path}: {what}, not text; {fix}, or leave it out with data.exclude")


def array_record_refusal(path: AnyPath, what: str = "an ArrayRecord file") -> DataError:
  """The one line for ArrayRecord data in Cloud Storage, which the ArrayRecord reader cannot open."""
  return DataError(
    f"{path}: {what}: ArrayRecord shards must be on a local disk or a mounted bucket (gcsfuse); JSONL, text and "
    "Parquet stream from gs:// directly"
  )


def _array_record(path: AnyPath) -> Format:
  if is_remote(path):
    raise array_record_refusal(path)
  return "array_record"


def _sniff_gzip(path: AnyPath) -> None:
  """A gzip file is read as text when named *.gz and holding no container (tar, zip, Parquet, ...)."""
  try:
    with files.open_binary(path, gunzip=True, read_ahead=SNIFF_READ_AHEAD) as f:
      inner = f.read(HEAD_BYTES)
  except _READ_ERRORS as e:
    raise _cannot_read(path, e) from None
  found = _container(inner) or next(((w, fix) for m, w, fix in _INNER if inner.startswith(m)), None)
  if found is not None:
    raise _refusal(path, f"{found[0]} inside gzip", f"gunzip it, then {found[1]}")
  if path.suffix.lower() != ".gz":
    raise DataError(f"{path}: a gzip-compressed file without the .gz suffix; rename it to end in .gz or gunzip it")


def sniff(path: AnyPath) -> Format:
  """How to read `path`: "parquet" or "array_record" (by suffix or magic bytes) or "text" (every text kind: plain,
  JSONL, FASTA/FASTQ and their .gz). Raises a one-line DataError for what chunklm cannot read as text: compressed
  files and archives (also inside a .gz), TFRecord files."""
  if _TFRECORD_NAME.search(path.name):
    raise DataError(
      f"{path}: a TFRecord file; its records are usually tf.Example protos, which chunklm cannot decode without "
      "TensorFlow; export the text to JSONL or Parquet (then `chunklm data prepare` makes ArrayRecord shards of it)"
    )
  suffix = path.suffix.lower()
  if suffix == ".parquet":
    return "parquet"
  if suffix == ".array_record":
    return _array_record(path)
  try:
    with files.open_binary(path, read_ahead=SNIFF_READ_AHEAD) as f:
      head = f.read(HEAD_BYTES)
      if head.startswith(PARQUET_MAGIC) and f.seek(0, 2) >= 12:
        f.seek(-4, 2)
        if f.read(4) == PARQUET_MAGIC:
          return "parquet"
  except OSError as e:
    raise _cannot_read(path, e) from None
  if head.startswith(ARRAY_RECORD_MAGIC):
    return _array_record(path)
  if head.startswith(GZIP_MAGIC):
    _sniff_gzip(path)
    return "text"
  found = _container(head)
  if found is not None:
    raise _refusal(path, *found)
  return "text"


def _need_pyarrow(path: AnyPath) -> None:
  if pq is None:
    raise DataError(f"{path} is a Parquet file; install chunklm[data] (pyarrow) to read it")


def _text_column(path: AnyPath, pf, column: str) -> None:
  """Refuses a Parquet file whose `column` is missing or holds neither strings nor bytes."""
  schema = pf.schema_arrow
  index = schema.get_field_index(column)
  kinds = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
  if index >= 0 and any(is_kind(schema.field(index).type) for is_kind in kinds + _view_kinds()):
    return
  columns = ", ".join(f"{f.name}: {f.type}" for f in schema)
  raise DataError(
    f"{path}: Parquet file has no string or binary column {column!r} (its columns: {columns}); "
    "set data.jsonl_field to the column holding the text"
  )


def _view_kinds() -> tuple:
  return tuple(getattr(pa.types, n) for n in ("is_string_view", "is_binary_view") if hasattr(pa.types, n))


def _present(row_group, column: str) -> int | None:
  """The non-null values of `column` in a row group, from its statistics; None when the writer kept none."""
  for i in range(row_group.num_columns):
    chunk = row_group.column(i)
    if chunk.path_in_schema == column:
      stats = chunk.statistics
      if stats is not None and stats.has_null_count:
        return row_group.num_rows - stats.null_count
  return None


def _values(chunk) -> Iterator[bytes | None]:
  """The bytes of each value of a string or binary Arrow array (None for a null), sliced from its buffers: no
  decoding, so the bytes are exactly those stored."""
  arr = chunk.cast(pa.large_binary())
  _, offsets_buf, data_buf = arr.buffers()
  offsets = np.frombuffer(offsets_buf, np.int64)[arr.offset : arr.offset + len(arr) + 1]
  data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
  valid = np.asarray(arr.is_valid())
  for i in range(len(arr)):
    yield bytes(data[offsets[i] : offsets[i + 1]]) if valid[i] else None


def parquet_documents(path: AnyPath, name: str, column: str, start: int = 0) -> Iterator[tuple[str, bytes]]:
  """One document per non-null value of `column` (strings as UTF-8, binary as stored), named `{name}:{row}`; read
  one row group at a time. `start` skips that many documents, whole row groups by their statistics' null counts.
  An object in Cloud Storage is read by ranges (the footer, then each row group's column), never whole."""
  _need_pyarrow(path)
  with contextlib.ExitStack() as stack:
    try:
      source = stack.enter_context(files.open_binary(path)) if is_remote(path) else path
    except OSError as e:
      raise _cannot_read(path, e) from None
    yield from _parquet_rows(path, source, name, column, start)


def _parquet_rows(path: AnyPath, source, name: str, column: str, start: int) -> Iterator[tuple[str, bytes]]:
  try:
    pf = pq.ParquetFile(source)
    _text_column(path, pf, column)
    row, skip = 0, start
    for g in range(pf.num_row_groups):
      meta = pf.metadata.row_group(g)
      present = _present(meta, column)
      if present is not None and skip >= present:
        row, skip = row + meta.num_rows, skip - present
        continue
      for chunk in pf.read_row_group(g, columns=[column]).column(0).chunks:
        for value in _values(chunk):
          if value is not None:
            if skip:
              skip -= 1
            else:
              yield f"{name}:{row}", value
          row += 1
  except (pa.ArrowException, OSError) as e:
    raise _cannot_read(path, e) from None


def array_record_documents(path: AnyPath, name: str, start: int = 0, batch: int = 64) -> Iterator[tuple[str, bytes]]:
  """One document per record, bytes as stored, named `{name}:{index}`; from record `start` on by random access."""
  _array_record(path)
  try:
    reader = ArrayRecordReader(str(path))
    ok = reader.ok()
  except RuntimeError as e:
    raise _cannot_read(path, e) from None
  if not ok:
    try:
      reader.close()
    except RuntimeError as e:  # a damaged file raises here too, with the reason
      raise _cannot_read(path, e) from None
    raise DataError(f"cannot read {path}: not a readable ArrayRecord file (damaged or truncated)")
  try:
    total = reader.num_records()
    for lo in range(start, total, batch):
      for i, record in enumerate(reader.read(lo, min(lo + batch, total)), lo):
        yield f"{name}:{i}", record
  except RuntimeError as e:
    raise _cannot_read(path, e) from None
  finally:
    with contextlib.suppress(RuntimeError):  # a damaged file's error was raised above already
      reader.close()


def prepared_manifest(path: str | Path) -> dict | None:
  """The manifest of a directory `chunklm data prepare` wrote (its `shards` checked: each file present, with the
  size the manifest records), or None when `path` is not such a directory. A damaged one is a one-line DataError."""
  p = Path(path)
  file = p / MANIFEST
  if not p.is_dir() or not file.is_file():
    return None
  try:
    text = file.read_bytes()
  except OSError as e:
    raise _cannot_read(file, e) from None
  manifest = _parse_manifest(file, text)
  if manifest is None:
    return None
  shards = manifest.get("shards")
  if not isinstance(shards, list) or not all(
    isinstance(s, dict) and {"file", "file_bytes"} <= s.keys() for s in shards
  ):
    raise DataError(f"{file}: malformed manifest (each of its shards needs a file and its file_bytes)")
  for shard in shards:
    f = p / shard["file"]
    if not f.is_file():
      raise DataError(f"{p}: prepared data without its shard {shard['file']} (listed in {MANIFEST})")
    if f.stat().st_size != shard["file_bytes"]:
      raise DataError(
        f"{p}: shard {shard['file']} has {f.stat().st_size} bytes, {MANIFEST} says {shard['file_bytes']}; "
        "it changed or was cut short: prepare the data again"
      )
  return manifest


def _parse_manifest(file: AnyPath, text: bytes) -> dict | None:
  """The manifest `text` of prepared data, or None when it is some other program's manifest.json."""
  try:
    manifest = json.loads(text)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    if MANIFEST_FORMAT.encode() not in text:
      return None  # some other program's manifest.json: an ordinary directory
    raise DataError(f"{file}: damaged manifest of prepared data ({e}); prepare the data again") from None
  if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
    return None
  return manifest


def is_prepared_manifest(file: AnyPath) -> bool:
  """Whether the manifest.json `file` (local or in Cloud Storage) is one `chunklm data prepare` wrote."""
  try:
    with files.open_binary(file) as f:
      text = f.read()
  except OSError as e:
    raise _cannot_read(file, e) from None
  return _parse_manifest(file, text) is not None
