"""The mesh of the computation being traced, and what the model and the kernels do with it.

A sharded computation is traced under `jax.set_mesh(mesh)` (the trainer and `chunklm bench compile` do this); the
model then reads the mesh here rather than taking it as an argument:
  - `platform()`: the platform of the mesh's devices, so compiling for a TPU slice on a CPU host picks TPU kernels;
  - `constrain_batch(x)`: keeps an activation's rows split over the batch axes (data, fsdp);
  - `gathered_apply(fn, x, w, axes)`: FSDP. Parameters are stored sharded over `fsdp`; a layer's fn(x, w) runs per
    batch shard with w all-gathered inside, so the gradient is reduce-scattered back to the shards
    (`gather_weight`, a sharding constraint with the same intent, serves batches that fsdp does not split);
  - `per_shard(fn, *args)`: runs `fn` on each device's rows (a `shard_map` over the batch axes). Pallas kernels
    cannot be partitioned automatically, so every Pallas chunk op runs this way; the feature axis is replicated.
Without a mesh (or inside a `shard_map`, where the axes are manual) each of these is the identity.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from chunklm.mesh.rules import BATCH_AXES, batch_axes_for, mesh_axes_for

LANES = 128  # the minor dimension of a TPU vector register and memory tile


def traced_mesh():
  """The (abstract) mesh set by `jax.set_mesh`, or None: no mesh, or inside a manual (`shard_map`) region."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1 or any(t == AxisType.Manual for t in mesh.axis_types):
    return None
  return mesh


def platform() -> str:
  """'cpu', 'gpu' or 'tpu': of the devices the computation is placed on (the mesh's, else JAX's default)."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  name = device.platform if device is not None else jax.default_backend()
  return {"cuda": "gpu", "rocm": "gpu"}.get(name, name)


def _batch_spec(x: jax.Array, mesh) -> P | None:
  axes = batch_axes_for(x.shape[0], dict(mesh.shape)) if x.ndim else ()
  return P(axes) if axes else None


def constrain_batch(x: jax.Array) -> jax.Array:
  """x with its leading (batch) dimension split over the batch axes of the traced mesh."""
  mesh = traced_mesh()
  spec = _batch_spec(x, mesh) if mesh is not None else None
  return x if spec is None else jax.lax.with_sharding_constraint(x, spec)


def gather_weight(w: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """w (a parameter with logical `axes`) as the layer uses it: whole along `fsdp`, split along `tensor` as stored.
  Its gradient goes back in the stored layout straight from the layer (a reduce-scatter of the per-chip partial
  sums), not as a whole gradient summed on every chip (an all-reduce) and sliced afterwards."""
  mesh = traced_mesh()
  if mesh is None or dict(mesh.shape).get("fsdp", 1) == 1:
    return w
  shape = dict(mesh.shape)
  return _gathered(P(*mesh_axes_for(axes, w.shape, shape)), P(*mesh_axes_for(axes, w.shape, shape, drop=("fsdp",))), w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _gathered(stored: P, used: P, w: jax.Array) -> jax.Array:
  return jax.lax.with_sharding_constraint(w, used)


def _gathered_fwd(stored, used, w):
  return _gathered(stored, used, w), None


def _gathered_bwd(stored, used, _, g):
  return (jax.lax.with_sharding_constraint(g, stored),)


_gathered.defvjp(_gathered_fwd, _gathered_bwd)


def gathered_apply(fn: Callable, x: jax.Array, w: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """fn(x, w) with w (a parameter with logical `axes`) whole and x batch-first: FSDP. Under a mesh whose `fsdp` axis
  splits w, the call runs on each device's rows with the weight all-gathered over `fsdp` inside (a `shard_map`,
  manual over data and fsdp; `tensor` stays automatic), so the weight's gradient leaves as a reduce-scatter of the
  per-device partial sums (as blocks that keep each shard contiguous where `tensor` does not split w:
  `_gather_scatter_blocks`). Rows the batch axes do not split fall back to `gather_weight`."""
  mesh = traced_mesh()
  shape = dict(mesh.shape) if mesh is not None else {}
  stored = mesh_axes_for(axes, w.shape, shape) if shape.get("fsdp", 1) > 1 else ()
  if "fsdp" not in stored:
    return fn(x, w)
  rows = batch_axes_for(x.shape[0], shape)
  if "fsdp" not in rows:
    return fn(x, gather_weight(w, axes))
  manual = frozenset(a for a in BATCH_AXES if a in shape)
  dim = stored.index("fsdp")
  # as blocks only where no other mesh axis splits w: a reshape across a `tensor`-split dimension would regather it
  blocks = w.size // shape["fsdp"] % LANES == 0 and all(a in (None, "fsdp") or shape[a] == 1 for a in stored)
  summed = tuple(a for a in rows if a != "fsdp")  # the other axes that split the rows: data

  def body(x_local, w_local):
    if blocks:
      return fn(x_local, _gather_scatter_blocks(w_local, dim, summed))
    return fn(x_local, jax.lax.all_gather(w_local, "fsdp", axis=dim, tiled=True))

  return jax.shard_map(
    body,
    mesh=mesh,
    in_specs=(P(rows), P(*(a if a in manual else None for a in stored))),
    out_specs=P(rows),
    axis_names=manual,
  )(x, w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _gather_scatter_blocks(w_local: jax.Array, dim: int, summed: tuple[str, ...]) -> jax.Array:
  """The whole weight from this device's shard `w_local` (split along `dim` over `fsdp`), for rows that the other
  batch axes `summed` (data) split too. Its gradient is reduce-scattered over `fsdp` as blocks of shape
  (fsdp, shard size / LANES, LANES), one per shard, and then only this shard is summed over `summed`.

  Left to autodiff (the transpose of the all-gather along `dim`), the reduce-scatter runs along `dim` in whatever
  layout the TPU compiler gives the gradient for the matmul that makes it; where `dim` is the minor (lane)
  dimension there, each shard is strided in memory and the compiler lowers the reduce-scatter to an all-reduce of
  the whole gradient, sliced afterwards: on v5p:2x2x2 with data 2 x fsdp 4 it did so for the 4-D attention QKV
  weights and stage 0's Mamba2 in/out projections of hnet_2stage_S. A block's leading axis is major and outside the
  (sublane, lane) tile, so every shard is one contiguous block; only the gradient is relaid out for it."""
  return jax.lax.pcast(jax.lax.all_gather(w_local, "fsdp", axis=dim, tiled=True), summed, to="varying")


def _gather_scatter_blocks_fwd(w_local, dim, summed):
  return _gather_scatter_blocks(w_local, dim, summed), None


def _gather_scatter_blocks_bwd(dim, summed, _, g):
  g_first = jnp.moveaxis(g, dim, 0)  # the split dimension first: shard i is the i-th contiguous run of elements
  blocks = g_first.reshape(jax.lax.axis_size("fsdp"), -1, LANES)
  shard = jax.lax.psum_scatter(blocks, "fsdp", scatter_dimension=0, tiled=True)
  shard = jax.lax.psum(shard, summed) if summed else shard
  return (jnp.moveaxis(shard.reshape(-1, *g_first.shape[1:]), 0, dim),)


_gather_scatter_blocks.defvjp(_gather_scatter_blocks_fwd, _gather_scatter_blocks_bwd)


def per_shard(fn: Callable, *args: jax.Array):
  """fn(*args) run on each device's rows: every argument and output has the batch as its leading dimension. Rows
  that the batch axes do not divide are replicated (every device computes all of them)."""
  mesh = traced_mesh()
  if mesh is None:
    return fn(*args)
  spec = _batch_spec(args[0], mesh) or P()
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * len(args), out_specs=spec, check_vma=False)(*args)
