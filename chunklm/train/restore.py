"""Loading a trained model from a workdir: its saved config and the newest readable checkpoint's parameters."""

from __future__ import annotations

from pathlib import Path

from chunklm.config import Config, load_config
from chunklm.errors import CheckpointError
from chunklm.train.checkpoint import Checkpointer


def load_trained(workdir: Path, log=print) -> tuple[Config, object, dict, int]:
  """(config, graphdef, params, step) of the newest readable checkpoint in `workdir`."""
  from chunklm.train.trainer import setup_state  # local: trainer imports the whole training stack

  if not (workdir / "config.yaml").exists():
    raise CheckpointError(f"{workdir} is not a training run (no config.yaml); train one with "
                          f"`chunklm train --workdir {workdir}`")
  cfg = load_config(workdir / "config.yaml")
  graphdef, _, state, _ = setup_state(cfg)
  ckpt = Checkpointer(workdir / "checkpoints", read_only=True)
  restored = ckpt.restore_latest(state, log=log)
  if restored is None:
    raise CheckpointError(f"no checkpoints in {workdir / 'checkpoints'}")
  step, state, _ = restored
  return cfg, graphdef, state["params"], step
