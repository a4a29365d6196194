"""Loading a trained model from a workdir: its saved config and the newest readable checkpoint's parameters."""

from __future__ import annotations

from pathlib import Path

from chunklm.config import Config, load_config
from chunklm.errors import CheckpointError, UserError
from chunklm.train.checkpoint import Checkpointer

TOKENIZER_FILE = "tokenizer.model"  # a token model's run keeps a copy of its tokenizer here


def load_trained(workdir: Path, log=print, overrides: tuple[str, ...] = ()) -> tuple[Config, object, dict, int]:
  """(config, graphdef, params, step) of the newest readable checkpoint in `workdir`.

  `overrides` (dotted KEY=VALUE) change the saved config before the model is built, for settings that keep the
  parameters (e.g. model.delete_gate_keep_all, model.capacity_factor, kernels.impl); one that changes them is a
  UserError naming the parameters it would change.
  """
  from chunklm.train.trainer import setup_state  # local: trainer imports the whole training stack

  if not (workdir / "config.yaml").exists():
    raise CheckpointError(f"{workdir} is not a training run (no config.yaml); train one with "
                          f"`chunklm train --workdir {workdir}`")
  cfg = load_config(workdir / "config.yaml", list(overrides))
  if overrides:
    _check_same_parameters(load_config(workdir / "config.yaml"), cfg, overrides)
  graphdef, _, state, _ = setup_state(cfg)
  ckpt = Checkpointer(workdir / "checkpoints", read_only=True)
  restored = ckpt.restore_latest(state, log=log)
  if restored is None:
    raise CheckpointError(f"no checkpoints in {workdir / 'checkpoints'}")
  step, state, _ = restored
  return cfg, graphdef, state["params"], step


def _param_shapes(cfg: Config) -> dict[str, tuple]:
  import jax
  from flax import nnx

  from chunklm.model.lm import build_model
  from chunklm.train.step import split_model

  _, params = split_model(nnx.eval_shape(lambda: build_model(cfg)))
  return {jax.tree_util.keystr(path): (leaf.shape, str(leaf.dtype))
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def _check_same_parameters(saved: Config, changed: Config, overrides) -> None:
  before, after = _param_shapes(saved), _param_shapes(changed)
  differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
  if differ:
    raise UserError(f"--set {' '.join(overrides)} changes the trained model's parameters ({len(differ)} differ, "
                    f"e.g. {differ[0]}); only settings that keep them can change after training, e.g. "
                    f"model.delete_gate_keep_all, model.capacity_factor, kernels.impl")


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

