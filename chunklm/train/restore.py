"""Loading a trained model from a workdir: its saved config and the newest readable checkpoint's parameters."""

from __future__ import annotations

from pathlib import Path

from chunklm.config import Config, load_config
from chunklm.errors import CheckpointError
from chunklm.train.checkpoint import Checkpointer

TOKENIZER_FILE = "tokenizer.model"  # a token model's run keeps a copy of its tokenizer here


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


def run_tokenizer(cfg: Config, workdir: Path | None = None):
  """The run's tokenizer (None for byte models): the workdir's copy if it has one, else `data.tokenizer`.

  Raises DataError for a missing/unreadable file and ConfigError when its vocabulary does not fit the model.
  """
  if not cfg.data.tokenizer:
    return None
  from chunklm.data.tokenizer import Tokenizer, check_vocab
  copy = workdir / TOKENIZER_FILE if workdir is not None else None
  tok = Tokenizer(copy if copy is not None and copy.exists() else cfg.data.tokenizer)
  check_vocab(tok, cfg.model.vocab_size)
  return tok

