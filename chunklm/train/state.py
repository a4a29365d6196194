"""The train state of a config: the model split into (graphdef, parameters), the optimizer, and the initial state."""

from __future__ import annotations

import functools

import jax
from flax import nnx

from chunklm.config import Config
from chunklm.model.functional import split_model
from chunklm.model.lm import build_model, count_params
from chunklm.train.optim import make_optimizer
from chunklm.train.step import init_train_state


def setup_state(cfg: Config, abstract: bool = False):
  """(graphdef, optimizer, train state, parameter count); `abstract`: the state's leaves are `jax.ShapeDtypeStruct`s
  and nothing is allocated (for compiling a step for devices that are not there)."""
  model = nnx.eval_shape(lambda: build_model(cfg)) if abstract else build_model(cfg)
  num_params = count_params(model)
  graphdef, params = split_model(model)
  tx = make_optimizer(cfg.train, cfg.model, params)
  init = functools.partial(init_train_state, tx=tx, seed=cfg.train.seed)
  return graphdef, tx, jax.eval_shape(init, params) if abstract else init(params), num_params
