"""A run made from parameters alone: weights converted from the official H-Net code (`chunklm convert from-hnet`) or
imported from a safetensors file (`chunklm import`).

It is a run directory like any other for the commands that read a trained model (eval, generate, boundaries,
robustness, classify, `train --init-from`): `config.yaml`, one checkpoint holding the parameters only, and
`origin.json` saying where they came from. It has no optimizer state or data position, so it cannot be resumed:
`chunklm train --workdir` on it is refused with a one-line error pointing to `--init-from`.
"""

from __future__ import annotations

import json
import os

from etils import epath

from chunklm.config import Config, dump_yaml
from chunklm.errors import CheckpointError
from chunklm.run.checkpoint import Checkpointer
from chunklm.run.kind import require_empty
from chunklm.run.workdir import RunDir
from chunklm.storage.objects import check_access
from chunklm.storage.paths import ensure_dir, location


def write_params_run(
  workdir: str | os.PathLike, cfg: Config, params, step: int, origin: dict, tokenizer_bytes: bytes | None = None
) -> epath.Path:
  """Writes the run directory `workdir` (which must not exist or be empty) holding `params` at `step`."""
  where = location(workdir, "--out")
  check_access(where, "--out")
  require_empty(where, "--out", "a run of imported parameters")
  ensure_dir(where)
  run = RunDir(where)
  run.config.write_text(dump_yaml(cfg))
  if tokenizer_bytes is not None:
    run.tokenizer.write_bytes(tokenizer_bytes)
  ckpt = Checkpointer(run.checkpoints, keep=1, asynchronous=False)
  ckpt.save(step, {"params": params}, None, {"step": step, "params_only": True})
  ckpt.close()
  run.origin.write_text(json.dumps(origin, indent=1) + "\n")
  return where


def read_origin(workdir: str | os.PathLike) -> dict | None:
  """Where a parameters-only run's weights came from (None for a trained run)."""
  path = RunDir(workdir).origin
  return json.loads(path.read_text()) if path.is_file() else None


def refuse_resume(workdir: str | os.PathLike) -> None:
  """A one-line CheckpointError when `workdir` holds parameters only (it cannot continue training)."""
  origin = read_origin(workdir)
  if origin is not None:
    raise CheckpointError(
      f"{workdir} holds parameters only ({origin.get('what', 'imported')}), no optimizer state "
      f"or data position, so it cannot be resumed; fine-tune it in a new run: chunklm train "
      f"--init-from {workdir} --config {RunDir(workdir).config} --workdir NEW_DIR"
    )
