"""The device mesh of a run, and the placement of its train state and batches on it.

Axis names and the logical-axis rules are `chunklm.mesh.rules`'. Parameters are placed by their logical axes;
optimizer moments like their parameters; batches are split over (data, fsdp), and on several hosts each process
supplies its own rows (`jax.make_array_from_process_local_data`). Everything here works on an abstract state
(`jax.ShapeDtypeStruct` leaves) as well, so a step can be compiled for devices that are not there.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from chunklm.config import MeshConfig
from chunklm.errors import ConfigError
from chunklm.mesh.memory import GIB, device_memory
from chunklm.mesh.rules import AXES, BATCH_AXES, mesh_axes_for


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
  devices = devices if devices is not None else jax.devices()
  n = len(devices)
  data = cfg.data if cfg.data > 0 else n // (cfg.fsdp * cfg.tensor)
  if data < 1 or data * cfg.fsdp * cfg.tensor != n:
    raise ConfigError(
      f"mesh: data={cfg.data} x fsdp={cfg.fsdp} x tensor={cfg.tensor} does not match the {n} "
      "available device(s); use data=-1 to take the remaining devices"
    )
  return jax.make_mesh((data, cfg.fsdp, cfg.tensor), AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def spec_for(axes: tuple, shape: tuple[int, ...], mesh: Mesh) -> P:
  """PartitionSpec for a parameter with logical `axes`; mesh axes used twice or not dividing a dim are dropped."""
  return P(*mesh_axes_for(axes, shape, mesh.shape))


def param_shardings(params: nnx.State, mesh: Mesh):
  """NamedShardings for a params tree (leaves inside nnx.Param carry their logical axes)."""

  def one(var):
    shape = np.shape(var.get_value())  # a ShapeDtypeStruct in an abstract state: its shape, never its values
    axes = var.get_metadata().get("out_sharding") or (None,) * len(shape)
    return var.replace(NamedSharding(mesh, spec_for(axes, shape, mesh)))

  return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state: dict, mesh: Mesh) -> dict:
  """Shardings for the train state: params by the rules, optimizer moments (trees shaped like the params) like
  their params, everything else (step, counts, RNG) replicated."""
  p_shard = param_shardings(state["params"], mesh)
  params_def = jax.tree.structure(state["params"])
  replicated = NamedSharding(mesh, P())

  def is_params_like(x):
    return jax.tree.structure(x) == params_def  # type: ignore[operator]  # PyTreeDef has __eq__; its stub hides it

  def place(sub):
    return p_shard if is_params_like(sub) else jax.tree.map(lambda _: replicated, sub)

  opt = jax.tree.map(place, state["opt_state"], is_leaf=is_params_like)
  return {"step": replicated, "params": p_shard, "opt_state": opt, "rng": replicated}


def check_state_fits(abstract_state: dict, shardings: dict, num_params: int) -> None:
  """One line instead of an out-of-memory crash when the train state alone (parameters and optimizer state, as
  sharded) cannot fit on a device; activations come on top, so passing this is necessary, not sufficient."""
  per_device = sum(
    math.prod(sh.shard_shape(np.shape(x))) * np.dtype(x.dtype).itemsize
    for x, sh in zip(jax.tree.leaves(abstract_state), jax.tree.leaves(shardings))
  )
  limit, where = device_memory()
  if limit and per_device > limit:
    raise ConfigError(
      f"the model's parameters and optimizer state need {per_device / GIB:.1f} GiB per device "
      f"({num_params / 1e6:,.0f} M parameters) but {where} {limit / GIB:.1f} GiB; make the model smaller "
      "(model.d_model, the layout) or shard it over more devices with mesh.fsdp"
    )


def put_abstract(x, sharding: NamedSharding) -> jax.ShapeDtypeStruct:
  """The abstract counterpart of `jax.device_put`: x's shape and dtype, placed by `sharding` (nothing allocated)."""
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
  """How many ways a batch is split (its size must be a multiple of this)."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def process_count(mesh: Mesh) -> int:
  """How many processes (hosts) hold the mesh's devices: jax.process_count() for a run, the target's for a compile."""
  return len({d.process_index for d in mesh.devices.flat})


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
  """The global batch must split evenly over the batch shards (data x fsdp) and over the processes feeding them."""
  shards, procs = batch_shards(mesh), process_count(mesh)
  if batch_size % shards or batch_size % procs:
    raise ConfigError(
      f"{what} {batch_size} is not divisible by the {shards} batch shards of the mesh (data "
      f"{mesh.shape['data']} x fsdp {mesh.shape['fsdp']}) and by its {procs} process(es)"
    )


def on_mesh(fn, mesh: Mesh):
  """fn called (and so traced) under `jax.set_mesh(mesh)`: the model's activation constraints, weight gathers and
  per-shard Pallas kernels read the mesh from there (`chunklm.mesh.context`)."""

  @functools.wraps(fn)
  def call(*args, **kwargs):
    with jax.set_mesh(mesh):
      return fn(*args, **kwargs)

  return call


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """Assembles the global batch from this process's rows, split over the batch axes of the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def local_rows(batch: dict) -> dict:
  """This process's share of a batch that every process holds in full (evaluation)."""
  n, i = jax.process_count(), jax.process_index()
  return {k: v[i * len(v) // n : (i + 1) * len(v) // n] for k, v in batch.items()}
