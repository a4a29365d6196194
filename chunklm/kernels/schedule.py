"""Tile schedules for sorted segment ops on a static grid (plain JAX, computed outside the kernels).

Chunk ids are non-decreasing along L, so for an op whose output tiles read a contiguous, monotone range of input tiles
(segment_pool: chunk tile n reads the position tiles holding its chunks; upsample: position tile n reads the chunk
tiles its positions belong to), the (output tile, input tile) pairs form a staircase of at most n_out + n_in - 1
steps. That bound is static, so it can be a grid axis; the schedule is scalar-prefetched and the steps past a row's
end do nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FIRST, LAST, ACTIVE = 1, 2, 4  # schedule flags: first / last step of an output tile, accumulate at this step


def schedule(lo_BxN: jax.Array, hi_BxN: jax.Array, n_in: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(out_tile_BxS, in_tile_BxS, flags_BxS), S = N + n_in - 1: output tile n reads input tiles lo..hi, in order.

  An output tile with hi < lo reads nothing (one step, FIRST | LAST, not ACTIVE: it is written as zeros). The ranges
  must be monotone (hi_n <= lo_{n+1} for nonempty tiles), which sorted chunk ids guarantee; then S steps suffice.
  """
  n_out = lo_BxN.shape[1]
  nonempty_BxN = hi_BxN >= lo_BxN
  count_BxN = jnp.where(nonempty_BxN, hi_BxN - lo_BxN + 1, 1)
  end_BxN = jnp.cumsum(count_BxN, axis=1)
  s_S = jnp.arange(n_out + n_in - 1, dtype=jnp.int32)
  tile_BxS = jnp.sum(end_BxN[:, None, :] <= s_S[None, :, None], axis=-1, dtype=jnp.int32)
  in_range_BxS = tile_BxS < n_out
  tile_BxS = jnp.minimum(tile_BxS, n_out - 1)

  def take(v_BxN):
    return jnp.take_along_axis(v_BxN, tile_BxS, axis=1)

  k_BxS = s_S[None] - (take(end_BxN) - take(count_BxN))
  lo, hi = take(lo_BxN), take(jnp.maximum(hi_BxN, lo_BxN))
  in_tile_BxS = jnp.clip(jnp.clip(lo + k_BxS, lo, hi), 0, n_in - 1)  # past the end: stays on the last pair
  flags_BxS = FIRST * (k_BxS == 0) + LAST * (k_BxS == take(count_BxN) - 1) + ACTIVE * take(nonempty_BxN)
  return tile_BxS, in_tile_BxS, jnp.where(in_range_BxS, flags_BxS, 0).astype(jnp.int32)
