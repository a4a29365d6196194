"""Pallas TPU (Mosaic) kernels for the chunk ops; same signatures as reference.py plus keyword-only `tiles` and
`interpret` (False on a TPU; `pltpu.InterpretParams()` runs them on CPU with out-of-bounds reads raising and
uninitialised memory as NaN).

Shapes: B batch, L positions, M chunk slots (`capacity`), D features; `chunk_idx_BxL` non-decreasing along L with
values in [0, M) (as `reference.chunk_index` returns).

upsample, segment_pool: one-hot matmuls on the MXU (`onehot.py`) over a tile schedule (`schedule.py`): the
    (output tile, input tile) pairs that share a (position, chunk) form a staircase of at most n_out + n_in - 1
    steps, computed in plain JAX and scalar-prefetched into SMEM, the last, static grid axis ('arbitrary'). Grid
    (B, D tiles, steps); index maps read the schedule, so each step's blocks are the pair's tiles. An output block
    stays in VMEM over consecutive steps (an f32 scratch accumulates), is written at its last step, and steps past
    the end of a row repeat the last block indices (no copy) and skip all work (`pl.when`). Partial edge tiles are
    masked before the matmul, so uninitialised rows never reach it.
downsample: a DMA gather, grid (B, M tiles, D tiles). Each chunk tile copies its kept rows HBM -> VMEM,
    one row DMA per chunk (positions from an SMEM block, the count of kept rows scalar-prefetched), then zeroes the
    empty slots: reads only the M kept rows. Rows that are not whole DMA words (bfloat16 rows share a packed word;
    D not a multiple of 128) take segment_pool's kernel over the kept positions instead (reads all L rows once).
ema_scan, ema_scan_bwd: in pallas_tpu_scan.py, exported here with the rest of the family.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from chunklm.kernels import reference
from chunklm.kernels.bookkeeping import check_ndim, chunk_lens, kept_rows
from chunklm.kernels.onehot import onehot_matmul
from chunklm.kernels.schedule import ACTIVE, FIRST, LAST, schedule
from chunklm.kernels.tuning import TPU, Tiles, fit, fit_lanes

# The TPU kernel family, as kernels/api.py (Backend.module) calls it by name.
__all__ = ["downsample", "ema_scan", "ema_scan_bwd", "gather_rows", "row_dma_ok", "segment_pool", "upsample"]
from chunklm.kernels.pallas_tpu_scan import ema_scan, ema_scan_bwd


def _flag(flags_ref, flag: int):
  return (flags_ref[pl.program_id(0), pl.program_id(2)] & flag) != 0


# ----------------------------------------------------------------------------------------------- pool (bytes -> chunks)


def _pool_kernel(out_ref, in_ref, flags_ref, idx_ref, x_ref, o_ref, acc_ref, cnt_ref, *, length, mean):
  b, s = pl.program_id(0), pl.program_id(2)
  block_m, block_l = acc_ref.shape[0], x_ref.shape[1]

  @pl.when(_flag(flags_ref, FIRST))
  def _init():
    acc_ref[...] = jnp.zeros_like(acc_ref)
    cnt_ref[...] = jnp.zeros_like(cnt_ref)

  @pl.when(_flag(flags_ref, ACTIVE))
  def _accumulate():
    l0, m0 = in_ref[b, s] * block_l, out_ref[b, s] * block_m
    in_row_1xL = l0 + jax.lax.broadcasted_iota(jnp.int32, (1, block_l), 1) < length
    in_col_Lx1 = l0 + jax.lax.broadcasted_iota(jnp.int32, (block_l, 1), 0) < length
    chunk_Mx1 = m0 + jax.lax.broadcasted_iota(jnp.int32, (block_m, 1), 0)
    sel_MxL = (idx_ref[0] == chunk_Mx1) & in_row_1xL
    acc_ref[...] += onehot_matmul(sel_MxL, jnp.where(in_col_Lx1, x_ref[0], 0))
    if mean:
      cnt_ref[...] += jnp.sum(sel_MxL.astype(jnp.float32), axis=1, keepdims=True)

  @pl.when(_flag(flags_ref, LAST))
  def _write():
    acc = acc_ref[...] / jnp.maximum(cnt_ref[...], 1.0) if mean else acc_ref[...]
    o_ref[0] = acc.astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("capacity", "mode", "tiles", "interpret"))
def segment_pool(
  x_BxLxD: jax.Array,
  chunk_idx_BxL: jax.Array,
  capacity: int,
  mode: str = "sum",
  mask_BxL: jax.Array | None = None,
  *,
  tiles: Tiles = TPU,
  interpret=False,
) -> jax.Array:
  """z_BxMxD (M = capacity): sum or mean of the rows of each chunk (only rows where mask_BxL, if given, is True);
  empty chunks are zero."""
  check_ndim(x_BxLxD, "x_BxLxD", 3)
  if mode not in ("sum", "mean"):
    raise ValueError(f"segment_pool mode must be 'sum' or 'mean', got {mode!r}")
  b, length, d = x_BxLxD.shape
  bl, bm, bd = fit(length, tiles.block_l), fit(capacity, tiles.block_m), fit_lanes(d, tiles.block_d)
  n_l, n_m, n_d = pl.cdiv(length, bl), pl.cdiv(capacity, bm), pl.cdiv(d, bd)
  idx_BxL = chunk_idx_BxL.astype(jnp.int32)
  first_BxN = jax.vmap(jnp.searchsorted, (0, None))(idx_BxL, jnp.arange(n_m + 1, dtype=jnp.int32) * bm)
  lo_BxN, hi_BxN = first_BxN[:, :-1] // bl, (first_BxN[:, 1:] - 1) // bl
  hi_BxN = jnp.where(first_BxN[:, 1:] > first_BxN[:, :-1], hi_BxN, lo_BxN - 1)
  out_t, in_t, flags = schedule(lo_BxN, hi_BxN, n_l)
  steps = out_t.shape[1]
  if mask_BxL is not None:
    idx_BxL = jnp.where(mask_BxL, idx_BxL, -1)  # matches no chunk
  grid_spec = pltpu.PrefetchScalarGridSpec(
    num_scalar_prefetch=3,
    grid=(b, n_d, steps),
    in_specs=[
      pl.BlockSpec((1, 1, bl), lambda i, j, s, o, n, f: (i, 0, n[i, s])),
      pl.BlockSpec((1, bl, bd), lambda i, j, s, o, n, f: (i, n[i, s], j)),
    ],
    out_specs=pl.BlockSpec((1, bm, bd), lambda i, j, s, o, n, f: (i, o[i, s], j)),
    scratch_shapes=[pltpu.VMEM((bm, bd), jnp.float32), pltpu.VMEM((bm, 1), jnp.float32)],
  )
  passes = 1 if x_BxLxD.dtype == jnp.bfloat16 else 3
  cost = pl.CostEstimate(
    flops=2 * passes * b * n_d * steps * bm * bl * bd,
    transcendentals=0,
    bytes_accessed=x_BxLxD.nbytes + idx_BxL.nbytes + b * capacity * d * x_BxLxD.dtype.itemsize,
  )
  return pl.pallas_call(
    functools.partial(_pool_kernel, length=length, mean=mode == "mean"),
    out_shape=jax.ShapeDtypeStruct((b, capacity, d), x_BxLxD.dtype),
    grid_spec=grid_spec,
    compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
    cost_estimate=cost,
    interpret=interpret,
    name="chunk_segment_pool",
  )(out_t, in_t, flags, idx_BxL[:, None, :], x_BxLxD)


# ------------------------------------------------------------------------------------------ broadcast (chunks -> bytes)


def _bcast_kernel(out_ref, in_ref, flags_ref, idx_ref, z_ref, o_ref, acc_ref, *, capacity):
  b, s = pl.program_id(0), pl.program_id(2)
  block_m = z_ref.shape[1]

  @pl.when(_flag(flags_ref, FIRST))
  def _init():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  @pl.when(_flag(flags_ref, ACTIVE))
  def _accumulate():
    m0 = in_ref[b, s] * block_m
    sel_LxM = idx_ref[0] == m0 + jax.lax.broadcasted_iota(jnp.int32, (1, block_m), 1)
    in_col_Mx1 = m0 + jax.lax.broadcasted_iota(jnp.int32, (block_m, 1), 0) < capacity
    acc_ref[...] += onehot_matmul(sel_LxM, jnp.where(in_col_Mx1, z_ref[0], 0))

  @pl.when(_flag(flags_ref, LAST))
  def _write():
    o_ref[0] = acc_ref[...].astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("tiles", "interpret"))
def upsample(
  z_BxMxD: jax.Array,
  chunk_idx_BxL: jax.Array,
  mask_BxL: jax.Array | None = None,
  *,
  tiles: Tiles = TPU,
  interpret=False,
) -> jax.Array:
  """x_BxLxD with x[b, t] = z[b, chunk_idx[b, t]], and zero where mask_BxL (if given) is False."""
  check_ndim(z_BxMxD, "z_BxMxD", 3)
  b, capacity, d = z_BxMxD.shape
  length = chunk_idx_BxL.shape[1]
  bl, bm, bd = fit(length, tiles.block_l), fit(capacity, tiles.block_m), fit_lanes(d, tiles.block_d)
  n_l, n_m, n_d = pl.cdiv(length, bl), pl.cdiv(capacity, bm), pl.cdiv(d, bd)
  idx_BxL = chunk_idx_BxL.astype(jnp.int32)
  starts = jnp.arange(n_l) * bl
  lo_BxN = idx_BxL[:, starts] // bm
  hi_BxN = idx_BxL[:, jnp.minimum(starts + bl, length) - 1] // bm
  out_t, in_t, flags = schedule(lo_BxN, hi_BxN, n_m)
  steps = out_t.shape[1]
  if mask_BxL is not None:
    idx_BxL = jnp.where(mask_BxL, idx_BxL, -1)  # matches no chunk: a zero row
  grid_spec = pltpu.PrefetchScalarGridSpec(
    num_scalar_prefetch=3,
    grid=(b, n_d, steps),
    in_specs=[
      pl.BlockSpec((1, bl, 1), lambda i, j, s, o, n, f: (i, o[i, s], 0)),
      pl.BlockSpec((1, bm, bd), lambda i, j, s, o, n, f: (i, n[i, s], j)),
    ],
    out_specs=pl.BlockSpec((1, bl, bd), lambda i, j, s, o, n, f: (i, o[i, s], j)),
    scratch_shapes=[pltpu.VMEM((bl, bd), jnp.float32)],
  )
  passes = 1 if z_BxMxD.dtype == jnp.bfloat16 else 3
  cost = pl.CostEstimate(
    flops=2 * passes * b * n_d * steps * bm * bl * bd,
    transcendentals=0,
    bytes_accessed=z_BxMxD.nbytes + idx_BxL.nbytes + b * length * d * z_BxMxD.dtype.itemsize,
  )
  return pl.pallas_call(
    functools.partial(_bcast_kernel, capacity=capacity),
    out_shape=jax.ShapeDtypeStruct((b, length, d), z_BxMxD.dtype),
    grid_spec=grid_spec,
    compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
    cost_estimate=cost,
    interpret=interpret,
    name="chunk_upsample",
  )(out_t, in_t, flags, idx_BxL[:, :, None], z_BxMxD)


# ---------------------------------------------------------------------------------------- gather (boundaries -> chunks)


def _gather_kernel(count_ref, pos_ref, x_hbm, o_ref, sem):
  b, j, d = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  block_m, block_d = o_ref.shape[1], o_ref.shape[2]
  m0 = j * block_m
  rows = jnp.clip(count_ref[b] - m0, 0, block_m)

  def row_copy(r):
    src = x_hbm.at[b, pl.ds(pos_ref[0, 0, r], 1), pl.ds(d * block_d, block_d)]
    return pltpu.make_async_copy(src, o_ref.at[0, pl.ds(r, 1)], sem.at[0])

  @pl.loop(0, rows)
  def _start(r):
    row_copy(r).start()

  @pl.loop(0, rows)
  def _wait(r):
    row_copy(r).wait()

  filled_Mx1 = m0 + jax.lax.broadcasted_iota(jnp.int32, (block_m, 1), 0) < count_ref[b]
  o_ref[0] = jnp.where(filled_Mx1, o_ref[0], 0)


@functools.partial(jax.jit, static_argnames=("capacity", "tiles", "interpret"))
def gather_rows(
  x_BxLxD: jax.Array,
  positions_BxM: jax.Array,
  count_B: jax.Array,
  capacity: int,
  *,
  tiles: Tiles = TPU,
  interpret=False,
) -> jax.Array:
  """z_BxMxD with z[b, m] = x[b, positions[b, m]] for m < count[b] and zero after (count <= M = capacity).
  32-bit rows of a multiple of 128 features only (`row_dma_ok`)."""
  check_ndim(x_BxLxD, "x_BxLxD", 3)
  if not row_dma_ok(x_BxLxD, interpret):
    raise ValueError(
      f"gather_rows needs 32-bit rows of a multiple of 128 features, got {x_BxLxD.dtype} rows of "
      f"{x_BxLxD.shape[-1]}; use downsample, which handles any"
    )
  b, length, d = x_BxLxD.shape
  bm, bd = fit(capacity, tiles.block_m), fit_lanes(d, tiles.block_d)
  n_m, n_d = pl.cdiv(capacity, bm), pl.cdiv(d, bd)
  grid_spec = pltpu.PrefetchScalarGridSpec(
    num_scalar_prefetch=1,
    grid=(b, n_m, n_d),
    in_specs=[
      pl.BlockSpec((1, 1, bm), lambda i, j, k, c: (i, 0, j), memory_space=pltpu.SMEM),
      pl.BlockSpec(memory_space=pl.ANY),
    ],
    out_specs=pl.BlockSpec((1, bm, bd), lambda i, j, k, c: (i, j, k)),
    scratch_shapes=[pltpu.SemaphoreType.DMA((1,))],
  )
  cost = pl.CostEstimate(
    flops=0, transcendentals=0, bytes_accessed=2 * b * capacity * d * x_BxLxD.dtype.itemsize + positions_BxM.nbytes
  )
  return pl.pallas_call(
    _gather_kernel,
    out_shape=jax.ShapeDtypeStruct((b, capacity, d), x_BxLxD.dtype),
    grid_spec=grid_spec,
    compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel")),
    cost_estimate=cost,
    interpret=interpret,
    name="chunk_gather_rows",
  )(count_B.astype(jnp.int32), positions_BxM.astype(jnp.int32)[:, None, :], x_BxLxD)


def row_dma_ok(x_BxLxD: jax.Array, interpret=False) -> bool:
  """Whether one row can be copied alone: Mosaic slices a tiled array only at whole (sublane, lane) words, so the
  rows must be 32-bit (a packed bfloat16 row shares its word with the next) and span whole 128-lane tiles. The
  interpreter has no lane tiles, so there any 32-bit row goes (tests reach the gather kernel with tiny D)."""
  return x_BxLxD.dtype.itemsize == 4 and (bool(interpret) or x_BxLxD.shape[-1] % 128 == 0)


def downsample(x_BxLxD: jax.Array, keep_BxL: jax.Array, capacity: int, *, tiles: Tiles = TPU, interpret=False):
  """(z_BxMxD, chunk_lens_BxM, valid_BxM) exactly as `reference.downsample`.

  Rows that can be DMA'd alone (`row_dma_ok`) come from the DMA gather; others are selected by the one-hot pool over
  the kept positions (reads all L rows once).
  """
  positions_BxM, valid_BxM = reference.chunk_positions(keep_BxL, capacity)
  if row_dma_ok(x_BxLxD, interpret):
    z_BxMxD = gather_rows(x_BxLxD, positions_BxM, valid_BxM.sum(axis=1), capacity, tiles=tiles, interpret=interpret)
  else:
    z_BxMxD = segment_pool(
      x_BxLxD,
      reference.chunk_index(keep_BxL, capacity),
      capacity,
      "sum",
      kept_rows(keep_BxL, capacity),
      tiles=tiles,
      interpret=interpret,
    )
  return z_BxMxD, chunk_lens(keep_BxL, capacity, valid_BxM), valid_BxM
