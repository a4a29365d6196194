"""Every path chunklm takes or writes, local or in Cloud Storage, as one type: `etils.epath.Path`.

`location("runs/x")` is a local path and `location("gs://bucket/run")` an object prefix in a bucket; both have the
pathlib methods (`/`, `name`, `exists`, `read_text`, `write_bytes`, `iterdir`, `mkdir`, `glob`, ...), which epath
maps to the OS or to gcsfs, and orbax writes checkpoints through the same type. Anything else with a scheme
(`s3://`, `hdfs://`, `http://`) is a one-line UserError: mount such storage and pass the mount's path.

What an object store lacks and a disk has (appends, renames, locks, free space) is asked for with `is_remote`, so the
callers that care (run/lock.py, run/metrics.py, run/checkpoint.py) take another route there.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pathlib
import re

from etils import epath

from chunklm.errors import UserError

# gcsfs (2026.x) asks a gRPC control plane for each bucket's layout, which an emulator does not serve (a minute of
# retries per bucket); chunklm reads and writes flat and hierarchical buckets alike through the JSON API
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# gcsfs logs each request that ran out of retries with its traceback, and google-auth each credential source it
# tried, before the error reaches chunklm, which says it in one line (storage/objects.py: storage_error)
logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
logging.getLogger("google.auth").setLevel(logging.ERROR)

REMOTE_SCHEMES = ("gs",)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_ONE_SLASH = re.compile(r"^(gs|gcs|s3|file|https?|hdfs|az|abfs):/+(?=[^/])")


def location(value: str | os.PathLike, what: str = "path") -> epath.Path:
  """The path `value` names: local, or `gs://bucket/prefix`; `what` (e.g. "--workdir") names it in errors."""
  if isinstance(value, epath.Path) and is_remote(value):
    return value
  text = os.fspath(value)
  scheme, sep, rest = text.partition("://")
  if not sep:
    if typo := _ONE_SLASH.match(text):  # pathlib's str() of a URL, or a typo: would make a local folder "gs:"
      raise UserError(f"{what} {text}: did you mean {typo.group(1)}://{text[typo.end() :]}?")
    return epath.Path(text)
  if scheme == "file":
    return epath.Path(rest)
  if scheme not in REMOTE_SCHEMES:
    raise UserError(
      f"{what} {text}: {scheme}:// is not supported; chunklm reads and writes local paths and gs:// URLs "
      "(mount other storage, e.g. with mountpoint-s3, and pass the mount's path)"
    )
  bucket = rest.split("/", 1)[0]
  if not _BUCKET.match(bucket):
    raise UserError(f"{what} {text}: {bucket!r} is not a Cloud Storage bucket name")
  if importlib.util.find_spec("gcsfs") is None:
    raise UserError(f"{what} {text}: gs:// paths need gcsfs: pip install 'chunklm[gcs]'")
  return epath.Path(f"{scheme}://{rest.rstrip('/')}")


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` is in object storage (no appends, renames, locks or free space)."""
  return os.fspath(path).startswith(tuple(f"{s}://" for s in REMOTE_SCHEMES))


def bucket_of(path: epath.Path) -> str:
  """The URL of the bucket `path` is in (`gs://bucket`)."""
  scheme, _, rest = os.fspath(path).partition("://")
  return f"{scheme}://{rest.split('/', 1)[0]}"


def ensure_dir(path: epath.Path) -> None:
  """Makes the directory `path` with its parents; nothing in object storage, where a prefix needs no making (and
  gcsfs's mkdir would create a missing bucket instead of failing)."""
  if not is_remote(path):
    path.mkdir(parents=True, exist_ok=True)


def local_path(value: str | os.PathLike, what: str, command: str) -> pathlib.Path:
  """`value` as a local path, for the outputs that are not written to object storage yet (`compare` and
  `mrt5 compare` keep their runs and report in a local directory); a gs:// URL is a one-line UserError."""
  where = location(value, what)
  if is_remote(where):
    raise UserError(
      f"{what} {value}: {command} keeps its runs and report in a local directory; pass a local path and copy the "
      "result to the bucket after (its runs are ordinary run directories)"
    )
  return pathlib.Path(os.fspath(where))
