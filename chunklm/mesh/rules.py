"""Mesh axis names and the rules that map a parameter's logical axes onto them.

Mesh axes: `data` (batch only), `fsdp` (batch and parameter shards), `tensor` (model dimensions). Every parameter
carries logical axis names (model/layers.py); RULES maps each to a mesh axis. A dimension that its mesh axis does not
divide stays replicated, and a mesh axis is used at most once per parameter, so any config runs on any mesh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # a batch's rows are split over these, in this order
RULES = {
  "vocab": "tensor",
  "embed": "fsdp",
  "embed_out": None,
  "mlp": "tensor",
  "heads": "tensor",
  "kv": None,
  "ssm_inner": "tensor",
  "ssm_heads": None,
  "ssm_state": None,
  "conv": None,
  "norm": None,
}


def mesh_axes_for(
  axes: Sequence[str | None], shape: Sequence[int], mesh_shape: Mapping[str, int], drop: Sequence[str] = ()
) -> tuple[str | None, ...]:
  """The mesh axis of each dimension of a parameter with logical `axes` (None: replicated); mesh axes in `drop` are
  left out (e.g. `fsdp` for the gathered copy of a weight)."""
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
  out: list[str | None] = []
  used: set[str] = set()
  for name, dim in zip(axes, shape):
    mesh_axis = RULES.get(name) if name is not None else None
    if mesh_axis is None or mesh_axis in drop or mesh_axis in used or dim % mesh_shape.get(mesh_axis, 1):
      out.append(None)
    else:
      out.append(mesh_axis)
      used.add(mesh_axis)
  return tuple(out)


def batch_axes_for(rows: int, mesh_shape: Mapping[str, int]) -> tuple[str, ...]:
  """The batch axes (of size > 1) that split `rows` rows: all of them when their product divides `rows`, else the
  longest leading run that does (possibly none: the rows are replicated)."""
  axes = tuple(a for a in BATCH_AXES if mesh_shape.get(a, 1) > 1)
  while axes:
    size = 1
    for a in axes:
      size *= mesh_shape[a]
    if rows % size == 0:
      return axes
    axes = axes[:-1]
  return ()
