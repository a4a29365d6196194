"""What object storage (Cloud Storage, through gcsfs's authenticated session) offers beyond a path.

- `listing(prefix)`: every object under a prefix with its size and the CRC32C the server keeps, in one flat listing
  (no recursive globs, no object read), which checkpoint checksums are made of;
- `put_if(path, data, generation)` and `read_versioned(path)`: writes that succeed only if the object is still at
  the generation the writer saw (0: absent), the primitive of the workdir lease (run/lease.py), with the server's
  clock, so that hosts whose clocks differ agree on when a lease has expired;
- `move_tree`, `check_access` and `storage_error`: moves, a first call that tells a missing bucket, missing
  credentials or a refused permission in one line, and the same line for any later failure of those kinds.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import shutil
import time
from datetime import datetime

import fsspec
from etils import epath

from chunklm.errors import UserError
from chunklm.storage.paths import bucket_of, is_remote

_CREDENTIALS_HELP = (
  "run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS (a TPU or GCE VM uses its "
  "service account)"
)


def filesystem(path: epath.Path):
  """(the fsspec file system of `path`'s scheme, the path without its scheme: `bucket/key`)."""
  scheme, _, rest = os.fspath(path).partition("://")
  return fsspec.filesystem(scheme), rest


def _bucket_and_key(path: epath.Path) -> tuple[str, str]:
  _, rest = filesystem(path)
  bucket, _, key = rest.partition("/")
  return bucket, key


def listing(prefix: epath.Path) -> dict[str, dict]:
  """{path relative to `prefix`: {"size", "crc32c", "generation"}} of every object under `prefix`."""
  fs, rest = filesystem(prefix)
  fs.invalidate_cache(rest)
  found = fs.find(rest, detail=True)
  return {
    name[len(rest) + 1 :]: {
      "size": int(info["size"]),
      "crc32c": info.get("crc32c"),
      "generation": info.get("generation"),
    }
    for name, info in found.items()
    if name.startswith(rest + "/") and info.get("type") == "file"
  }


def _multipart(key: str, data: bytes) -> bytes:
  meta = json.dumps({"name": key}).encode()
  return (
    b"--==0==\nContent-Type: application/json; charset=UTF-8\n\n" + meta + b"\n--==0==\n"
    b"Content-Type: application/octet-stream\n\n" + data + b"\n--==0==--"
  )


def put_if(path: epath.Path, data: bytes, generation: int) -> int | None:
  """Writes `data` to the object `path` if it is at `generation` (0: does not exist); its new generation, or None
  when the precondition failed (someone else wrote or created it)."""
  fs, _ = filesystem(path)
  bucket, key = _bucket_and_key(path)
  try:
    reply = fs.call(
      "POST",
      f"{fs._location}/upload/storage/v1/b/{bucket}/o",
      uploadType="multipart",
      ifGenerationMatch=str(generation),
      headers={"Content-Type": 'multipart/related; boundary="==0=="'},
      data=_multipart(key, data),
      json_out=True,
    )
  except FileExistsError:  # gcsfs's word for 412 Precondition Failed
    return None
  return int(reply["generation"])


def read_versioned(path: epath.Path) -> tuple[bytes, int, float] | None:
  """(content, generation, age in seconds by the server's clock) of the object `path`, or None if there is none."""
  fs, _ = filesystem(path)
  bucket, key = _bucket_and_key(path)
  try:
    headers, raw = fs.call("GET", "b/{}/o/{}", bucket, key)
  except FileNotFoundError:
    return None
  meta = json.loads(raw)
  generation = int(meta["generation"])
  try:
    _, data = fs.call("GET", "b/{}/o/{}", bucket, key, alt="media", generation=str(generation))
  except FileNotFoundError:
    return None
  now = email.utils.parsedate_to_datetime(headers["Date"]).timestamp() if "Date" in headers else time.time()
  updated = _rfc3339(meta["updated"])
  return data, generation, max(0.0, now - updated)


def _rfc3339(text: str) -> float:
  return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def delete_if(path: epath.Path, generation: int) -> None:
  """Deletes the object `path` if it is still at `generation` (else leaves it: it is someone else's now)."""
  fs, _ = filesystem(path)
  bucket, key = _bucket_and_key(path)
  try:
    fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=str(generation))
  except (FileNotFoundError, FileExistsError):
    pass


def move_tree(src: epath.Path, dst: epath.Path) -> None:
  """Moves a directory (a prefix of objects) from `src` to `dst`: on object storage a copy and a delete per object."""
  if not is_remote(src):
    shutil.move(os.fspath(src), os.fspath(dst))
    return
  fs, a = filesystem(src)
  _, b = filesystem(dst)
  fs.mv(a, b, recursive=True)
  fs.invalidate_cache()


def check_access(path: epath.Path, what: str) -> None:
  """One cheap call that fails in one line when `path`'s bucket is missing or its objects cannot be listed."""
  if not is_remote(path):
    return
  fs, _ = filesystem(path)
  bucket, key = _bucket_and_key(path)
  try:
    fs.call("GET", "b/{}/o", bucket, prefix=key, maxResults="1")
  except FileNotFoundError:
    raise UserError(f"{what} {path}: the bucket {bucket_of(path)} does not exist (or is not visible to you)") from None
  except Exception as e:
    error = storage_error(e, f"{what} {path}")
    if error is None:
      raise
    raise error from None


def storage_error(e: BaseException, where: str = "") -> UserError | None:
  """The one-line UserError for a failure of object storage (missing credentials, refused permission, a bucket
  that cannot be reached), or None when `e` is something else."""
  text = str(e)
  head = text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__
  prefix = f"{where}: " if where else ""
  code = getattr(e, "code", None)
  if code == 401 or "UNAUTHENTICATED" in text or "Anonymous caller" in text or "DefaultCredentialsError" in repr(e):
    return UserError(f"{prefix}no credentials for Cloud Storage ({head}); {_CREDENTIALS_HELP}")
  if code == 403 or text.startswith("Forbidden:") or "PERMISSION_DENIED" in text:
    detail = (
      text.split("\n", 1)[1].strip().splitlines()[0][:200] if text.startswith("Forbidden:") and "\n" in text else head
    )
    return UserError(f"{prefix}permission denied by Cloud Storage ({detail}); grant the account access to the bucket")
  missing = re.search(r"/b/([^/?]+)/o(?:\?|$)", text) if isinstance(e, FileNotFoundError) else None
  if missing:  # a 404 on a bucket's object list or upload URL: the bucket is not there
    return UserError(f"{prefix}the bucket gs://{missing.group(1)} does not exist (or is not visible to you)")
  if any(c.__name__ == "ClientConnectorError" for c in type(e).__mro__):  # aiohttp: no route, refused, unknown name
    return UserError(f"{prefix}cannot reach Cloud Storage ({head})")
  return None


def from_storage(e: BaseException) -> bool:
  """Whether `e` was raised by the object-storage stack (gcsfs, google-auth, aiohttp, tensorstore on gs://), so
  that a generic handler turns only those into storage errors."""
  module = type(e).__module__.split(".")[0]
  text = str(e)
  return (
    module in ("gcsfs", "google", "aiohttp", "fsspec")
    or text.startswith("Forbidden:")
    or "gs://" in text
    or "googleapis.com" in text
    or "/storage/v1/b/" in text
  )


def reason(e: BaseException) -> str:
  """Why a read or write failed, in a few words on one line: the OS's words for a local file, the one-line storage
  error for an object (gcsfs puts the server's message on a second line), else the first line of the error."""
  strerror = getattr(e, "strerror", None)
  if strerror:
    return str(strerror)
  error = storage_error(e) if from_storage(e) else None
  text = str(error if error is not None else e).strip()
  return text.splitlines()[0][:300] if text else type(e).__name__
