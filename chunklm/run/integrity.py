"""Checksums of a checkpoint's files, so that bytes that rot on disk are caught before they are restored.

When a checkpoint's write has completed, `write_manifest` records the SHA-256 of every file of its step directory
in `checksums.json` inside it (so the manifest goes wherever the step goes, deletion included). `verify` recomputes
them before a restore; a missing manifest (a write cut short before it, or a run of an older chunklm) means
"unverified", not "damaged".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "checksums.json"
_CHUNK = 1 << 22


def _digest(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(_CHUNK):
      h.update(block)
  return h.hexdigest()


def _files(step_dir: Path) -> list[Path]:
  return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(step_dir: Path) -> None:
  sums = {p.relative_to(step_dir).as_posix(): _digest(p) for p in _files(step_dir)}
  tmp = step_dir / (MANIFEST + ".tmp")
  tmp.write_text(json.dumps(sums, indent=0, sort_keys=True))
  tmp.replace(step_dir / MANIFEST)  # atomic: a manifest is whole or absent


def verify(step_dir: Path) -> str | None:
  """None if the files match the manifest (or there is none), else what is wrong, in a few words."""
  path = step_dir / MANIFEST
  if not path.exists():
    return None
  try:
    sums = json.loads(path.read_text())
  except (OSError, ValueError):
    return f"{MANIFEST} is unreadable"
  present = {p.relative_to(step_dir).as_posix(): p for p in _files(step_dir)}
  for name, digest in sums.items():
    if name not in present:
      return f"{name} is missing"
    if _digest(present[name]) != digest:
      return f"{name} does not match its checksum"
  return None
