"""Chunk, dechunk and the ratio loss of one H-Net stage (paper Sec. 2.2).

chunk:   keep the boundary positions (b_t = 1) in order, in a static number of slots M. Document starts are always
         kept; if a window has more boundaries than slots, the *last* other boundaries are dropped (counted as
         overflow) and their bytes join the previous kept chunk. Because K slots are reserved for document starts,
         whether a boundary is kept depends only on earlier positions: overflow never breaks causality.
dechunk: EMA smoothing over chunks, zbar_c = P_c zhat_c + (1 - P_c) zbar_{c-1} with P_c = clamp(p, 1e-4, 1 - 1e-4) at
         the chunk's boundary and P_c = 1 at document starts (a restart, so nothing crosses documents); then every
         position takes zbar of its chunk, times STE(c_t) with c_t = max(p_t, 1 - p_t), forward value 1.
ratio loss: L = N/(N-1) ((N-1) F G + (1-F)(1-G)), F = mean(b), G = mean(p) over a stage's valid positions, F from
         the router's own decisions (before overflow).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from chunklm.kernels import api
from chunklm.model.routing import Routing, document_starts


class Chunks(NamedTuple):
  z_BxMxD: jax.Array  # chunk vectors (the encoder state at each kept boundary)
  valid_BxM: jax.Array  # slot holds a chunk
  segment_ids_BxM: jax.Array  # document of each chunk (-1 for empty slots)
  p_BxM: jax.Array  # boundary probability at each chunk's start
  starts_BxM: jax.Array  # chunk starts a document
  chunk_idx_BxL: jax.Array  # chunk of every outer position
  keep_BxL: jax.Array  # boundaries actually kept (b minus overflow)
  positions_BxM: jax.Array  # outer position where each chunk starts


def keep_within_capacity(b_BxL: jax.Array, starts_BxL: jax.Array, capacity: int, doc_slots: int) -> jax.Array:
  """b restricted to `capacity` chunks: every document start, plus the first (capacity - doc_slots) others."""
  others_BxL = b_BxL & ~starts_BxL
  rank_BxL = jnp.cumsum(others_BxL.astype(jnp.int32), axis=1) - 1
  return starts_BxL | (others_BxL & (rank_BxL < capacity - doc_slots))


def chunk(
  h_BxLxD: jax.Array,
  routing: Routing,
  segment_ids_BxL: jax.Array,
  valid_BxL: jax.Array,
  capacity: int,
  doc_slots: int,
  exact: bool,
  impl: str = "auto",
  pooling: str = "select",
) -> Chunks:
  """The stage's chunks; `impl` is the chunk-op backend (`kernels.api.IMPLS`). A chunk's vector is the state at its
  first position (pooling "select") or the mean of its positions' states ("mean")."""
  starts_BxL = document_starts(segment_ids_BxL) & valid_BxL
  keep_BxL = routing.b_BxL if exact else keep_within_capacity(routing.b_BxL, starts_BxL, capacity, doc_slots)
  chunk_idx_BxL = api.chunk_index(keep_BxL, capacity)
  positions_BxM, valid_BxM = api.chunk_positions(keep_BxL, capacity)
  if pooling == "mean":
    z_BxMxD = api.segment_pool(h_BxLxD, chunk_idx_BxL, capacity, "mean", impl=impl)
  else:
    z_BxMxD, _, valid_BxM = api.downsample(h_BxLxD, keep_BxL, capacity, impl=impl)

  def at_chunks(v_BxL):
    return jnp.take_along_axis(v_BxL, positions_BxM, axis=1)

  return Chunks(
    z_BxMxD=z_BxMxD,
    valid_BxM=valid_BxM,
    segment_ids_BxM=jnp.where(valid_BxM, at_chunks(segment_ids_BxL), -1),
    p_BxM=at_chunks(routing.p_BxL),
    starts_BxM=at_chunks(starts_BxL) & valid_BxM,
    chunk_idx_BxL=chunk_idx_BxL,
    keep_BxL=keep_BxL,
    positions_BxM=positions_BxM,
  )


def ste_one(x: jax.Array) -> jax.Array:
  """Exactly 1 in the forward pass (x - x is exactly 0), identity gradient (the paper's STE on the confidence)."""
  return 1.0 + (x - jax.lax.stop_gradient(x))


def round_bf16(x: jax.Array) -> jax.Array:
  """x rounded to bfloat16 and widened back to float32 (the official dechunk's precision)."""
  return x.astype(jnp.bfloat16).astype(jnp.float32)


def official_ema_inputs(zhat_BxMxD: jax.Array, p_BxM: jax.Array, restart_BxM: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(z, p) for `api.ema_scan` that reproduce the official DeChunkLayer, which runs the EMA through Mamba2's scan
  kernel in bfloat16: p clamped to [1e-4, 1 - 1e-4] at every chunk (document starts too), dt = log(1 / (1 - p)) and
  x = zhat / dt and B = p rounded to bfloat16, then zbar_c = exp(-dt_c) zbar_{c-1} + dt_c B_c x_c (state reset at a
  document start). In the form zbar_c = q_c z'_c + (1 - q_c) zbar_{c-1}: q_c = 1 - exp(-dt_c), z'_c = dt_c B_c x_c / q_c
  (q = 1 and z' = dt B x at a restart). The caller rounds zbar to bfloat16, as the kernel's output is."""
  p = jnp.clip(p_BxM, 1e-4, 1 - 1e-4)
  dt_BxM = round_bf16(jnp.log(1.0 / (1.0 - p)))
  u_BxMxD = (dt_BxM * round_bf16(p))[..., None] * round_bf16(zhat_BxMxD.astype(jnp.float32) / dt_BxM[..., None])
  q_BxM = jnp.where(restart_BxM, 1.0, -jnp.expm1(-dt_BxM))
  return u_BxMxD / q_BxM[..., None], q_BxM


def dechunk(
  zhat_BxMxD: jax.Array, chunks: Chunks, routing: Routing, impl: str = "auto", compat: str = "chunklm"
) -> jax.Array:
  """Smoothed, upsampled main-network output, scaled by STE(confidence): y_BxLxD in float32; `impl` as for chunk.
  The EMA averages in float32 and returns, and the upsample moves, zhat's dtype (the model's compute dtype).
  compat "official" smooths as the official code does (`official_ema_inputs`)."""
  restart_BxM = chunks.starts_BxM | ~chunks.valid_BxM
  if compat == "official":
    z_BxMxD, p_BxM = official_ema_inputs(zhat_BxMxD, chunks.p_BxM, restart_BxM)
    zbar_BxMxD = round_bf16(api.ema_scan(z_BxMxD, p_BxM, impl=impl))
  else:
    p_BxM = jnp.where(restart_BxM, 1.0, jnp.clip(chunks.p_BxM, 1e-4, 1 - 1e-4))
    zbar_BxMxD = api.ema_scan(zhat_BxMxD, p_BxM, impl=impl)
  up_BxLxD = api.upsample(zbar_BxMxD, chunks.chunk_idx_BxL, impl=impl)
  confidence_BxL = jnp.where(routing.b_BxL, routing.p_BxL, 1.0 - routing.p_BxL)
  return up_BxLxD * ste_one(confidence_BxL)[..., None]


def ratio_loss(f: jax.Array, g: jax.Array, target) -> jax.Array:
  """N/(N-1) ((N-1) F G + (1-F)(1-G)); minimum 1 at F = G = 1/N. `target` N is a float or a traced scalar."""
  n = target if isinstance(target, jax.Array) else float(target)
  return n / (n - 1.0) * ((n - 1.0) * f * g + (1.0 - f) * (1.0 - g))
