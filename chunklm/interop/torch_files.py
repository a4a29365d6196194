"""PyTorch state-dict files (`.pt`), read without running pickled code: `torch.load(weights_only=True)` accepts
tensors and plain containers only, so a file holding anything else (a pickled class, code) is refused with one line.
torch is an optional dependency (`pip install 'chunklm[torch]'`); only these two functions import it."""

from __future__ import annotations

import io
import os

import numpy as np

from chunklm.errors import UserError
from chunklm.storage.paths import is_remote, location

DTYPES = ("float32", "bfloat16")


def _torch():
  try:
    import torch  # the optional extra chunklm[torch]: only .pt files need it
  except ImportError:
    raise UserError("reading or writing PyTorch .pt files needs torch: pip install 'chunklm[torch]'") from None
  return torch


def load_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
  """({name: float32 array}, the file's floating dtype) of a state dict of tensors."""
  torch = _torch()
  where = location(path, "checkpoint")
  if not where.is_file():
    raise UserError(f"{where}: no such checkpoint file")
  try:
    source = io.BytesIO(where.read_bytes()) if is_remote(where) else os.fspath(where)
    obj = torch.load(source, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001  (UnpicklingError for non-tensor content, RuntimeError for non-zip files)
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise UserError(f"{where}: not a file of tensors only (refused to load it: {first})") from None
  if isinstance(obj, dict) and set(obj) == {"model"} and isinstance(obj["model"], dict):
    obj = obj["model"]
  if not isinstance(obj, dict) or not obj:
    raise UserError(f"{where}: holds a {type(obj).__name__}, not a state dict of tensors")
  bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
  if bad:
    raise UserError(f"{where}: entry {bad[0]!r} is not a named tensor; only state dicts of tensors are read")
  floats = {str(v.dtype).removeprefix("torch.") for v in obj.values() if v.is_floating_point()}
  dtype = "bfloat16" if "bfloat16" in floats else "float32"
  return {k: v.detach().to(torch.float32).numpy() for k, v in obj.items()}, dtype


def save_state_dict(path: str | os.PathLike, tensors: dict[str, np.ndarray], dtype: str = "float32") -> None:
  """Writes {name: array} as a PyTorch state dict in `dtype` (one of DTYPES)."""
  torch = _torch()
  want = getattr(torch, dtype)
  buf = io.BytesIO()
  torch.save({k: torch.from_numpy(np.array(v, np.float32)).to(want) for k, v in tensors.items()}, buf)  # copies
  location(path).write_bytes(buf.getvalue())
