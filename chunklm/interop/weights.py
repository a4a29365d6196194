"""A run's parameters as one safetensors file (`chunklm export`) and back into a run directory (`chunklm import`),
so models can be shared without pickles or orbax.

Tensors are named by their path in the model (e.g. `backbone.encoder.blocks.0.mixer.in_proj.kernel`, float32, shapes
as the model holds them); the metadata holds the format tag, the resolved config (YAML), the step, where it came from
and, for a token model, its tokenizer (base64). Import checks every tensor's name and shape against the config's
model and writes a parameters-only run (run/imported.py).
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from chunklm.config import Config, dump_yaml, load_config
from chunklm.errors import UserError
from chunklm.model.functional import named_leaves, params_from_named
from chunklm.run.imported import write_params_run
from chunklm.run.trained import abstract_params, open_run
from chunklm.run.workdir import RunDir

FORMAT = "chunklm-weights-1"


def export_weights(workdir: str | Path, out: str | Path) -> tuple[int, int]:
  """Writes the newest checkpoint of `workdir` to `out`; returns (tensors, step)."""
  run = open_run(workdir, log=lambda *a, **k: None)
  tensors = {k: np.ascontiguousarray(np.asarray(v)) for k, v in named_leaves(run.params).items()}
  meta = {"format": FORMAT, "config": dump_yaml(run.cfg), "step": str(run.step), "source": str(workdir)}
  tok = RunDir(workdir).tokenizer
  if run.tokenizer is not None and tok.is_file():
    meta["tokenizer"] = base64.b64encode(tok.read_bytes()).decode("ascii")
  Path(out).parent.mkdir(parents=True, exist_ok=True)
  safetensors.numpy.save_file(tensors, str(out), metadata=meta)
  return len(tensors), run.step


def read_metadata(path: str | Path) -> dict:
  """The chunklm metadata of a weights file; a one-line UserError for a file that is not one."""
  path = Path(path)
  if not path.is_file():
    raise UserError(f"{path}: no such weights file")
  try:
    with safetensors.safe_open(str(path), framework="numpy") as f:
      meta = f.metadata() or {}
  except Exception as e:  # noqa: BLE001  (safetensors raises its own error types for files that are not safetensors)
    raise UserError(f"{path}: not a safetensors file ({str(e).strip().splitlines()[0][:160]})") from None
  if meta.get("format") != FORMAT or "config" not in meta:
    raise UserError(
      f"{path}: a safetensors file without chunklm metadata (format {meta.get('format')!r}); only "
      "files written by `chunklm export` can be imported (official H-Net checkpoints: chunklm convert)"
    )
  return meta


def weights_config(path: str | Path, meta: dict) -> Config:
  with tempfile.TemporaryDirectory() as tmp:
    file = RunDir(tmp).config
    file.write_text(meta["config"])
    try:
      return load_config(file)
    except UserError as e:
      raise UserError(f"{path}: its config does not load here ({e})") from None


def import_weights(path: str | Path, out: str | Path) -> Path:
  """Writes the run directory `out` from a file written by export_weights; returns it."""
  meta = read_metadata(path)
  cfg = weights_config(path, meta)
  _, like = abstract_params(cfg)
  try:
    params = params_from_named(like, safetensors.numpy.load_file(str(path)), str(path))
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
