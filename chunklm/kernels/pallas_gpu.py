"""Pallas GPU kernels (Triton backend) for the chunk ops; same signatures as reference.py plus keyword-only `tiles` and
`interpret` (False on a GPU; True runs them in Pallas's generic interpreter, on CPU or as plain XLA on a GPU).

Why Triton and not Mosaic GPU (jax 0.10.2): these ops are ragged, memory-bound gathers and segment sums where every
lane has its own row index. Triton says that directly (a vector of row offsets, masked loads and stores) on any
NVIDIA GPU from Ampere (A100) to Hopper (H100/H200). Mosaic GPU is built around TMA copies of rectangular tiles and
warpgroup MMA (sm_90a+): a per-row gather needs one TMA per row and manual layouts, for no gain on a memory-bound op.
And Mosaic GPU's interpreter supports only single-block grids, while these kernels run in the generic interpreter with
their real grids, so they are tested on CPU; their Triton lowering is also checked on CPU (`jax.export` for 'cuda').

Shapes: B batch, L positions, M chunk slots (`capacity`), D features; `chunk_idx_BxL` non-decreasing along L with
values in [0, M) (as `reference.chunk_index` returns). Each program owns one output tile:
  upsample / downsample: grid (B, L or M tiles, D tiles); a gather of rows by index (z stays in L2: ~5 positions share
      a chunk row). Only the needed rows are read.
  segment_pool: grid (B, M tiles, D tiles); the program loops over exactly the positions of its chunks ([start, end)
      from a searchsorted table), adding rows with exact one-hot matmuls on the tensor cores (`onehot.py`).
  ema_scan: grid (B, D tiles, row chunks); two passes (the states entering each row chunk come from its predecessors'
      last states, a small scan in plain JAX), the recurrence in float32 registers. The backward runs the adjoint
      recurrence the same way in reverse.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from chunklm.kernels import reference
from chunklm.kernels.bookkeeping import check_ndim, chunk_lens
from chunklm.kernels.onehot import onehot_matmul
from chunklm.kernels.tuning import GPU, Tiles, fit

ANY = pl.BlockSpec(memory_space=pl.ANY)  # whole array in global memory; programs index it themselves


def _params(num_warps: int = 4):
  return plgpu.CompilerParams(num_warps=num_warps, num_stages=2)


def _block(dim: int, block: int, at_least: int = 1) -> int:
  """Triton blocks are powers of two: `block`, or the smallest power of two covering a shorter axis (at least
  `at_least`: a Triton dot needs 16 in every dimension)."""
  return max(at_least, min(block, pl.next_power_of_2(dim)))


def _cols(j, block_d: int, d: int):
  """Feature offsets of D tile j (clamped in bounds) and their mask."""
  col = j * block_d + jnp.arange(block_d)
  return jnp.minimum(col, d - 1), col < d


# --------------------------------------------------------------------------------------------- gathers (upsample, down)


def _gather_kernel(idx_ref, src_ref, o_ref, *, rows_in: int, rows_out: int, d: int, block_r: int, block_d: int):
  """o[b, r] = src[b, idx[b, r]] for the rows r of this tile; idx < 0 (or out of range) gives a zero row."""
  b, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  r0 = i * block_r
  in_out = r0 + jnp.arange(block_r) < rows_out
  src_row = plgpu.load(idx_ref.at[b, pl.ds(r0, block_r)], mask=in_out, other=-1)
  hit = (src_row >= 0) & (src_row < rows_in) & in_out
  col, in_d = _cols(j, block_d, d)
  rows = plgpu.load(
    src_ref.at[b, jnp.clip(src_row, 0, rows_in - 1)[:, None], col[None, :]], mask=hit[:, None] & in_d[None, :], other=0
  )
  plgpu.store(
    o_ref.at[b, pl.ds(r0, block_r), pl.ds(j * block_d, block_d)],
    rows.astype(o_ref.dtype),
    mask=in_out[:, None] & in_d[None, :],
  )


def _gather(src_BxNxD, idx_BxR, block_r: int, block_d: int, interpret, name: str):
  b, n, d = src_BxNxD.shape
  rows = idx_BxR.shape[1]
  br, bd = _block(rows, block_r), _block(d, block_d)
  cost = pl.CostEstimate(
    flops=0, transcendentals=0, bytes_accessed=2 * b * rows * d * src_BxNxD.dtype.itemsize + idx_BxR.nbytes
  )
  return pl.pallas_call(
    functools.partial(_gather_kernel, rows_in=n, rows_out=rows, d=d, block_r=br, block_d=bd),
    out_shape=jax.ShapeDtypeStruct((b, rows, d), src_BxNxD.dtype),
    grid=(b, pl.cdiv(rows, br), pl.cdiv(d, bd)),
    in_specs=[ANY, ANY],
    out_specs=ANY,
    compiler_params=_params(),
    cost_estimate=cost,
    interpret=interpret,
    name=name,
  )(idx_BxR.astype(jnp.int32), src_BxNxD)


@functools.partial(jax.jit, static_argnames=("tiles", "interpret"))
def upsample(
  z_BxMxD: jax.Array,
  chunk_idx_BxL: jax.Array,
  mask_BxL: jax.Array | None = None,
  *,
  tiles: Tiles = GPU,
  interpret=False,
) -> jax.Array:
  """x_BxLxD with x[b, t] = z[b, chunk_idx[b, t]], and zero where mask_BxL (if given) is False."""
  check_ndim(z_BxMxD, "z_BxMxD", 3)
  idx_BxL = chunk_idx_BxL.astype(jnp.int32)
  if mask_BxL is not None:
    idx_BxL = jnp.where(mask_BxL, idx_BxL, -1)
  return _gather(z_BxMxD, idx_BxL, tiles.block_l, tiles.block_d, interpret, "chunk_upsample")


@functools.partial(jax.jit, static_argnames=("capacity", "tiles", "interpret"))
def downsample(x_BxLxD: jax.Array, keep_BxL: jax.Array, capacity: int, *, tiles: Tiles = GPU, interpret=False):
  """(z_BxMxD, chunk_lens_BxM, valid_BxM) exactly as `reference.downsample`; z gathers only the kept rows."""
  check_ndim(x_BxLxD, "x_BxLxD", 3)
  positions_BxM, valid_BxM = reference.chunk_positions(keep_BxL, capacity)
  rows_BxM = jnp.where(valid_BxM, positions_BxM, -1)
  z_BxMxD = _gather(x_BxLxD, rows_BxM, tiles.block_m, tiles.block_d, interpret, "chunk_downsample")
  return z_BxMxD, chunk_lens(keep_BxL, capacity, valid_BxM), valid_BxM


# ------------------------------------------------------------------------------------------------------- segment pool


def _pool_kernel(
  start_ref, idx_ref, x_ref, o_ref, *, d: int, capacity: int, block_l: int, block_m: int, block_d: int, mean: bool
):
  b, n, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  start, end = start_ref[b, n], start_ref[b, n + 1]  # the positions of chunks [n*block_m, (n+1)*block_m)
  chunk_Mx1 = (n * block_m + jnp.arange(block_m))[:, None]
  _, in_d = _cols(j, block_d, d)

  def body(t, carry):
    acc_MxD, cnt_M = carry
    l0 = start + t * block_l
    in_l = l0 + jnp.arange(block_l) < end
    idx_L = plgpu.load(idx_ref.at[b, pl.ds(l0, block_l)], mask=in_l, other=-1)
    x_LxD = plgpu.load(
      x_ref.at[b, pl.ds(l0, block_l), pl.ds(j * block_d, block_d)], mask=in_l[:, None] & in_d[None, :], other=0
    )
    sel_MxL = idx_L[None, :] == chunk_Mx1
    return acc_MxD + onehot_matmul(sel_MxL, x_LxD), cnt_M + jnp.sum(sel_MxL.astype(jnp.float32), axis=1)

  init = (jnp.zeros((block_m, block_d), jnp.float32), jnp.zeros((block_m,), jnp.float32))
  acc_MxD, cnt_M = jax.lax.fori_loop(0, pl.cdiv(end - start, block_l), body, init)
  if mean:
    acc_MxD = acc_MxD / jnp.maximum(cnt_M, 1.0)[:, None]
  in_m = chunk_Mx1[:, 0] < capacity
  plgpu.store(
    o_ref.at[b, pl.ds(n * block_m, block_m), pl.ds(j * block_d, block_d)],
    acc_MxD.astype(o_ref.dtype),
    mask=in_m[:, None] & in_d[None, :],
  )


@functools.partial(jax.jit, static_argnames=("capacity", "mode", "tiles", "interpret"))
def segment_pool(
  x_BxLxD: jax.Array, chunk_idx_BxL: jax.Array, capacity: int, mode: str = "sum", *, tiles: Tiles = GPU, interpret=False
) -> jax.Array:
  """z_BxMxD (M = capacity): sum or mean of the rows of each chunk; empty chunks are zero."""
  check_ndim(x_BxLxD, "x_BxLxD", 3)
  if mode not in ("sum", "mean"):
    raise ValueError(f"segment_pool mode must be 'sum' or 'mean', got {mode!r}")
  b, length, d = x_BxLxD.shape
  dot_min = 1 if interpret else 16  # the interpreter takes any block; Triton's dot needs 16
  bm, bl, bd = (
    _block(capacity, tiles.block_m, dot_min),
    _block(length, tiles.block_l, dot_min),
    _block(d, tiles.block_d, dot_min),
  )
  n_m = pl.cdiv(capacity, bm)
  idx_BxL = chunk_idx_BxL.astype(jnp.int32)
  start_BxN = jax.vmap(jnp.searchsorted, (0, None))(idx_BxL, jnp.arange(n_m + 1, dtype=jnp.int32) * bm)
  passes = 1 if x_BxLxD.dtype == jnp.bfloat16 else 3
  cost = pl.CostEstimate(
    flops=2 * passes * b * length * bm * d,
    transcendentals=0,
    bytes_accessed=x_BxLxD.nbytes + idx_BxL.nbytes + b * capacity * d * x_BxLxD.dtype.itemsize,
  )
  return pl.pallas_call(
    functools.partial(_pool_kernel, d=d, capacity=capacity, block_l=bl, block_m=bm, block_d=bd, mean=mode == "mean"),
    out_shape=jax.ShapeDtypeStruct((b, capacity, d), x_BxLxD.dtype),
    grid=(b, n_m, pl.cdiv(d, bd)),
    in_specs=[ANY, ANY, ANY],
    out_specs=ANY,
    compiler_params=_params(),
    cost_estimate=cost,
    interpret=interpret,
    name="chunk_segment_pool",
  )(start_BxN.astype(jnp.int32), idx_BxL, x_BxLxD)


# --------------------------------------------------------------------------------------------------------- EMA scan
# Grid (B, D tiles, row chunks of `block_scan` chunk slots), so the parallelism does not hang on B x D. Pass 1 scans
# each row chunk from a zero state and keeps its last state; the states entering the row chunks follow in plain JAX
# (a scan over M / block_scan rows of D); pass 2 rescans each row chunk from its entering state and writes its rows:
# z is read twice and zbar written once. Inside a program the recurrence runs row by row in float32 registers,
# several rows' loads issued together (they do not depend on the carried state).


def _unroll(rows: int) -> int:
  return max(u for u in (8, 4, 2, 1) if rows % u == 0)


def _linear_scan(a_BxC: jax.Array, b_BxCxD: jax.Array) -> jax.Array:
  """x_c = a_c x_{c-1} + b_c along axis 1, x_{-1} = 0."""

  def combine(left, right):
    return left[0] * right[0], right[0][..., None] * left[1] + right[1]

  return jax.lax.associative_scan(combine, (a_BxC, b_BxCxD), axis=1)[1]


def _chunk_products(v_BxM: jax.Array, rows: int) -> jax.Array:
  """Product of v over each row chunk (padding counts as 1)."""
  b, m = v_BxM.shape
  n_c = pl.cdiv(m, rows)
  return jnp.pad(v_BxM, ((0, 0), (0, n_c * rows - m)), constant_values=1.0).reshape(b, n_c, rows).prod(-1)


def _ema_kernel(*refs, capacity: int, d: int, block_d: int, rows: int, last_only: bool):
  """zbar = p z + (1 - p) zbar over this program's row chunk: from zero, keeping the last state (last_only), or from
  the entering state, writing every row."""
  b, j, c = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  _, in_d = _cols(j, block_d, d)
  cols = pl.ds(j * block_d, block_d)
  if last_only:
    z_ref, p_ref, o_ref = refs
    state_D = jnp.zeros((block_d,), jnp.float32)
  else:
    z_ref, p_ref, init_ref, o_ref = refs
    state_D = plgpu.load(init_ref.at[b, c, cols], mask=in_d, other=0)
  unroll = _unroll(rows)

  def body(t, zbar_D):
    for r in range(unroll):
      m = c * rows + t * unroll + r
      row = jnp.minimum(m, capacity - 1)
      z_D = plgpu.load(z_ref.at[b, row, cols], mask=in_d, other=0).astype(jnp.float32)
      p = p_ref[b, row].astype(jnp.float32)
      new_D = p * z_D + (1.0 - p) * zbar_D
      if not last_only:
        plgpu.store(o_ref.at[b, row, cols], new_D.astype(o_ref.dtype), mask=in_d & (m < capacity))
      zbar_D = jnp.where(m < capacity, new_D, zbar_D)
    return zbar_D

  state_D = jax.lax.fori_loop(0, rows // unroll, body, state_D)
  if last_only:
    plgpu.store(o_ref.at[b, c, cols], state_D, mask=in_d)


def _scan_call(kernel, args, out_shape, grid, bd: int, cost, interpret, name: str):
  return pl.pallas_call(
    kernel,
    out_shape=out_shape,
    grid=grid,
    in_specs=[ANY] * len(args),
    out_specs=tuple(ANY for _ in out_shape) if isinstance(out_shape, tuple) else ANY,
    compiler_params=_params(max(1, min(4, bd // 32))),
    cost_estimate=cost,
    interpret=interpret,
    name=name,
  )(*args)


@functools.partial(jax.jit, static_argnames=("tiles", "interpret"))
def ema_scan(z_BxMxD: jax.Array, p_BxM: jax.Array, *, tiles: Tiles = GPU, interpret=False) -> jax.Array:
  """zbar_BxMxD, zbar_c = p_c z_c + (1 - p_c) zbar_{c-1} (zbar_{-1} = 0), accumulated in float32."""
  check_ndim(z_BxMxD, "z_BxMxD", 3)
  b, m, d = z_BxMxD.shape
  bd, rows = _block(d, tiles.block_d), fit(m, tiles.block_scan)
  n_c = pl.cdiv(m, rows)
  grid = (b, pl.cdiv(d, bd), n_c)
  kw = dict(capacity=m, d=d, block_d=bd, rows=rows)
  cost = pl.CostEstimate(flops=3 * b * m * d, transcendentals=0, bytes_accessed=z_BxMxD.nbytes + p_BxM.nbytes)
  ends_BxCxD = _scan_call(
    functools.partial(_ema_kernel, last_only=True, **kw),
    (z_BxMxD, p_BxM),
    jax.ShapeDtypeStruct((b, n_c, d), jnp.float32),
    grid,
    bd,
    cost,
    interpret,
    "chunk_ema_ends",
  )
  decay_BxC = _chunk_products(1.0 - p_BxM.astype(jnp.float32), rows)
  done_BxCxD = _linear_scan(decay_BxC, ends_BxCxD)  # zbar at the end of each row chunk
  init_BxCxD = jnp.concatenate([jnp.zeros_like(done_BxCxD[:, :1]), done_BxCxD[:, :-1]], axis=1)
  cost = pl.CostEstimate(flops=3 * b * m * d, transcendentals=0, bytes_accessed=2 * z_BxMxD.nbytes + p_BxM.nbytes)
  return _scan_call(
    functools.partial(_ema_kernel, last_only=False, **kw),
    (z_BxMxD, p_BxM, init_BxCxD),
    jax.ShapeDtypeStruct(z_BxMxD.shape, z_BxMxD.dtype),
    grid,
    bd,
    cost,
    interpret,
    "chunk_ema_scan",
  )


def _ema_bwd_kernel(*refs, capacity: int, d: int, block_d: int, rows: int, first_only: bool):
  """The adjoint a = g + q a_next (q_c = 1 - p_{c+1}) backwards over this program's row chunk: from zero, keeping the
  state at its first row (first_only), or from the entering state, writing dz = p a and dp partials."""
  b, j, c = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  _, in_d = _cols(j, block_d, d)
  cols = pl.ds(j * block_d, block_d)
  if first_only:
    g_ref, q_ref, o_ref = refs
    adj_D = jnp.zeros((block_d,), jnp.float32)
  else:
    g_ref, q_ref, p_ref, z_ref, zbar_ref, init_ref, dz_ref, dp_ref = refs
    adj_D = plgpu.load(init_ref.at[b, c, cols], mask=in_d, other=0)
  unroll = _unroll(rows)

  def body(t, adj_D):
    for r in range(unroll):
      m = c * rows + rows - 1 - (t * unroll + r)
      row = jnp.minimum(m, capacity - 1)
      g_D = plgpu.load(g_ref.at[b, row, cols], mask=in_d, other=0).astype(jnp.float32)
      new_D = g_D + q_ref[b, row] * adj_D
      if not first_only:
        z_D = plgpu.load(z_ref.at[b, row, cols], mask=in_d, other=0).astype(jnp.float32)
        before_D = plgpu.load(zbar_ref.at[b, jnp.maximum(row - 1, 0), cols], mask=in_d & (row > 0), other=0).astype(
          jnp.float32
        )
        p = p_ref[b, row].astype(jnp.float32)
        plgpu.store(dz_ref.at[b, row, cols], (p * new_D).astype(dz_ref.dtype), mask=in_d & (m < capacity))
        plgpu.store(dp_ref.at[b, j, row], jnp.sum(jnp.where(in_d, new_D * (z_D - before_D), 0.0)), mask=m < capacity)
      adj_D = jnp.where(m < capacity, new_D, adj_D)
    return adj_D

  adj_D = jax.lax.fori_loop(0, rows // unroll, body, adj_D)
  if first_only:
    plgpu.store(o_ref.at[b, c, cols], adj_D, mask=in_d)


@functools.partial(jax.jit, static_argnames=("tiles", "interpret"))
def ema_scan_bwd(
  z_BxMxD: jax.Array,
  p_BxM: jax.Array,
  zbar_BxMxD: jax.Array,
  g_BxMxD: jax.Array,
  *,
  tiles: Tiles = GPU,
  interpret=False,
) -> tuple[jax.Array, jax.Array]:
  """(dz_BxMxD, dp_BxM) for the cotangent g = dL/dzbar: the adjoint a_c = g_c + (1 - p_{c+1}) a_{c+1} in reverse,
  dz_c = p_c a_c, dp_c = sum_D a_c (z_c - zbar_{c-1})."""
  b, m, d = z_BxMxD.shape
  bd, rows = _block(d, tiles.block_d), fit(m, tiles.block_scan)
  n_c, n_d = pl.cdiv(m, rows), pl.cdiv(d, bd)
  grid = (b, n_d, n_c)
  kw = dict(capacity=m, d=d, block_d=bd, rows=rows)
  p_BxM = p_BxM.astype(jnp.float32)
  q_BxM = jnp.concatenate([1.0 - p_BxM[:, 1:], jnp.zeros((b, 1), jnp.float32)], axis=1)  # decay seen from c + 1
  cost = pl.CostEstimate(flops=2 * b * m * d, transcendentals=0, bytes_accessed=g_BxMxD.nbytes + q_BxM.nbytes)
  starts_BxCxD = _scan_call(
    functools.partial(_ema_bwd_kernel, first_only=True, **kw),
    (g_BxMxD, q_BxM),
    jax.ShapeDtypeStruct((b, n_c, d), jnp.float32),
    grid,
    bd,
    cost,
    interpret,
    "chunk_ema_bwd_starts",
  )
  decay_BxC = _chunk_products(q_BxM, rows)
  done_BxCxD = _linear_scan(decay_BxC[:, ::-1], starts_BxCxD[:, ::-1])[:, ::-1]  # adjoint at each chunk's first row
  init_BxCxD = jnp.concatenate([done_BxCxD[:, 1:], jnp.zeros_like(done_BxCxD[:, :1])], axis=1)
  cost = pl.CostEstimate(flops=8 * b * m * d, transcendentals=0, bytes_accessed=5 * z_BxMxD.nbytes + 2 * p_BxM.nbytes)
  dz_BxMxD, dp_BxNxM = _scan_call(
    functools.partial(_ema_bwd_kernel, first_only=False, **kw),
    (g_BxMxD, q_BxM, p_BxM, z_BxMxD, zbar_BxMxD, init_BxCxD),
    (jax.ShapeDtypeStruct(z_BxMxD.shape, z_BxMxD.dtype), jax.ShapeDtypeStruct((b, n_d, m), jnp.float32)),
    grid,
    bd,
    cost,
    interpret,
    "chunk_ema_scan_bwd",
  )
  return dz_BxMxD, dp_BxNxM.sum(axis=1)
