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


def path_name(path: tuple) -> str:
  """The dotted name of a parameter from its tree path (without the trailing `.value` of an nnx variable), e.g.
  `backbone.encoder.blocks.0.mixer.in_proj.kernel`: the names weight files and freeze globs use."""
  names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
  if names and names[-1] == "value":
    names = names[:-1]
  return ".".join(names)


def named_leaves(params) -> dict:
  """{dotted name: leaf} of a params pytree, in tree order."""
  return {path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def params_from_named(like, named: dict, where: str):
  """The params pytree shaped as `like` (arrays or ShapeDtypeStructs) from {dotted name: array}: every name of
  `like` must be there with its shape (cast to its dtype), and nothing else; else a ValueError naming the tensors
  (`where` says what was read)."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(like)
  names = [path_name(p) for p, _ in flat]
  missing, extra = [n for n in names if n not in named], sorted(set(named) - set(names))
  if missing or extra:
    raise ValueError(
      f"{where} does not fit this model: {len(missing)} tensors missing ({', '.join(missing[:3]) or '-'}"
      f"{', ...' if len(missing) > 3 else ''}), {len(extra)} unexpected ({', '.join(extra[:3]) or '-'}"
      f"{', ...' if len(extra) > 3 else ''})"
    )
  leaves = []
  for name, (_, want) in zip(names, flat):
    got = named[name]
    if tuple(got.shape) != tuple(want.shape):
      raise ValueError(f"{where}: tensor {name} has shape {list(got.shape)}, the model needs {list(want.shape)}")
    leaves.append(jax.numpy.asarray(got, dtype=want.dtype))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def merge_model(graphdef, params) -> nnx.Module:
  return nnx.merge(graphdef, params)


def apply(model: nnx.Module, batch: dict, **kwargs) -> tuple[jax.Array, tuple[StageOutput, ...]]:
  """The model on a batch dict (ids, segment_ids, positions): (logits, H-Net stage records)."""
  return model(batch["ids"], batch["segment_ids"], batch["positions"], **kwargs)


def forward(
  graphdef, params, batch: dict, *, exact: bool = False, train: bool = False, rng=None, with_stats: bool = False
):
  """(logits, stages); with_stats adds the routers' updated statistics (an nnx.State) as a third value."""
  model = merge_model(graphdef, params)
  logits, stages = apply(model, batch, exact=exact, train=train, rng=rng)
  if with_stats:
    return logits, stages, nnx.state(model, RouterStat)
  return logits, stages
