"""The functional view of a model: a graph definition and a pytree of its variables, for jit, orbax and sharding.

Models hold nothing but parameters (`nnx.Param`) and the routers' running statistics (`RouterStat`), so one
`params` pytree carries the whole model; `merge_model` rebuilds the module inside a traced function.
"""

from __future__ import annotations

import jax
from flax import nnx

from chunklm.model.routing import RouterStat
from chunklm.model.stage_output import StageOutput


def split_model(model: nnx.Module):
  """(graphdef, params) in tree mode; the models hold nothing but parameters and router statistics."""
  graphdef, params, *rest = nnx.split(model, (nnx.Param, RouterStat), ..., graph=False)
  if rest and jax.tree.leaves(rest[0]):
    raise ValueError("model holds non-parameter state; the training step only carries nnx.Param and RouterStat")
  return graphdef, params


def merge_model(graphdef, params) -> nnx.Module:
  return nnx.merge(graphdef, params)


def apply(model: nnx.Module, batch: dict, **kwargs) -> tuple[jax.Array, tuple[StageOutput, ...]]:
  """The model on a batch dict (ids, segment_ids, positions): (logits, H-Net stage records)."""
  return model(batch["ids"], batch["segment_ids"], batch["positions"], **kwargs)


def forward(graphdef, params, batch: dict, *, exact: bool = False, train: bool = False, rng=None,
            with_stats: bool = False):
  """(logits, stages); with_stats adds the routers' updated statistics (an nnx.State) as a third value."""
  model = merge_model(graphdef, params)
  logits, stages = apply(model, batch, exact=exact, train=train, rng=rng)
  if with_stats:
    return logits, stages, nnx.state(model, RouterStat)
  return logits, stages
