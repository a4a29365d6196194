"""Local-window token merging with static shapes, and its inverse: MergeDNA's tokenizer step.

One merging block turns N tokens into at most M = `capacity` merged tokens. Token i joins token i - 1's group when
the merge probability of the edge between them, m_i, is >= 1/2 and the edge is allowed (both valid, same window);
a group is a run of tokens joined this way, and its merged token is the mean of its members (ToMe's size-weighted
average: every member already carries its own size). Groups past M are dropped (the overflow the caller counts).

Straight-through soft merging: the forward pass is exactly the hard merge above; the backward pass is that of a
soft merge in which edge i lends token i to token i - 1's group, and token i - 1 to token i's, each with weight
s_i = (m_i - stop_gradient(m_i)) / 2 (zero in the forward pass) times its size, in the weighted mean's numerator and
denominator alike. So d z_g / d s_i = w (x_lent - z_g) / size_g: raising m_i moves each neighbouring merged token
towards the other side's token (on a merged edge, where both sides are one group, towards the edge's two members),
which is the derivative of "merge a little more", and the merge scores get gradients from every loss downstream.

A source map (`group_BxN`: the merged token each input token went to, M for dropped and padding) composes across
blocks (`compose`), and `unmerge` copies every merged token back to its bases; at ratio 1 (no edge merged) merging
then unmerging returns the input exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Merged(NamedTuple):
  x_BxMxD: jax.Array  # merged tokens (0 where invalid)
  valid_BxM: jax.Array  # merged tokens that hold at least one base
  start_BxM: jax.Array  # position of each merged token's first base (int32; 0 where invalid)
  size_BxM: jax.Array  # bases per merged token (int32; 0 where invalid)
  group_BxN: jax.Array  # the merged token each input token joined; M for padding and for dropped groups
  overflow_B: jax.Array  # input tokens dropped because their group was past M (int32)


def allowed_edges(valid_BxN: jax.Array, start_BxN: jax.Array, window: int) -> jax.Array:
  """Edge i (token i - 1 to token i) may merge: both tokens valid and token i does not start a window."""
  prev_BxN = jnp.pad(valid_BxN[:, :-1], ((0, 0), (1, 0)))
  return valid_BxN & prev_BxN & (start_BxN % window != 0)


def _segment_sum(v_BxN, group_BxN, segments: int):
  """Per row: v summed into `segments` + 1 segments (the last collects dropped and padding tokens)."""
  return jax.vmap(lambda v, g: jax.ops.segment_sum(v, g, num_segments=segments + 1))(v_BxN, group_BxN)


def merge(
  x_BxNxD: jax.Array,
  valid_BxN: jax.Array,
  start_BxN: jax.Array,
  size_BxN: jax.Array,
  m_BxN: jax.Array,
  allowed_BxN: jax.Array,
  capacity: int,
) -> Merged:
  """Merges runs of tokens joined by allowed edges with m >= 1/2 into at most `capacity` tokens (module docstring)."""
  joined_BxN = allowed_BxN & (m_BxN >= 0.5)
  first_BxN = valid_BxN & ~joined_BxN
  index_BxN = jnp.cumsum(first_BxN.astype(jnp.int32), axis=1) - 1
  kept_BxN = valid_BxN & (index_BxN < capacity)
  group_BxN = jnp.where(kept_BxN, index_BxN, capacity)
  size = jnp.where(kept_BxN, size_BxN, 0)
  size_BxM = _segment_sum(size, group_BxN, capacity)[:, :capacity]
  big = jnp.iinfo(jnp.int32).max
  start_BxM = jax.vmap(lambda v, g: jax.ops.segment_min(v, g, num_segments=capacity + 1))(
    jnp.where(kept_BxN, start_BxN, big), group_BxN
  )[:, :capacity]
  valid_BxM = size_BxM > 0
  start_BxM = jnp.where(valid_BxM, start_BxM, 0)
  # straight-through soft terms: zero forward, d/dm_i backward (module docstring)
  st_BxN = jnp.where(allowed_BxN, m_BxN - jax.lax.stop_gradient(m_BxN), 0.0)[..., None].astype(x_BxNxD.dtype)
  x_prev_BxNxD = jnp.pad(x_BxNxD[:, :-1], ((0, 0), (1, 0), (0, 0)))
  group_prev_BxN = jnp.pad(group_BxN[:, :-1], ((0, 0), (1, 0)), constant_values=capacity)
  w_BxNx1 = size[..., None].astype(x_BxNxD.dtype)  # each member weighs its bases (0 where dropped)
  lend_BxNx1 = jnp.where(valid_BxN, size_BxN, 0)[..., None].astype(x_BxNxD.dtype)  # a dropped token may be lent
  lend_prev_BxNx1 = jnp.pad(lend_BxNx1[:, :-1], ((0, 0), (1, 0), (0, 0)))
  half = 0.5 * st_BxN
  lent_prev, lent = half * lend_prev_BxNx1, half * lend_BxNx1  # token i - 1 lent to i's group, token i to i - 1's
  total = _segment_sum(x_BxNxD * w_BxNx1 + lent_prev * x_prev_BxNxD, group_BxN, capacity)
  total = total + _segment_sum(lent * x_BxNxD, group_prev_BxN, capacity)
  weight = _segment_sum(w_BxNx1 + lent_prev, group_BxN, capacity) + _segment_sum(lent, group_prev_BxN, capacity)
  x_BxMxD = total[:, :capacity] / jnp.where(valid_BxM[..., None], weight[:, :capacity], 1.0)
  overflow_B = jnp.sum(valid_BxN & ~kept_BxN, axis=1).astype(jnp.int32)
  return Merged(x_BxMxD, valid_BxM, start_BxM.astype(jnp.int32), size_BxM.astype(jnp.int32), group_BxN, overflow_B)


def compose(src_BxL: jax.Array, group_BxN: jax.Array, capacity: int) -> jax.Array:
  """The source map one block later: base -> merged token of `group_BxN` (`capacity` where dropped or padding).
  `src_BxL` maps every base to one of the N input tokens, or to N (dropped earlier)."""
  padded_BxN1 = jnp.pad(group_BxN, ((0, 0), (0, 1)), constant_values=capacity)
  return jnp.take_along_axis(padded_BxN1, src_BxL, axis=1)


def unmerge(z_BxMxD: jax.Array, src_BxL: jax.Array) -> jax.Array:
  """Every base's merged token (zeros for bases whose token was dropped: src = M)."""
  padded = jnp.pad(z_BxMxD, ((0, 0), (0, 1), (0, 0)))
  return jnp.take_along_axis(padded, src_BxL[..., None], axis=1)
