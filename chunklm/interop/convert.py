"""`chunklm convert from-hnet | to-hnet`: official H-Net checkpoints (PyTorch state dict + config JSON) to a chunklm
run directory and back, bit for bit (float32 weights round-trip exactly; bfloat16 ones are widened to float32 and
narrowed back exactly).

A converted run has `model.compat: official` (the official code's numerics, see the README) and the paper's
training targets (6-DC for 1 stage, (3,3)-DC for 2); every command that reads a trained run accepts it, and
`chunklm train --init-from` fine-tunes it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
from etils import epath

from chunklm.config import MAX_TEXT, Config, Refused, load_config, load_json
from chunklm.errors import UserError
from chunklm.interop.hnet_official import (
  check_exportable,
  model_from_official,
  official_config,
  to_chunklm,
  to_official,
)
from chunklm.interop.torch_files import load_state_dict, save_state_dict
from chunklm.interop.weights import new_dir
from chunklm.model.functional import named_leaves, params_from_named
from chunklm.run.imported import write_params_run
from chunklm.run.trained import abstract_params, open_run
from chunklm.storage.paths import ensure_dir, location


def read_official_config(path: str | os.PathLike) -> dict:
  """The official config JSON at `path`: JSON chunklm did not write (config.untrusted), at most 1 MiB; its fields are
  checked by model_from_official."""
  where = location(path, "--config")
  if not where.is_file():
    raise UserError(f"{where}: no such config file")
  try:
    with where.open("rb") as f:
      data = f.read(MAX_TEXT + 1)  # no more: a huge file is refused without reading it all
  except OSError as e:
    raise UserError(f"{where}: cannot read it ({e.strerror or e})") from None
  if len(data) > MAX_TEXT:
    raise UserError(f"{where}: over the {MAX_TEXT:,} bytes an official config may have; not a config JSON")
  try:
    return load_json(data)
  except Refused as e:
    raise UserError(f"{where}: not JSON{e.mark}: {e.problem}" if e.syntax else f"{where}: {e}") from None


def official_params(state: dict[str, np.ndarray], js: dict, base: Config, where: str):
  """(config, params) of the chunklm model holding an official state dict with config `js`."""
  cfg = dataclasses.replace(base, model=model_from_official(js, where))
  _, like = abstract_params(cfg)
  named = to_chunklm(state, cfg.model, {k: v.shape for k, v in named_leaves(like).items()}, where)
  return cfg, params_from_named(like, named, where)


def from_hnet(
  checkpoint: str | os.PathLike, config: str | os.PathLike, out: str | os.PathLike, base: Config | None = None
) -> epath.Path:
  """Writes the run directory `out` from an official checkpoint; returns it."""
  js = read_official_config(config)
  model_from_official(js, str(config))  # a bad config or --out fails before the (large) checkpoint is read
  new_dir(out)
  state, dtype = load_state_dict(checkpoint)
  cfg, params = official_params(state, js, base or load_config(None), str(checkpoint))
  digest = hashlib.sha256(location(checkpoint).read_bytes()).hexdigest()
  origin = {
    "what": f"converted from the official H-Net checkpoint {checkpoint}",
    "checkpoint": str(checkpoint),
    "checkpoint_sha256": digest,
    "checkpoint_dtype": dtype,
    "official_config": js,
  }
  return write_params_run(out, cfg, params, 0, origin)


def to_hnet(
  workdir: str | os.PathLike, out: str | os.PathLike, dtype: str = "float32"
) -> tuple[epath.Path, epath.Path]:
  """Writes `out`/model.pt and `out`/config.json for the official code from a chunklm H-Net run; returns both."""
  dest = new_dir(out)
  run = open_run(workdir, log=lambda *a, **k: None)
  check_exportable(run.cfg.model)
  ensure_dir(dest)
  named = {k: np.asarray(v) for k, v in named_leaves(run.params).items()}
  pt, js = dest / "model.pt", dest / "config.json"
  save_state_dict(pt, to_official(named, run.cfg.model), dtype)
  js.write_text(json.dumps(official_config(run.cfg.model), indent=4) + "\n")
  return pt, js
