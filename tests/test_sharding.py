"""The mesh: parameter placement rules, batch checks against the target's processes, and sharded training on 8 CPU
devices equal to 1-device training (the trainer with XLA chunk ops; the step with the Pallas kernels interpreted
inside shard_map, for every model kind in the slow suite); FSDP weights gathered as blocks equal to whole ones, and
(with libtpu) their gradients compiled for a TPU slice leaving as reduce-scatters."""

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from chunklm.bench.compile import topology_devices
from chunklm.bench.hlo import count_collectives
from chunklm.config import MeshConfig
from chunklm.errors import ConfigError
from chunklm.mesh.context import gathered_apply
from chunklm.train import sharding

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


class FakeMesh:
  shape = {"data": 2, "fsdp": 2, "tensor": 2}


def test_spec_rules_drop_axes_that_do_not_divide_or_repeat():
  m = FakeMesh()
  assert sharding.spec_for(("embed", "mlp"), (64, 128), m) == P("fsdp", "tensor")
  assert sharding.spec_for(("embed", "mlp"), (63, 128), m) == P(None, "tensor")
  assert sharding.spec_for(("embed", None, "heads", "kv"), (64, 3, 4, 16), m) == P("fsdp", None, "tensor", None)
  assert sharding.spec_for(("heads", "mlp"), (4, 8), m) == P("tensor", None)  # tensor used once only
  assert sharding.spec_for(("norm",), (64,), m) == P(None)


def test_mesh_must_match_devices():
  with pytest.raises(ConfigError, match="does not match the 1 available device"):
    sharding.make_mesh(MeshConfig(data=2))
  assert sharding.make_mesh(MeshConfig()).shape == {"data": 1, "fsdp": 1, "tensor": 1}


SCRIPT = textwrap.dedent("""
    import jax, sys, json
    jax.config.update("jax_num_cpu_devices", 8)
    sys.path.insert(0, "tests")
    from conftest import tiny_config, write_corpus
    from pathlib import Path
    from chunklm.run.metrics import read_jsonl
    from chunklm.train import trainer
    root = Path(sys.argv[1])
    corpus = write_corpus(root / "corpus")
    out = {}
    for name, mesh in [("one", ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"]),
                       ("eight", ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])]:
      devices = jax.devices()[:1] if name == "one" else jax.devices()
      cfg = tiny_config("train.steps=6", "train.batch_size=8", "model.n_heads=2", *mesh, data=corpus)
      if name == "one":
        import chunklm.train.sharding as sh
        real = sh.make_mesh
        trainer.make_mesh = lambda c: real(c, devices)
      else:
        import chunklm.train.sharding as sh
        trainer.make_mesh = sh.make_mesh
      res = trainer.train(cfg, root / name, progress=False, log=lambda *a, **k: None)
      out[name] = {"losses": [r["loss"] for r in read_jsonl(root / name / "metrics.jsonl") if r["split"] == "train"],
                   "bpb": res.valid["bpb"]}
    print(json.dumps(out))
""")


@pytest.mark.slow  # CI budget: the default suite stays under 15 minutes on 2 cores
def test_sharded_training_matches_single_device(tmp_path):
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json

  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["one"]["losses"] == pytest.approx(out["eight"]["losses"], rel=2e-4)
  assert out["one"]["bpb"] == pytest.approx(out["eight"]["bpb"], rel=2e-4)


class FakeDevice:
  def __init__(self, process_index):
    self.process_index = process_index


class FakeProcessMesh:
  def __init__(self, shape, processes):
    self.shape = shape
    self.devices = np.array([FakeDevice(i % processes) for i in range(8)])


def test_batch_size_is_checked_against_the_meshs_processes():
  mesh = FakeProcessMesh({"data": 1, "fsdp": 2, "tensor": 4}, processes=4)  # 2 batch shards fed by 4 hosts
  sharding.check_batch_size(8, mesh)
  with pytest.raises(ConfigError, match="not divisible by the 2 batch shards .* and by its 4 process"):
    sharding.check_batch_size(6, mesh)
  sharding.check_batch_size(2, FakeProcessMesh({"data": 2, "fsdp": 1, "tensor": 4}, processes=2))


EQUIVALENCE = Path(__file__).with_name("mesh_equivalence.py")


def _equivalent(cases: list[str]) -> None:
  proc = subprocess.run([sys.executable, str(EQUIVALENCE), *cases], capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for case in cases:
    r = out[case]
    assert r["mesh"] == pytest.approx(r["one"], rel=1e-4), case
    assert r["max_param_diff"] < 1e-4, case


@pytest.mark.slow  # CI budget (the default suite measured 16:26 on a clean clone); .ci/run runs it
def test_pallas_chunk_ops_run_per_shard_under_a_mesh_and_match():
  proc = subprocess.run(
    [sys.executable, str(EQUIVALENCE), "ops:interpret"], capture_output=True, text=True, timeout=900
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["ops:interpret"]["max_diff"] < 1e-5


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_every_model_kind_trains_on_a_mesh_like_one_device():
  _equivalent(
    [
      f"{m}:{impl}"
      for m in ("byte_transformer_tiny", "hnet_1stage_tiny", "hnet_2stage_tiny")
      for impl in ("xla", "interpret")
    ]
  )


# FSDP layers under 8 CPU devices against the same layers without a mesh: weights split along their first or their
# last dimension whose gradients are scattered as blocks (data 2 x fsdp 4), one whose shards are no whole number of
# 128-lane rows and, with a tensor axis, ones that tensor splits too, all three left to autodiff.
BLOCKS = textwrap.dedent("""
    import jax, json
    jax.config.update("jax_num_cpu_devices", 8)
    import jax.numpy as jnp
    import numpy as np
    from chunklm.config import MeshConfig
    from chunklm.mesh.context import gathered_apply
    from chunklm.train.sharding import make_mesh, spec_for
    from jax.sharding import NamedSharding
    CASES = {"qkv": ((16, 3, 2, 64), ("embed", None, "heads", "kv")), "out": ((64, 32), ("mlp", "embed")),
             "odd": ((8, 12), ("embed", "mlp"))}
    def loss(w, x, axes):
      return jnp.sum(jnp.sin(gathered_apply(lambda x, w: jnp.tensordot(x, w, axes=1), x, w, axes)))
    out = {}
    for name, (shape, axes) in CASES.items():
      w = jax.random.normal(jax.random.key(0), shape)
      x = jax.random.normal(jax.random.key(1), (8, 5, shape[0]))
      f = jax.jit(jax.value_and_grad(loss), static_argnums=2)
      want = f(w, x, axes)
      for mesh_cfg in (MeshConfig(data=2, fsdp=4), MeshConfig(data=2, fsdp=2, tensor=2)):
        mesh = make_mesh(mesh_cfg, jax.devices())
        ws = jax.device_put(w, NamedSharding(mesh, spec_for(axes, shape, mesh)))
        xs = jax.device_put(x, NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))))
        with jax.set_mesh(mesh):
          got = f(ws, xs, axes)
        key = f"{name}@{mesh_cfg.fsdp}x{mesh_cfg.tensor}"
        out[key] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(got, want))
    print(json.dumps(out))
""")


@pytest.mark.slow  # CI budget (.ci/run runs it)
def test_fsdp_layers_give_the_values_and_gradients_of_the_whole_weight():
  proc = subprocess.run([sys.executable, "-c", BLOCKS], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert len(out) == 6 and max(out.values()) < 1e-4, out


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs the tpu extra (libtpu) to compile for TPU topologies")
def test_fsdp_gradients_leave_a_tpu_slice_as_reduce_scatters_not_whole_all_reduces():
  # On v5p:2x2x2, data 2 x fsdp 4, the TPU compiler all-reduced these three gradients whole and then sliced them while
  # they were reduce-scattered along their own dimension (each gradient's layout put that dimension in the lanes);
  # scattered as blocks, each leaves as a reduce-scatter, and only its shard is summed over data.
  weights = {  # hnet_2stage_S's main-stage attention QKV, stage 0's Mamba2 in and out projections
    "qkv": ((768, 3, 12, 64), ("embed", None, "heads", "kv")),
    "in_proj": ((512, 2192), ("embed", "ssm_inner")),
    "out_proj": ((1024, 512), ("ssm_inner", "embed")),
  }
  mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=4), topology_devices("v5p:2x2x2"))
  place = {k: NamedSharding(mesh, sharding.spec_for(axes, shape, mesh)) for k, (shape, axes) in weights.items()}

  def layer(x, w, name):
    return gathered_apply(lambda x, w: jnp.tensordot(x, w, axes=1), x[..., : w.shape[0]], w, weights[name][1])

  def loss(ws, x_BxLxD):
    ws = {k: w.astype(jnp.bfloat16) for k, w in ws.items()}
    h = layer(x_BxLxD, ws["in_proj"], "in_proj")
    return jnp.sum(layer(x_BxLxD, ws["qkv"], "qkv") ** 2) + jnp.sum(layer(h, ws["out_proj"], "out_proj") ** 2)

  def step(ws, x_BxLxD):
    return jax.tree.map(lambda w, g: w - 0.1 * g, ws, jax.grad(loss)(ws, x_BxLxD))

  ws = {k: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=place[k]) for k, (shape, _) in weights.items()}
  x = jax.ShapeDtypeStruct((8, 512, 1024), jnp.bfloat16, sharding=NamedSharding(mesh, P(("data", "fsdp"))))
  with jax.set_mesh(mesh):
    hlo = jax.jit(step, out_shardings=place).lower(ws, x).compile().as_text()
  c = count_collectives(hlo)
  assert c["reduce-scatter"]["count"] == 3 and c["reduce-scatter"]["as_all_reduce"] == 0, c
  largest_shard = 2 * 768 * 3 * 12 * 64 // 4  # bf16
  assert c["all-reduce"]["max_bytes"] <= largest_shard, c  # the sums over data: shards, never a whole gradient
