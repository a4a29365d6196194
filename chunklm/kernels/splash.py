"""Causal self-attention with document masks and a sliding window by JAX's Splash attention kernel (TPU, Mosaic).

Splash (`jax.experimental.pallas.ops.tpu.splash_attention`) is a flash-attention kernel whose static mask is known
block by block when the kernel is built: blocks the causal mask or the window removes are skipped (neither loaded
nor computed), blocks they keep whole skip the mask. Document masks come in at run time as segment ids (`SegmentIds`:
query q may see key k only if their ids are equal). This wrapper gives it the model's layout and rules:

  - key k is visible to query q iff k <= q, same segment id, and q - k <= window when window > 0. That is Splash's
    `LocalMask` with window_size=(window, 0) (it keeps q - left <= k <= q + right), or `CausalMask` for window 0;
  - layout B x L x H x K in and out; the kernel takes one example H x L x K at a time, so the batch is a `vmap`;
  - the softmax scale 1/sqrt(K) is applied to q (Splash has no scale argument);
  - any L: Splash needs L a multiple of its blocks (multiples of 128), so L is padded up to a multiple of 128 with
    zero rows under a fresh segment id (one past the row's largest). Real queries never see the padded keys (they
    lie in the future of every real query, and in another document); each padded query sees at least itself, so
    no softmax row is empty. The padded rows are cut from the output, so values and gradients are exact;
  - blocks: the largest multiple of 128 up to `block` (default 512) that divides the padded length, the same for the
    forward, dq and dkv kernels. Tests pass a small `block` (128) to cross many block edges on tiny shapes.

There is no key-bias input: attention with a learned per-key bias (the delete gate) stays on XLA. head_dim up to
MAX_HEAD_DIM compiles for TPU v5e (ahead of time); larger heads run out of VMEM at 512-position blocks.
`interpret=True` runs the kernel in Pallas's generic interpreter (the kernel body as plain JAX ops) on any backend:
slow, for tests and debugging on CPU. Not the TPU interpreter (`pltpu.InterpretParams()`) that pallas_tpu.py's
kernels use in interpret mode: in JAX 0.10.2 it cannot run a vmapped kernel (the batch joins the grid, not the grid's
dimension semantics, and it fails on the length mismatch).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa

LANES = 128  # Splash's blocks (and so the padded length) are multiples of the TPU lane width
BLOCK = 512  # default block along queries and keys (forward and backward kernels); not yet measured on a TPU
MAX_HEAD_DIM = 512  # the largest head_dim known to fit in VMEM with BLOCK-sized blocks (v5e, float32)


def fit_block(length: int, block: int) -> int:
  """The block used for a padded length (a multiple of 128): the largest multiple of 128 up to `block` dividing it."""
  for size in range(min(block, length) // LANES * LANES, 0, -LANES):
    if length % size == 0:
      return size
  raise ValueError(f"length {length} must be a positive multiple of {LANES}")


def causal_window_mask(length: int, window: int) -> sa.Mask:
  """Splash's static mask for `length` positions: causal, and at most `window` keys back when window > 0."""
  if window:
    return sa.LocalMask((length, length), window_size=(window, 0), offset=0)
  return sa.CausalMask((length, length))


def _check(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segment_ids_BxL, window, block) -> None:
  if q_BxLxHxK.ndim != 4:
    raise ValueError(f"q_BxLxHxK must have 4 dimensions (batch, length, heads, head_dim), got shape {q_BxLxHxK.shape}")
  for name, x in (("k_BxLxHxK", k_BxLxHxK), ("v_BxLxHxK", v_BxLxHxK)):
    if x.shape != q_BxLxHxK.shape or x.dtype != q_BxLxHxK.dtype:
      raise ValueError(f"{name} must match q: {q_BxLxHxK.shape} {q_BxLxHxK.dtype}, got {x.shape} {x.dtype}")
  if not jnp.issubdtype(q_BxLxHxK.dtype, jnp.floating):
    raise ValueError(f"q, k and v must be floating point, got {q_BxLxHxK.dtype}")
  if segment_ids_BxL.shape != q_BxLxHxK.shape[:2] or not jnp.issubdtype(segment_ids_BxL.dtype, jnp.integer):
    raise ValueError(
      f"segment_ids_BxL must be integers of shape {q_BxLxHxK.shape[:2]}, got {segment_ids_BxL.shape} "
      f"{segment_ids_BxL.dtype}"
    )
  if not isinstance(window, int) or window < 0:
    raise ValueError(f"window must be an int >= 0 (0 = no window), got {window!r}")
  if not isinstance(block, int) or block <= 0 or block % LANES:
    raise ValueError(f"block must be a positive multiple of {LANES}, got {block!r}")


def _kernel(heads: int, length: int, window: int, block: int, interpret: bool):
  """The Splash kernel for one example (H x length x K, length a multiple of `block`)."""
  mask = sa.MultiHeadMask([causal_window_mask(length, window)] * heads)
  sizes = sa.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _heads_first(x_BxLxHxK: jax.Array, pad: int) -> jax.Array:
  """x_BxHxPxK: the kernel's layout (heads before positions), P = L + pad positions, the padding zero."""
  return jnp.pad(x_BxLxHxK, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)


@functools.partial(jax.jit, static_argnames=("window", "block", "interpret"))
def splash_attention(
  q_BxLxHxK: jax.Array,
  k_BxLxHxK: jax.Array,
  v_BxLxHxK: jax.Array,
  segment_ids_BxL: jax.Array,
  *,
  window: int = 0,
  block: int = BLOCK,
  interpret: bool = False,
) -> jax.Array:
  """out_BxLxHxK: softmax(q k^T / sqrt(K) + mask) v per example and head, by the Splash kernel.

  q_BxLxHxK, k_BxLxHxK, v_BxLxHxK: queries, keys, values (one floating dtype; B batch, L positions, H heads, K
      head_dim). The output has their shape and dtype; the kernel accumulates in float32.
  segment_ids_BxL: integer document ids; a query sees keys of its own document only.
  window: 0 for global causal attention, else each query sees itself and at most `window` keys before it.
  block: the largest block (positions, a multiple of 128) along queries and keys; fitted to L (module docstring).
  interpret: run the kernel in Pallas's interpreter (any backend; see above) instead of compiling it for a TPU.
  Differentiable in q, k and v (Splash's own backward kernels).
  """
  _check(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segment_ids_BxL, window, block)
  batch, length, heads, head_dim = q_BxLxHxK.shape
  pad = -length % LANES
  padded = length + pad
  seg_BxP = segment_ids_BxL.astype(jnp.int32)
  if pad:
    fresh_Bx1 = jnp.max(seg_BxP, axis=1, keepdims=True) + 1  # a document of its own: nothing real attends to it
    seg_BxP = jnp.concatenate([seg_BxP, jnp.broadcast_to(fresh_Bx1, (batch, pad))], axis=1)
  scale = 1.0 / math.sqrt(head_dim)  # on q, in float32, then back to q's dtype (one rounding for bfloat16)
  q_BxLxHxK = (q_BxLxHxK.astype(jnp.float32) * scale).astype(q_BxLxHxK.dtype)

  kernel = _kernel(heads, padded, window, fit_block(padded, block), interpret)

  def one(q_HxPxK, k_HxPxK, v_HxPxK, seg_P):
    return kernel(q_HxPxK, k_HxPxK, v_HxPxK, sa.SegmentIds(seg_P, seg_P))

  q_BxHxPxK, k_BxHxPxK, v_BxHxPxK = (_heads_first(x, pad) for x in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK))
  out_BxHxPxK = jax.vmap(one)(q_BxHxPxK, k_BxHxPxK, v_BxHxPxK, seg_BxP)
  return out_BxHxPxK.transpose(0, 2, 1, 3)[:, :length]
