"""Checksums of a checkpoint's files, so that bytes that rot or are replaced are caught before they are restored.

When a checkpoint's write has completed, `write_manifest` records a fingerprint of every file of its step directory
in `checksums.json` inside it (so the manifest goes wherever the step goes, deletion included). `verify` compares
them before a restore; a missing manifest (a write cut short before it, or a run of an older chunklm) means
"unverified", not "damaged".

- On a local disk the fingerprint is the file's SHA-256 (the file is read).
- In object storage (`gs://`) it is the object's size and the CRC32C that Cloud Storage computed when the object was
  written, taken from one flat listing of the step: no object is read back (a checkpoint of tens of GB is not
  downloaded to be checked), and no recursive glob is needed. What it catches: objects deleted, truncated or
  replaced since the save; the bytes inside an object are the store's to keep (it checks them on every read).
"""

from __future__ import annotations

import hashlib
import json
import os

from etils import epath

from chunklm.storage.objects import listing
from chunklm.storage.paths import is_remote

MANIFEST = "checksums.json"
_CHUNK = 1 << 22


def _digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(_CHUNK):
      h.update(block)
  return h.hexdigest()


def fingerprints(step_dir: epath.Path) -> dict[str, str]:
  """{file relative to `step_dir`: its fingerprint} for every file of the step but the manifest."""
  if is_remote(step_dir):
    return {
      name: f"crc32c:{o['crc32c']}:{o['size']}"
      for name, o in listing(step_dir).items()
      if name != MANIFEST and not name.endswith("/")
    }
  root = os.fspath(step_dir)
  files = sorted(
    os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names if n != MANIFEST
  )
  return {f: _digest(os.path.join(root, f)) for f in files}


def write_manifest(step_dir: epath.Path) -> None:
  text = json.dumps(fingerprints(step_dir), indent=0, sort_keys=True)
  if is_remote(step_dir):
    (step_dir / MANIFEST).write_text(text)  # one object: whole or absent
    return
  tmp = step_dir / (MANIFEST + ".tmp")
  tmp.write_text(text)
  tmp.replace(step_dir / MANIFEST)  # atomic: a manifest is whole or absent


def verify(step_dir: epath.Path) -> str | None:
  """None if the files match the manifest (or there is none), else what is wrong, in a few words."""
  path = step_dir / MANIFEST
  if not path.exists():
    return None
  try:
    sums = json.loads(path.read_text())
  except (OSError, ValueError):
    return f"{MANIFEST} is unreadable"
  present = fingerprints(step_dir)
  for name, digest in sums.items():
    if name not in present:
      return f"{name} is missing"
    if present[name] != digest:
      return f"{name} does not match its checksum"
  return None
