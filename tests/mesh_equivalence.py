"""Run as a script (8 forced CPU devices): 5 training steps on a (data 2, fsdp 2, tensor 2) mesh and on one device,
from the same initial state and batches; prints the losses and the largest parameter difference per case as JSON.
Usage: python tests/mesh_equivalence.py CONFIG:IMPL [CONFIG:IMPL ...]
       python tests/mesh_equivalence.py ops:IMPL   (each chunk op and its gradient, jitted under the mesh vs none)"""

import json
import sys

import jax

jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from chunklm.bench import kernels_ssd  # noqa: E402
from chunklm.bench.kernels import OPS, make_inputs, op_call  # noqa: E402
from chunklm.bench.timing import real_batches  # noqa: E402
from chunklm.config import MeshConfig, load_config  # noqa: E402
from chunklm.kernels.ssd import ssd  # noqa: E402
from chunklm.train.sharding import batch_sharding, make_mesh, on_mesh, put_batch, state_shardings  # noqa: E402
from chunklm.train.step import make_train_step  # noqa: E402
from chunklm.train.trainer import setup_state  # noqa: E402

SMALL = {  # CPU-sized versions of the bundled tiny configs (interpreted Pallas kernels are slow)
  "byte_transformer_tiny": ["model.d_model=[32]", "model.n_heads=[2]"],
  "hnet_1stage_tiny": [
    "model.d_model=[32,48]",
    "model.n_heads=[2,2]",
    "model.mamba.head_dim=16",
    "model.mamba.d_state=8",
    "model.mamba.chunk_size=16",
  ],
  "hnet_2stage_tiny": [
    "model.d_model=[32,40,48]",
    "model.n_heads=[2,2,2]",
    "model.mamba.head_dim=16",
    "model.mamba.d_state=8",
    "model.mamba.chunk_size=16",
  ],
}
STEPS = 5


def run(name: str, impl: str, devices: list, mesh_cfg: MeshConfig):
  cfg = load_config(
    name, SMALL[name] + ["data.seq_len=64", "train.batch_size=8", "train.warmup_steps=1", f"kernels.impl={impl}"]
  )
  mesh = make_mesh(mesh_cfg, devices)
  graphdef, tx, state, _ = setup_state(cfg)
  shardings = state_shardings(state, mesh)
  state = jax.device_put(state, shardings)
  step = on_mesh(make_train_step(graphdef, tx, shardings, batch_sharding(mesh)), mesh)
  losses = []
  for batch in real_batches(cfg, STEPS):
    state, m = step(state, put_batch(batch, mesh))
    losses.append(float(m["loss"]))
  return losses, jax.tree.leaves(jax.device_get(state["params"]))


def ops(impl: str) -> float:
  """The largest difference of any chunk op's (and the SSD's) output or input gradient, under the mesh vs without,
  relative to 1 + the output's largest value (a sum over the batch, as dD is, adds its shards in another order)."""
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices())
  worst = 0.0
  *ssd_args, ssd_doc = kernels_ssd.make_inputs((4, 40, 2, 16, 16, 16), "float32")
  ssd_case = (lambda a, doc: ssd(*a, doc, 16, impl=impl)), tuple(ssd_args), ssd_doc + jnp.arange(40) // 13
  for op in (*OPS, "ssd"):
    fn, args, aux = ssd_case if op == "ssd" else op_call(op, impl, make_inputs(4, 32, 8, "float32"))

    def both(a, x, f=fn):
      return f(a, x), jax.grad(lambda a: f(a, x).sum())(a)

    plain = jax.device_get(jax.jit(both)(args, aux))
    with jax.set_mesh(mesh):
      if impl != "xla":  # the Pallas path must run per shard
        assert "shard_map" in str(jax.make_jaxpr(both)(args, aux)), op
      sharded = jax.device_get(jax.jit(both)(args, aux))
    worst = max(
      [
        worst,
        *(
          float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (1.0 + np.max(np.abs(np.asarray(a)))))
          for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(sharded))
        ),
      ]
    )
  return worst


if __name__ == "__main__":
  out = {}
  for case in sys.argv[1:]:
    name, impl = case.split(":")
    if name == "ops":
      out[case] = {"max_diff": ops(impl)}
      continue
    one_losses, one_params = run(name, impl, jax.devices()[:1], MeshConfig(data=1))
    losses, params = run(name, impl, jax.devices(), MeshConfig(data=2, fsdp=2, tensor=2))
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(one_params, params))
    out[case] = {"one": one_losses, "mesh": losses, "max_param_diff": diff}
  print(json.dumps(out))
