"""Pallas TPU (Mosaic) kernels for the dechunk EMA scan, forward and backward, beside the chunk ops of pallas_tpu.py
(which exports them as part of the TPU kernel family); same signatures as reference.py plus keyword-only `tiles` and
`interpret`.

ema_scan: chunk tiles in order along an 'arbitrary' grid axis, carrying the last zbar row in VMEM; inside a tile a
    log-step (Hillis-Steele) scan with sublane rolls, in float32. The backward is the same scan in reverse."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from chunklm.kernels.bookkeeping import check_ndim
from chunklm.kernels.tuning import TPU, Tiles, fit, fit_lanes


def _scan_rows(a, b, reverse: bool):
  """Inclusive scan of (a, b) along rows of a tile with (earlier, later) -> (a_e a_l, a_l b_e + b_l), or the
  suffix scan (b_i + a_i b_{i+1}) if `reverse`: log2(rows) steps of sublane rolls."""
  rows = a.shape[0]
  row = jax.lax.broadcasted_iota(jnp.int32, a.shape, 0)
  step = 1
  while step < rows:
    shift = rows - step if reverse else step  # roll: out[i] = in[i - shift mod rows]
    ok = row < rows - step if reverse else row >= step
    a_other, b_other = pltpu.roll(a, shift, 0), pltpu.roll(b, shift, 0)
    b = jnp.where(ok, b + a * b_other, b)
    a = jnp.where(ok, a * a_other, a)
    step *= 2
  return a, b


def _ema_kernel(z_ref, p_ref, o_ref, carry_ref):
  @pl.when(pl.program_id(2) == 0)
  def _init():
    carry_ref[...] = jnp.zeros_like(carry_ref)

  p_Mx1 = p_ref[0].astype(jnp.float32)
  z_MxD = z_ref[0].astype(jnp.float32)
  a_MxD, b_MxD = _scan_rows(jnp.broadcast_to(1.0 - p_Mx1, z_MxD.shape), p_Mx1 * z_MxD, reverse=False)
  zbar_MxD = b_MxD + a_MxD * carry_ref[...]
  o_ref[0] = zbar_MxD.astype(o_ref.dtype)
  carry_ref[...] = zbar_MxD[-1:, :]


def _ema_tiles(z_BxMxD, tiles: Tiles):
  b, m, d = z_BxMxD.shape
  bm, bd = fit(m, tiles.block_scan), fit_lanes(d, tiles.block_d)
  return b, m, d, bm, bd, pl.cdiv(m, bm), pl.cdiv(d, bd)


@functools.partial(jax.jit, static_argnames=("tiles", "interpret"))
def ema_scan(z_BxMxD: jax.Array, p_BxM: jax.Array, *, tiles: Tiles = TPU, interpret=False) -> jax.Array:
  """zbar_BxMxD, zbar_c = p_c z_c + (1 - p_c) zbar_{c-1} (zbar_{-1} = 0), accumulated in float32."""
  check_ndim(z_BxMxD, "z_BxMxD", 3)
  b, m, d, bm, bd, n_m, n_d = _ema_tiles(z_BxMxD, tiles)
  row = pl.BlockSpec((1, bm, bd), lambda i, j, k: (i, k, j))
  steps = max(1, (bm - 1).bit_length())
  cost = pl.CostEstimate(
    flops=b * m * d * (5 * steps + 4), transcendentals=0, bytes_accessed=2 * z_BxMxD.nbytes + p_BxM.nbytes
  )
  return pl.pallas_call(
    _ema_kernel,
    out_shape=jax.ShapeDtypeStruct(z_BxMxD.shape, z_BxMxD.dtype),
    grid=(b, n_d, n_m),
    in_specs=[row, pl.BlockSpec((1, bm, 1), lambda i, j, k: (i, k, 0))],
    out_specs=row,
    scratch_shapes=[pltpu.VMEM((1, bd), jnp.float32)],
    compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
    cost_estimate=cost,
    interpret=interpret,
    name="chunk_ema_scan",
  )(z_BxMxD, p_BxM[..., None])


def _ema_bwd_kernel(g_ref, q_ref, p_ref, z_ref, zbar_ref, prev_ref, dz_ref, dp_ref, carry_ref, *, capacity):
  k = pl.program_id(2)
  block_m = g_ref.shape[1]

  @pl.when(k == 0)
  def _init():
    carry_ref[...] = jnp.zeros_like(carry_ref)

  m0 = (pl.num_programs(2) - 1 - k) * block_m
  in_Mx1 = m0 + jax.lax.broadcasted_iota(jnp.int32, (block_m, 1), 0) < capacity
  g_MxD = jnp.where(in_Mx1, g_ref[0].astype(jnp.float32), 0.0)  # edge rows of the last tile are uninitialised
  q_Mx1 = jnp.where(in_Mx1, q_ref[0], 0.0)
  a_MxD, b_MxD = _scan_rows(jnp.broadcast_to(q_Mx1, g_MxD.shape), g_MxD, reverse=True)
  adj_MxD = b_MxD + a_MxD * carry_ref[...]  # dL/dzbar_c through every later chunk
  carry_ref[...] = adj_MxD[:1, :]
  dz_ref[0] = (p_ref[0] * adj_MxD).astype(dz_ref.dtype)
  zbar_MxD = zbar_ref[0].astype(jnp.float32)
  row_MxD = jax.lax.broadcasted_iota(jnp.int32, zbar_MxD.shape, 0)
  before_MxD = jnp.where(row_MxD == 0, prev_ref[0, 0].astype(jnp.float32), pltpu.roll(zbar_MxD, 1, 0))
  dp_ref[0, 0] = jnp.sum(adj_MxD * (z_ref[0].astype(jnp.float32) - before_MxD), axis=1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("tiles", "interpret"))
def ema_scan_bwd(
  z_BxMxD: jax.Array,
  p_BxM: jax.Array,
  zbar_BxMxD: jax.Array,
  g_BxMxD: jax.Array,
  *,
  tiles: Tiles = TPU,
  interpret=False,
) -> tuple[jax.Array, jax.Array]:
  """(dz_BxMxD, dp_BxM) for the cotangent g = dL/dzbar: the adjoint a_c = g_c + (1 - p_{c+1}) a_{c+1} as a reverse
  scan, dz_c = p_c a_c, dp_c = sum_D a_c (z_c - zbar_{c-1})."""
  b, m, d, bm, bd, n_m, n_d = _ema_tiles(z_BxMxD, tiles)
  p_BxM = p_BxM.astype(jnp.float32)
  q_BxM = jnp.concatenate([1.0 - p_BxM[:, 1:], jnp.zeros((b, 1), jnp.float32)], axis=1)  # decay seen from c + 1
  ends = jnp.arange(1, n_m) * bm - 1  # zbar just before each tile
  prev_BxNx1xD = jnp.concatenate([jnp.zeros((b, 1, d), zbar_BxMxD.dtype), zbar_BxMxD[:, ends]], axis=1)[:, :, None]
  rev = lambda i, j, k: (i, n_m - 1 - k, j)  # noqa: E731
  row, col = pl.BlockSpec((1, bm, bd), rev), pl.BlockSpec((1, bm, 1), lambda i, j, k: (i, n_m - 1 - k, 0))
  steps = max(1, (bm - 1).bit_length())
  cost = pl.CostEstimate(
    flops=b * m * d * (5 * steps + 8), transcendentals=0, bytes_accessed=4 * z_BxMxD.nbytes + 3 * p_BxM.nbytes
  )
  dz_BxMxD, dp_BxNxMx1 = pl.pallas_call(
    functools.partial(_ema_bwd_kernel, capacity=m),
    out_shape=(jax.ShapeDtypeStruct(z_BxMxD.shape, z_BxMxD.dtype), jax.ShapeDtypeStruct((b, n_d, m, 1), jnp.float32)),
    grid=(b, n_d, n_m),
    in_specs=[row, col, col, row, row, pl.BlockSpec((1, 1, 1, bd), lambda i, j, k: (i, n_m - 1 - k, 0, j))],
    out_specs=(row, pl.BlockSpec((1, 1, bm, 1), lambda i, j, k: (i, j, n_m - 1 - k, 0))),
    scratch_shapes=[pltpu.VMEM((1, bd), jnp.float32)],
    compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
    cost_estimate=cost,
    interpret=interpret,
    name="chunk_ema_scan_bwd",
  )(g_BxMxD, q_BxM[..., None], p_BxM[..., None], z_BxMxD, zbar_BxMxD, prev_BxNx1xD)
  return dz_BxMxD, dp_BxNxMx1.sum(axis=1)[..., 0]
