"""What several command bodies write: the --json file of a command's figures."""

from __future__ import annotations

import json

from chunklm import logs
from chunklm.errors import UserError
from chunklm.storage.objects import reason
from chunklm.storage.paths import ensure_dir, location


def write_json(path: str | None, obj) -> None:
  """`obj` as indented JSON at `path` (nothing when None): NumPy/JAX scalars and arrays become numbers and lists,
  paths and other objects their text. A path that cannot be written is one line."""
  if path is None:
    return

  def plain(x):
    if hasattr(x, "tolist"):
      return x.tolist()
    return str(x)

  where = location(path, "--json")
  try:
    ensure_dir(where.parent)
    where.write_text(json.dumps(obj, indent=1, default=plain) + "\n")
  except OSError as e:
    raise UserError(f"--json {path}: {reason(e)}") from None
  logs.info(f"wrote {path}")
