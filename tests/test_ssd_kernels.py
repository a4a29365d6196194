"""The SSD kernels (TPU Mosaic and GPU Triton families, interpreted on CPU) vs the XLA SSD: outputs and gradients of
every input, over shapes, chunk sizes, document boundaries inside and across chunks and lengths the chunk does not
divide; the op's dispatch and checks; a whole H-Net step with the kernels vs without."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunklm.bench import kernels_ssd
from chunklm.errors import UserError
from chunklm.kernels import api, ssd_chunk, ssd_reference
from chunklm.kernels.ssd import heads_per_program, ssd
from chunklm.kernels.ssd import kernel_chunk as ssd_kernel_chunk
from chunklm.kernels.tuning import Tiles
from chunklm.model.mamba2 import document_index
from kernel_cases import FUZZ
from test_kernels_api import hnet_loss_and_grads

TPU = api.Backend("tpu", interpret=True, tiles=Tiles(8, 8, 8, 8, ssd_heads=1))
GPU = api.Backend("gpu", interpret=True, tiles=Tiles(8, 8, 8, 8))  # ssd_chunk 0: the model's chunk, as TPU's
# CI budget: the TPU interpreter takes 5-20 s per shape on 2 cores, so the default suite runs one TPU case and the GPU
# family everywhere; the other TPU cases, both fuzzes and the whole H-Net step are slow (.ci/run runs them).
SLOW = pytest.mark.slow
TINY_16 = Tiles(8, 8, 8, 8, ssd_heads=1, ssd_chunk=16)
NAMES = ("x", "dt", "a", "b", "c", "d")


def inputs(b, length, h, p, n, seed=0, cuts=(), dtype=jnp.float32):
  """(x, dt, a, b, c, d, doc) with documents starting at `cuts` in row 0 (row 1: one document, then padding 0)."""
  rng = np.random.default_rng(seed)
  seg = np.ones((b, length), np.int32)
  for cut in cuts:
    seg[0, cut:] += 1
  if b > 1:
    seg[1, length * 3 // 4 :] = 0
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)
  dt = jnp.asarray(rng.uniform(0.01, 0.6, size=(b, length, h)), dtype)
  a = -jnp.asarray(rng.uniform(0.5, 3.0, size=(h,)), dtype)
  return f(b, length, h, p), dt, a, f(b, length, n), f(b, length, n), f(h), document_index(jnp.asarray(seg))


def values_and_grads(impl, args, chunk, dy):
  y, vjp = jax.vjp(lambda *v: ssd(*v, args[6], chunk, impl=impl), *args[:6])
  return y, vjp(dy.astype(y.dtype))


def assert_matches(impl, args, chunk, rtol=2e-5, atol=2e-5):
  """impl vs the XLA SSD in float32 on the same values, within atol of each output's largest entry."""
  dy = jnp.asarray(np.random.default_rng(1).normal(size=args[0].shape), jnp.float32)
  as_f32 = [v.astype(jnp.float32) if v.dtype == jnp.bfloat16 else v for v in args]
  y_ref, g_ref = values_and_grads("xla", as_f32, chunk, dy)
  y, g = values_and_grads(impl, args, chunk, dy)
  scale = lambda v: float(jnp.max(jnp.abs(v.astype(jnp.float32)))) + 1.0
  np.testing.assert_allclose(np.float32(y), np.float32(y_ref), rtol=rtol, atol=atol * scale(y_ref), err_msg="y")
  for name, got, want in zip(NAMES, g, g_ref):
    np.testing.assert_allclose(
      np.float32(got), np.float32(want), rtol=rtol, atol=atol * scale(want), err_msg=f"d{name}"
    )


@pytest.mark.parametrize(
  "backend,length,cuts",
  [
    pytest.param(TPU, 64, (5, 16, 40), id="tpu-docs-inside-and-on-chunk-edges", marks=SLOW),
    pytest.param(TPU, 61, (15, 16, 17), id="tpu-ragged-length-short-docs", marks=SLOW),
    pytest.param(TPU, 48, (), id="tpu-one-doc", marks=SLOW),
    pytest.param(GPU, 64, (5, 16, 40), id="gpu-docs-inside-and-on-chunk-edges"),
    pytest.param(GPU, 61, (15, 16, 17), id="gpu-ragged-length-short-docs"),
    pytest.param(GPU, 48, (), id="gpu-one-doc", marks=SLOW),
  ],
)
def test_kernel_equals_xla_ssd_float32(backend, length, cuts):
  assert_matches(backend, inputs(2, length, 4, 16, 16, cuts=cuts), chunk=16)


@SLOW  # CI budget: .ci/run runs the slow tests of this file
def test_tpu_kernel_with_several_head_blocks():
  # 8 heads of 32 channels, 4 per program (the fewest filling 128 lanes): 2 head blocks, their B and C cotangents
  # summed across blocks
  assert heads_per_program(TPU, 8, 32) == 4
  assert_matches(TPU, inputs(1, 32, 8, 32, 16, cuts=(5, 16, 31)), chunk=16)


def naive_ssd_float64(x, dt, a, b, c, d, doc):
  """y_BxLxHxP one position at a time in float64 (the recurrence itself, no chunks): an independent reference."""
  x, dt, a, b, c, d = (jnp.asarray(v, jnp.float64) for v in (x, dt, a, b, c, d))
  reset_BxL = jnp.pad(doc[:, 1:] != doc[:, :-1], ((0, 0), (1, 0)), constant_values=True)

  def step(h_BxHxPxN, t):
    decay_BxH = jnp.where(reset_BxL[:, t, None], 0.0, jnp.exp(dt[:, t] * a[None, :]))
    h_BxHxPxN = decay_BxH[..., None, None] * h_BxHxPxN + jnp.einsum("bh,bhp,bn->bhpn", dt[:, t], x[:, t], b[:, t])
    return h_BxHxPxN, jnp.einsum("bhpn,bn->bhp", h_BxHxPxN, c[:, t]) + d[None, :, None] * x[:, t]

  h0 = jnp.zeros((x.shape[0], x.shape[2], x.shape[3], b.shape[-1]), jnp.float64)
  return jax.lax.scan(step, h0, jnp.arange(x.shape[1]))[1].swapaxes(0, 1)


@pytest.mark.parametrize("impl", ["xla", GPU], ids=["xla", "gpu-kernel"])
def test_gradient_of_a_when_decays_underflow_matches_float64(impl):
  # dt |A| of 20-150 per step: every decay past the diagonal underflows, so dA comes only from the diagonal terms,
  # which must be exactly 0 and not two large terms cancelling up to rounding (the reference's and the kernel's
  # bug before: dA off by about 3x)
  x, dt, a, b, c, d, doc = inputs(1, 48, 2, 16, 16, cuts=(20,))
  dt = dt * 0 + jnp.asarray(np.random.default_rng(3).uniform(20, 50, size=dt.shape), jnp.float32)
  dy = jnp.asarray(np.random.default_rng(4).normal(size=x.shape), jnp.float32)
  got = jax.grad(lambda a: jnp.sum(ssd(x, dt, a, b, c, d, doc, 16, impl=impl) * dy))(a)
  with jax.enable_x64(True):
    want = jax.grad(lambda a: jnp.sum(naive_ssd_float64(x, dt, a, b, c, d, doc) * dy))(jnp.asarray(a, jnp.float64))
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-3, atol=1e-6)


@SLOW
@given(
  length=st.integers(1, 70),
  chunk=st.sampled_from([8, 16, 32]),
  heads=st.sampled_from([1, 2, 3]),
  cuts=st.lists(st.integers(1, 69), max_size=5),
  seed=st.integers(0, 99),
)
@FUZZ
def test_tpu_kernel_fuzz_shapes_chunks_and_boundaries(length, chunk, heads, cuts, seed):
  args = inputs(2, length, heads, 8, 8, seed=seed, cuts=tuple(c for c in cuts if c < length))
  assert_matches(TPU, args, chunk)


@given(
  length=st.integers(1, 70),
  chunk=st.sampled_from([16, 32]),
  heads=st.sampled_from([1, 3]),
  cuts=st.lists(st.integers(1, 69), max_size=5),
  seed=st.integers(0, 99),
)
@FUZZ
@SLOW
def test_gpu_kernel_fuzz_shapes_chunks_and_boundaries(length, chunk, heads, cuts, seed):
  args = inputs(2, length, heads, 16, 16, seed=seed, cuts=tuple(c for c in cuts if c < length))
  assert_matches(GPU, args, chunk)


@SLOW  # CI budget: .ci/run runs the slow tests of this file
@pytest.mark.parametrize("backend", [TPU, GPU], ids=["tpu", "gpu"])
def test_kernel_bfloat16_within_a_stated_bound(backend):
  # bfloat16 inputs and outputs (8 significant bits) against the float32 reference on the same values: the kernels
  # compute in float32, so only the rounding of y and of the cotangents to bfloat16 remains: within 2^-7 of each
  # output's largest value (one rounding is at most 2^-8 of it).
  args = inputs(2, 48, 2, 16, 16, cuts=(10, 33), dtype=jnp.bfloat16)
  assert_matches(backend, args, chunk=16, rtol=2**-7, atol=2**-7)


@pytest.mark.parametrize(
  "backend",
  [
    pytest.param(api.Backend("gpu", interpret=True), marks=SLOW),
    pytest.param(api.Backend("tpu", interpret=True, tiles=TINY_16), marks=SLOW),
  ],
  ids=["gpu-default-tile-64", "tpu-tile-16"],
)
def test_kernel_step_need_not_be_the_model_chunk(backend):
  # the scan's result does not depend on the chunk: the kernels step by their own tile (GPU default 64 here, the
  # model's chunk 32; TPU 16), and match the reference at the model's chunk
  assert ssd_kernel_chunk(backend, 32) in (64, 16)
  assert_matches(backend, inputs(2, 100, 2, 16, 16, cuts=(20, 64, 65)), chunk=32)


def test_heads_per_program_fill_whole_lane_rows_on_tpu():
  tpu = api.Backend("tpu")
  assert heads_per_program(tpu, 24, 64) == 2  # 2 x 64 = 128 lanes
  assert heads_per_program(tpu, 8, 32) == 4
  assert heads_per_program(tpu, 3, 64) == 3  # no divisor fills whole rows: all heads, one block as wide as x
  assert heads_per_program(api.Backend("gpu"), 24, 64) == 1


def test_auto_keeps_the_xla_ssd_and_pallas_on_cpu_is_an_error():
  args = inputs(1, 16, 2, 8, 8)
  jaxpr = str(jax.make_jaxpr(lambda *v: ssd(*v, 8, impl="auto"))(*args))
  assert "pallas_call" not in jaxpr
  assert "pallas_call" in str(jax.make_jaxpr(lambda *v: ssd(*v, 8, impl="interpret"))(*args))
  with pytest.raises(ValueError, match="needs a GPU or TPU"):
    ssd(*args, 8, impl="pallas")


def test_bad_shapes_are_one_line_value_errors():
  x, dt, a, b, c, d, doc = inputs(1, 16, 2, 8, 8)
  with pytest.raises(ValueError, match="dt_BxLxH must have shape"):
    ssd(x, dt[:, :8], a, b, c, d, doc, 8)
  with pytest.raises(ValueError, match="b and c"):
    ssd(x, dt, a, b, c[..., :4], d, doc, 8)
  with pytest.raises(ValueError, match="chunk_size"):
    ssd(x, dt, a, b, c, d, doc, 0)
  with pytest.raises(ValueError, match="multiple of 128"):  # Mosaic's block rule for the position rows
    ssd(*inputs(1, 64, 2, 64, 16), 16, impl=api.Backend("tpu", tiles=TINY_16))
  with pytest.raises(ValueError, match="power of two"):
    ssd(*inputs(1, 16, 2, 8, 12), 16, impl=GPU)  # Triton dots need power-of-two tiles of at least 16


def test_chunk_body_row_column_helpers_are_exact():
  eye = jnp.eye(5, dtype=bool)
  col = jnp.arange(5.0)[:, None] * 1.5
  np.testing.assert_array_equal(ssd_chunk.to_col(ssd_chunk.to_row(col, eye), eye), col)
  assert float(ssd_chunk.last(col)[0, 0]) == 6.0


def test_reference_with_skip_is_the_chunked_scan_plus_d_x():
  x, dt, a, b, c, d, doc = inputs(1, 20, 2, 4, 4, cuts=(7,))
  y = ssd_reference.ssd(x, dt, a, b, c, d, doc, 8)
  np.testing.assert_allclose(y - ssd_reference.ssd_chunked(x, dt, a, b, c, doc, 8), d[None, None, :, None] * x, 1e-6)


MAMBA_HNET = (
  "model.layout=[m1, [t1], m1]",
  "model.mamba.head_dim=8",
  "model.mamba.d_state=8",
  "model.mamba.chunk_size=8",
)


@SLOW
def test_hnet_step_with_interpreted_ssd_and_chunk_kernels_equals_xla():
  v_xla, _, g_xla = hnet_loss_and_grads("xla", MAMBA_HNET)
  v_k, _, g_k = hnet_loss_and_grads("interpret", MAMBA_HNET)
  np.testing.assert_allclose(v_k, v_xla, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_k), jax.tree.leaves(g_xla)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bench_ssd_rows_shapes_and_peaks(capsys):
  rows = kernels_ssd.bench_ssd(kernels_ssd.SHAPES["small"], ("xla",), ("float32",), 1, 0, None, None)
  assert [r["pass"] for r in rows] == ["fwd", "fwd+bwd"] and all(r["ms"] > 0 and r["vs_xla"] == 1 for r in rows)
  assert rows[1]["gflop"] == 4 * rows[0]["gflop"] and "2x128x2x16x16x32" in capsys.readouterr().out
  assert kernels_ssd.parse_shapes("8x2048x16x64x64x128") == ((8, 2048, 16, 64, 64, 128),)
  for bad in ("8x2048x16", "8x2048x16x64x64x0", ""):
    with pytest.raises(UserError, match="--ssd-shapes"):
      kernels_ssd.parse_shapes(bad)
  assert kernels_ssd.peak_tflops("NVIDIA H200") == 989 and kernels_ssd.peak_tflops("TPU v5 lite") == 197
  assert kernels_ssd.peak_tflops("cpu") is None
