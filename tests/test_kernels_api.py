"""Chunk-op dispatch (`kernels.impl`), argument checks, exact one-hot matmuls, a whole H-Net with the kernels, and
`chunklm bench kernels` on CPU."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chunklm.cli import main
from chunklm.errors import ConfigError, UserError
from chunklm.kernels import api
from chunklm.kernels.onehot import onehot_matmul
from chunklm.model.functional import forward, split_model
from chunklm.model.layers import Attention
from chunklm.model.lm import build_model
from chunklm.model.stage_output import stage_metrics
from chunklm.train.step import routing_loss
from conftest import tiny_config

# A 1-stage H-Net of attention blocks only: compiles in seconds, and chunk capacity 12 < 32 positions.
HNET = [
  "model.layout=[t1, [t1], t1]",
  "model.d_model=[16, 24]",
  "model.n_heads=[2, 2]",
  "model.target_ratio=[3]",
  "model.capacity=[12]",
]


def test_impl_resolution_on_cpu_and_on_accelerators(monkeypatch):
  assert api.resolve("auto") is None and api.resolve("xla") is None  # CPU: the reference
  assert api.resolve("interpret") == api.Backend("tpu", interpret=True)
  with pytest.raises(ValueError, match="needs a GPU or TPU.*'interpret'"):
    api.resolve("pallas")
  with pytest.raises(ValueError, match="valid: auto, xla, pallas, interpret"):
    api.resolve("triton")
  with pytest.raises(ValueError, match="'tpu' or 'gpu'"):
    api.Backend("cuda")
  for platform, family in (("gpu", "gpu"), ("tpu", "tpu")):
    monkeypatch.setattr(jax, "default_backend", lambda p=platform: p)
    assert api.resolve("auto") == api.resolve("pallas") == api.Backend(family)
    assert api.resolve("interpret") == api.Backend(family, interpret=True)


def test_bad_arguments_are_clear_value_errors():
  x, keep = jnp.zeros((2, 8, 4)), jnp.ones((2, 8), bool)
  with pytest.raises(ValueError, match="x_BxLxD must have 3 dimensions"):
    api.downsample(x[0], keep, 4)
  with pytest.raises(ValueError, match="keep_BxL must have 2 dimensions starting 2x8"):
    api.downsample(x, keep[:, :5], 4)
  with pytest.raises(ValueError, match="capacity must be a positive int"):
    api.downsample(x, keep, 0, impl="interpret")
  with pytest.raises(ValueError, match="'sum' or 'mean'"):
    api.segment_pool(x, jnp.zeros((2, 8), jnp.int32), 4, "max")
  with pytest.raises(ValueError, match="p_BxM must have 2 dimensions starting 2x8"):
    api.ema_scan(x, jnp.ones((2, 7)))


def test_kernels_config_is_validated_and_reaches_every_stage():
  assert tiny_config().kernels.impl == "auto"
  with pytest.raises(ConfigError, match="kernels.impl: 'fast' is not one of auto, xla, pallas, interpret"):
    tiny_config("kernels.impl=fast")
  cfg = tiny_config(
    "model.layout=[t1, [t1, [t1], t1], t1]",
    "model.d_model=[16, 16, 16]",
    "model.n_heads=[2]",
    "model.target_ratio=[2, 2]",
    "kernels.impl=interpret",
    "kernels.attention=xla",
  )
  model = build_model(cfg, 0)
  assert model.plan(32).kernel_impl == model.plan(32).inner().kernel_impl == "interpret"
  attention = [m for _, m in nnx.iter_modules(model) if isinstance(m, Attention)]
  assert len(attention) == 5 and {m.impl for m in attention} == {"xla"}  # kernels.attention reaches every stack


def test_onehot_matmul_selects_float32_rows_exactly():
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(16, 8)) * 10.0 ** rng.integers(-20, 20, size=(16, 8))).astype(np.float32)
  perm = rng.permutation(16)
  sel = perm[:, None] == np.arange(16)[None, :]
  np.testing.assert_array_equal(np.asarray(onehot_matmul(jnp.asarray(sel), jnp.asarray(x))), x[perm])
  xb = jnp.asarray(x[:, :4], jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(onehot_matmul(jnp.asarray(sel), xb)), np.asarray(xb, np.float32)[perm])


def hnet_loss_and_grads(impl: str, extra=()):
  cfg = tiny_config(*HNET, *extra, f"kernels.impl={impl}")
  graphdef, params = split_model(build_model(cfg, 0))
  ids = jax.random.randint(jax.random.key(1), (2, 32), 0, 256)
  seg = jnp.array([[1] * 12 + [2] * 20, [1] * 32])  # two documents in the first row
  batch = {"ids": ids, "segment_ids": seg, "positions": jnp.broadcast_to(jnp.arange(32), (2, 32))}

  def loss(params):
    logits, stages = forward(graphdef, params, batch)
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.mean(jnp.take_along_axis(logp, jnp.roll(ids, -1, 1)[..., None], -1))
    return nll + routing_loss(stages, cfg.model), stage_metrics(stages)

  (value, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return value, aux, grads


TWO_STAGES = (
  "model.layout=[t1, [t1, [t1], t1], t1]",
  "model.d_model=[16, 16, 24]",
  "model.n_heads=[2, 2, 2]",
  "model.target_ratio=[2, 2]",
  "model.capacity=[16, 10]",
)


# CI budget: the whole-model check is slow; every op and its VJP is checked against the reference in the default
# suite (test_kernels_interpret.py, test_kernels_tpu_interpret.py)
@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), TWO_STAGES], ids=["1stage", "2stage"])
def test_hnet_forward_backward_xla_equals_interpreted_kernels(extra):
  v_xla, aux_xla, g_xla = hnet_loss_and_grads("xla", extra)
  v_k, _, g_k = hnet_loss_and_grads("interpret", extra)
  assert float(aux_xla["overflow_s0"]) > 0, "the test should exercise overflow"
  np.testing.assert_allclose(v_k, v_xla, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_k), jax.tree.leaves(g_xla)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_k))


@pytest.mark.slow  # CI budget: the default suite stays under 15 minutes on 2 cores
def test_bench_kernels_runs_on_cpu(tmp_path, capsys, corpus_dir):
  out = tmp_path / "bench.json"
  assert (
    main(
      [
        "bench",
        "kernels",
        "--shapes",
        "small",
        "--impl",
        "interpret",
        "--ops",
        "upsample,ssd",
        "--dtype",
        "float32",
        "--repeats",
        "2",
        "--warmup",
        "0",
        "--no-step",
        "--json",
        str(out),
      ]
    )
    == 0
  )
  text = capsys.readouterr().out
  assert "peak HBM bandwidth: n/a" in text and "interpret -> Mosaic TPU kernels, interpreted" in text
  rows = json.loads(out.read_text())["ops"]
  assert {(r["impl"], r["pass"]) for r in rows} == {(i, p) for i in ("xla", "interpret") for p in ("fwd", "fwd+bwd")}
  assert all(r["ms"] > 0 and r["gbps"] > 0 and r["peak_frac"] is None for r in rows)
  ssd_rows = json.loads(out.read_text())["ssd"]
  assert {(r["impl"], r["pass"]) for r in ssd_rows} == {(r["impl"], r["pass"]) for r in rows}
  assert all(r["tflops"] > 0 and r["gflop"] > 0 for r in ssd_rows)
  assert main(["bench", "kernels", "--impl", "pallas", "--shapes", "small", "--no-step"]) == 2  # no GPU/TPU here
  assert "needs a GPU or TPU" in capsys.readouterr().err
  from chunklm.bench.kernels import bench_step, peak_gbps

  rows = bench_step(
    "hnet_1stage_tiny",
    [*HNET, "data.seq_len=32", "train.batch_size=2", "data.min_doc_bytes=4", f"data.sources=[{corpus_dir}]"],
    ("xla",),
    steps=1,
    warmup=0,
  )
  assert rows[0]["impl"] == "xla" and rows[0]["step_ms"] > 0
  assert peak_gbps("NVIDIA H100 80GB HBM3") == 3350 and peak_gbps("NVIDIA H100 PCIe") == 2000
  assert peak_gbps("TPU v5 lite") == 820 and peak_gbps("NVIDIA GeForce RTX 4090") is None


def test_bench_kernels_shapes_parse():
  from chunklm.bench.kernels import SHAPES, parse_shapes

  assert parse_shapes("small") == SHAPES["small"]
  assert parse_shapes("8x8192x1024, 32X4096x512") == ((8, 8192, 1024), (32, 4096, 512))
  for bad in ("8x8192", "8x0x64", "axbxc", " , "):
    with pytest.raises(UserError, match="--shapes"):
      parse_shapes(bad)


def test_float32_sum_slack_still_catches_one_dropped_term():
  """The float32 slack of the kernel comparisons (4·eps·Σ|t| per element) admits reordered sums, not a wrong one:
  the upsample gradient of one 1000-byte chunk, less one of its 1000 terms, fails."""
  from kernel_cases import assert_close, call, keep_pattern, sum_slack

  keep = jnp.asarray(keep_pattern("one", 1, 1000))
  ct = jnp.asarray(np.random.default_rng(0).normal(size=(1, 1000, 8)), jnp.float32)
  ref = lambda z: call("upsample", "xla", (z,), keep, 300)
  _, vjp = jax.vjp(ref, jnp.zeros((1, 300, 8)))
  (g,) = vjp(ct)
  (slack,) = sum_slack(jnp.float32, vjp(jnp.abs(ct)))
  assert_close(jnp.flip(ct, 1).sum(1), g[:, 0], 1e-5, 2e-5 + slack[:, 0], "summed backwards")
  with pytest.raises(AssertionError, match="elements off"):
    assert_close(g.at[0, 0].add(-ct[0, 1]), g, 1e-5, 2e-5 + slack, "one term dropped")
