"""Plain-XLA reference implementations of the chunk ops (the ground truth every kernel is tested against).

Shapes: B batch, L positions of the outer sequence, M chunk slots, D features.
  downsample(x_BxLxD, keep_BxL, M)     -> z_BxMxD (kept rows in order), chunk_lens_BxM, valid_BxM
  upsample(z_BxMxD, chunk_idx_BxL)     -> x_BxLxD (each position takes its chunk's row)
  segment_pool(x_BxLxD, chunk_idx_BxL, M, mode) -> z_BxMxD (sum or mean of each chunk's rows)
  ema_scan(z_BxMxD, p_BxM)             -> zbar_BxMxD with zbar_c = p_c z_c + (1 - p_c) zbar_{c-1}, zbar_{-1} = 0
`chunk_idx_BxL = cumsum(keep) - 1` clipped to [0, M-1]: a position belongs to the last kept chunk at or before it.
If more than M positions are kept, the last ones are dropped and their positions join chunk M-1.
These functions accept any chunk_idx in [0, M); the Pallas kernels (api.py) also need it non-decreasing along L, as
`chunk_index` makes it. All arithmetic on values is float32; the results have the input's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def chunk_index(keep_BxL: jax.Array, capacity: int) -> jax.Array:
  """chunk_idx_BxL: index of the chunk each position belongs to (int32, in [0, capacity-1])."""
  return jnp.clip(jnp.cumsum(keep_BxL.astype(jnp.int32), axis=1) - 1, 0, capacity - 1)


def _batch_index(shape: tuple[int, int]) -> jax.Array:
  return jnp.broadcast_to(jnp.arange(shape[0])[:, None], shape)


def chunk_positions(keep_BxL: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
  """(positions_BxM, valid_BxM): the position where each chunk starts (0 for empty slots) and slot occupancy."""
  b, length = keep_BxL.shape
  rank_BxL = jnp.cumsum(keep_BxL.astype(jnp.int32), axis=1) - 1
  slot_BxL = jnp.where(keep_BxL, rank_BxL, capacity)  # capacity = out of range: dropped
  positions_BxM = (
    jnp.zeros((b, capacity), jnp.int32)
    .at[_batch_index((b, length)), slot_BxL]
    .set(jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length)), mode="drop")
  )
  count_B = jnp.minimum(keep_BxL.sum(axis=1), capacity)
  return positions_BxM, jnp.arange(capacity)[None] < count_B[:, None]


def downsample(x_BxLxD: jax.Array, keep_BxL: jax.Array, capacity: int):
  """Gathers the kept rows in order into `capacity` slots; empty slots are zero."""
  b, length = keep_BxL.shape
  positions_BxM, valid_BxM = chunk_positions(keep_BxL, capacity)
  z_BxMxD = jnp.take_along_axis(x_BxLxD, positions_BxM[..., None], axis=1)
  z_BxMxD = jnp.where(valid_BxM[..., None], z_BxMxD, 0).astype(x_BxLxD.dtype)
  chunk_idx_BxL = chunk_index(keep_BxL, capacity)
  lens_BxM = jnp.zeros((b, capacity), jnp.int32).at[_batch_index((b, length)), chunk_idx_BxL].add(1)
  return z_BxMxD, jnp.where(valid_BxM, lens_BxM, 0), valid_BxM


def upsample(z_BxMxD: jax.Array, chunk_idx_BxL: jax.Array) -> jax.Array:
  return jnp.take_along_axis(z_BxMxD, chunk_idx_BxL[..., None].astype(jnp.int32), axis=1)


def segment_pool(x_BxLxD: jax.Array, chunk_idx_BxL: jax.Array, capacity: int, mode: str = "sum") -> jax.Array:
  if mode not in ("sum", "mean"):
    raise ValueError(f"segment_pool mode must be 'sum' or 'mean', got {mode!r}")
  b, length, d = x_BxLxD.shape
  idx = _batch_index((b, length))
  sums_BxMxD = jnp.zeros((b, capacity, d), jnp.float32).at[idx, chunk_idx_BxL].add(x_BxLxD.astype(jnp.float32))
  if mode == "mean":
    counts_BxM = jnp.zeros((b, capacity), jnp.float32).at[idx, chunk_idx_BxL].add(1.0)
    sums_BxMxD = sums_BxMxD / jnp.maximum(counts_BxM, 1.0)[..., None]
  return sums_BxMxD.astype(x_BxLxD.dtype)


def ema_scan(z_BxMxD: jax.Array, p_BxM: jax.Array) -> jax.Array:
  """The dechunk smoothing recurrence as an associative scan, accumulated in float32."""
  p = p_BxM.astype(jnp.float32)[..., None]
  decay_BxMx1 = 1.0 - p
  inject_BxMxD = p * z_BxMxD.astype(jnp.float32)

  def combine(left, right):
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r

  _, zbar_BxMxD = jax.lax.associative_scan(combine, (decay_BxMx1, inject_BxMxD), axis=1)
  return zbar_BxMxD.astype(z_BxMxD.dtype)
