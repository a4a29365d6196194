"""A run's parameters as one safetensors file (`chunklm export`) and back into a run directory (`chunklm import`),
so models can be shared without pickles or orbax.

Tensors are named by their path in the model (e.g. `backbone.encoder.blocks.0.mixer.in_proj.kernel`, float32, shapes
as the model holds them); the metadata holds the format tag, the resolved config (YAML), the step, where it came from
and, for a token model, its tokenizer (base64). Import checks every tensor's name and shape against the config's
model and writes a parameters-only run (run/imported.py).
"""

from __future__ import annotations

import base64
import json
import os
import struct
import tempfile

import numpy as np
import safetensors
import safetensors.numpy
from etils import epath

from chunklm.config import Config, dump_yaml, load_config
from chunklm.errors import UserError
from chunklm.model.functional import named_leaves, params_from_named
from chunklm.run.imported import write_params_run
from chunklm.run.trained import abstract_params, open_run
from chunklm.run.workdir import RunDir
from chunklm.storage.paths import is_remote, location

FORMAT = "chunklm-weights-1"


def export_weights(workdir: str | os.PathLike, out: str | os.PathLike) -> tuple[int, int]:
  """Writes the newest checkpoint of `workdir` to `out`; returns (tensors, step)."""
  run = open_run(workdir, log=lambda *a, **k: None)
  tensors = {k: np.ascontiguousarray(np.asarray(v)) for k, v in named_leaves(run.params).items()}
  meta = {"format": FORMAT, "config": dump_yaml(run.cfg), "step": str(run.step), "source": str(workdir)}
  tok = RunDir(workdir).tokenizer
  if run.tokenizer is not None and tok.is_file():
    meta["tokenizer"] = base64.b64encode(tok.read_bytes()).decode("ascii")
  dest = location(out, "--out")
  if is_remote(dest):
    dest.write_bytes(safetensors.numpy.save(tensors, metadata=meta))  # one object, written whole
  else:
    dest.parent.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file(tensors, os.fspath(dest), metadata=meta)
  return len(tensors), run.step


def _remote_metadata(path: epath.Path) -> dict:
  """The metadata of a safetensors object, from its header alone (8 bytes of length, then JSON)."""
  with path.open("rb") as f:
    (length,) = struct.unpack("<Q", f.read(8))
    if length > 100 << 20:
      raise ValueError(f"a header of {length:,} bytes")
    header = json.loads(f.read(length))
  return header.get("__metadata__") or {}


def read_metadata(path: str | os.PathLike) -> dict:
  """The chunklm metadata of a weights file; a one-line UserError for a file that is not one."""
  where = location(path, "weights file")
  if not where.is_file():
    raise UserError(f"{where}: no such weights file")
  try:
    if is_remote(where):
      meta = _remote_metadata(where)
    else:
      with safetensors.safe_open(os.fspath(where), framework="numpy") as f:
        meta = f.metadata() or {}
  except Exception as e:  # noqa: BLE001  (safetensors raises its own error types for files that are not safetensors)
    raise UserError(f"{where}: not a safetensors file ({str(e).strip().splitlines()[0][:160]})") from None
  if meta.get("format") != FORMAT or "config" not in meta:
    raise UserError(
      f"{where}: a safetensors file without chunklm metadata (format {meta.get('format')!r}); only "
      "files written by `chunklm export` can be imported (official H-Net checkpoints: chunklm convert)"
    )
  return meta


def weights_config(path: str | os.PathLike, meta: dict) -> Config:
  with tempfile.TemporaryDirectory() as tmp:
    file = RunDir(tmp).config
    file.write_text(meta["config"])
    try:
      return load_config(file)
    except UserError as e:
      raise UserError(f"{path}: its config does not load here ({e})") from None


def import_weights(path: str | os.PathLike, out: str | os.PathLike) -> epath.Path:
  """Writes the run directory `out` from a file written by export_weights; returns it."""
  meta = read_metadata(path)
  cfg = weights_config(path, meta)
  _, like = abstract_params(cfg)
  try:
    where = location(path)
    tensors = safetensors.numpy.load(where.read_bytes()) if is_remote(where) else safetensors.numpy.load_file(path)
    params = params_from_named(like, tensors, str(path))
  except ValueError as e:
    raise UserError(str(e)) from None
  tokenizer = base64.b64decode(meta["tokenizer"]) if "tokenizer" in meta else None
  origin = {
    "what": f"imported from {path}",
    "weights": str(path),
    "source": meta.get("source", ""),
    "step": int(meta.get("step", 0)),
  }
  return write_params_run(out, cfg, params, int(meta.get("step", 0)), origin, tokenizer)
