"""Device mesh and the rules that place parameters and batches on it.

Mesh axes: `data` (batch only), `fsdp` (batch and parameter shards), `tensor` (model dimensions). Every parameter
carries logical axis names (see model/layers.py); RULES maps each to a mesh axis. A dimension that the mesh axis
does not divide stays replicated, so any config runs on any mesh. Batches are split over (data, fsdp); on several
hosts each process supplies its own rows (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from chunklm.config import MeshConfig
from chunklm.errors import ConfigError

AXES = ("data", "fsdp", "tensor")
RULES = {
    "vocab": "tensor", "embed": "fsdp", "embed_out": None, "mlp": "tensor", "heads": "tensor", "kv": None,
    "ssm_inner": "tensor", "ssm_heads": None, "ssm_state": None, "conv": None, "norm": None,
}
BATCH_AXES = ("data", "fsdp")


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
  devices = devices if devices is not None else jax.devices()
  n = len(devices)
  data = cfg.data if cfg.data > 0 else n // (cfg.fsdp * cfg.tensor)
  if data < 1 or data * cfg.fsdp * cfg.tensor != n:
    raise ConfigError(f"mesh: data={cfg.data} x fsdp={cfg.fsdp} x tensor={cfg.tensor} does not match the {n} "
                      "available device(s); use data=-1 to take the remaining devices")
  return jax.make_mesh((data, cfg.fsdp, cfg.tensor), AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def spec_for(axes: tuple, shape: tuple[int, ...], mesh: Mesh) -> P:
  """PartitionSpec for a parameter with logical `axes`; mesh axes used twice or not dividing a dim are dropped."""
  out, used = [], set()
  for name, dim in zip(axes, shape):
    mesh_axis = RULES.get(name) if name is not None else None
    if mesh_axis is None or mesh_axis in used or dim % mesh.shape[mesh_axis]:
      out.append(None)
    else:
      out.append(mesh_axis)
      used.add(mesh_axis)
  return P(*out)


def param_shardings(params: nnx.State, mesh: Mesh):
  """NamedShardings for a params tree (leaves inside nnx.Param carry their logical axes)."""
  def one(var):
    axes = var.get_metadata().get("out_sharding") or (None,) * np.ndim(var[...])
    return var.replace(NamedSharding(mesh, spec_for(axes, np.shape(var[...]), mesh)))
  return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state: dict, mesh: Mesh) -> dict:
  """Shardings for the train state: params by the rules, optimizer moments (trees shaped like the params) like
  their params, everything else (step, counts, RNG) replicated."""
  p_shard = param_shardings(state["params"], mesh)
  params_def = jax.tree.structure(state["params"])
  replicated = NamedSharding(mesh, P())

  def is_params_like(x):
    return jax.tree.structure(x) == params_def

  def place(sub):
    return p_shard if is_params_like(sub) else jax.tree.map(lambda _: replicated, sub)

  opt = jax.tree.map(place, state["opt_state"], is_leaf=is_params_like)
  return {"step": replicated, "params": p_shard, "opt_state": opt, "rng": replicated}


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
  """How many ways a batch is split (its size must be a multiple of this)."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """Assembles the global batch from this process's rows, split over the batch axes of the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def local_rows(batch: dict) -> dict:
  """This process's share of a batch that every process holds in full (evaluation)."""
  n, i = jax.process_count(), jax.process_index()
  return {k: v[i * len(v) // n:(i + 1) * len(v) // n] for k, v in batch.items()}
