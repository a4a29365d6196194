"""The Mamba2 SSD scan in plain XLA: the ground truth of the SSD kernels (`ssd_tpu.py`, `ssd_gpu.py`).

Per head h (P = head_dim channels, N = d_state, one B/C group shared by all heads), for each position t:

  h_t = r_t * exp(dt_t * A_h) * h_{t-1} + dt_t * x_t (outer) B_t      (h_t is P x N)
  y_t = h_t . C_t  (+ D_h * x_t in `ssd`)

with r_t = 0 at the first position of every document (doc_BxL: non-decreasing document index, see
`model.mamba2.document_index`).

Document reset rule: `segment_ids` are turned into a document index that grows by one at every change of segment id
(so padding 0 and a segment id that reappears later are separate documents). r_t = 0 at the first position of every
document, so no state crosses a boundary; a conv tap contributes only when its source position is in the output
position's document. Resets are exact 0/1 masks (never -inf in log space), so gradients across documents are exactly 0.

Chunked form (block Q = chunk_size): inside a chunk, s reaches t through exp(sum_{s<u<=t} a_u) * [s <= t] *
[doc_s == doc_t] (the sum taken directly, not as a difference of cumulative sums, so not even rounding crosses a
boundary); each chunk's own end state keeps only positions in the document of its last position; the state carried
into chunk c is multiplied by [doc(end c) == doc(end c-1)] before moving on and reaches only positions in the document
of the previous chunk's last position. Documents are contiguous runs, so these masks are exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ssd_chunked(
  x_BxLxHxP: jax.Array,
  dt_BxLxH: jax.Array,
  a_H: jax.Array,
  b_BxLxN: jax.Array,
  c_BxLxN: jax.Array,
  doc_BxL: jax.Array,
  chunk_size: int,
) -> jax.Array:
  """y_BxLxHxP = sum over same-document s <= t of (C_t·B_s) exp(sum_{s<u<=t} a_u) dt_s x_s, by chunks (no D term)."""
  batch, length, heads, head_dim = x_BxLxHxP.shape
  q = chunk_size
  pad = -length % q
  if pad:
    # Padded tail positions come after every real one, so they cannot reach real outputs; they get their own doc.
    x_BxLxHxP, dt_BxLxH, b_BxLxN, c_BxLxN = (
      jnp.pad(v, ((0, 0), (0, pad)) + ((0, 0),) * (v.ndim - 2)) for v in (x_BxLxHxP, dt_BxLxH, b_BxLxN, c_BxLxN)
    )
    doc_BxL = jnp.pad(doc_BxL, ((0, 0), (0, pad)), mode="edge") + (jnp.arange(length + pad) >= length)[None, :]
  nc = (length + pad) // q

  def chunk(v):
    return v.reshape(batch, nc, q, *v.shape[2:])

  x_BxCxQxHxP, b_BxCxQxN, c_BxCxQxN, doc_BxCxQ = map(chunk, (x_BxLxHxP, b_BxLxN, c_BxLxN, doc_BxL))
  dt_BxHxCxQ = chunk(dt_BxLxH).transpose(0, 3, 1, 2)
  a_BxHxCxQ = dt_BxHxCxQ * a_H[None, :, None, None]
  xdt_BxCxQxHxP = x_BxCxQxHxP * dt_BxHxCxQ.transpose(0, 2, 3, 1)[..., None]

  # 1. Within chunks: quadratic form with a causal, same-document decay matrix (t = target, s = source).
  # cs_t = sum of a_u over u <= t in t's document (within the chunk), computed as a 0/1-masked matmul: values of
  # other documents are multiplied by exact zeros, so none enters even through rounding, and for s, t in one
  # document cs_t - cs_s = sum_{s<u<=t} a_u. Masked entries get -inf before exp: exp is 0 and its gradient exactly 0.
  causal_QxQ = jnp.tril(jnp.ones((q, q), dtype=bool))
  same_BxCxQxQ = (doc_BxCxQ[..., :, None] == doc_BxCxQ[..., None, :]) & causal_QxQ[None, None]
  cs_BxHxCxQ = jnp.einsum("bcts,bhcs->bhct", same_BxCxQxQ.astype(jnp.float32), a_BxHxCxQ)
  # The diagonal is exactly 0 and held so (no gradient): as cs_t - cs_t its gradient would be two large terms that
  # cancel only up to rounding, which is all of dA when the decays underflow (large dt |A|).
  eye_QxQ = jnp.eye(q, dtype=bool)
  diff_BxHxCxQxQ = jnp.where(eye_QxQ, 0.0, cs_BxHxCxQ[..., :, None] - cs_BxHxCxQ[..., None, :])
  decay_BxHxCxQxQ = jnp.exp(jnp.where(same_BxCxQxQ[:, None], diff_BxHxCxQxQ, -jnp.inf))
  cb_BxCxQxQ = jnp.einsum("bctn,bcsn->bcts", c_BxCxQxN, b_BxCxQxN)
  y_diag = jnp.einsum("bcts,bhcts,bcshp->bcthp", cb_BxCxQxQ, decay_BxHxCxQxQ, xdt_BxCxQxHxP)

  # 2. Each chunk's end state from its own positions in the document of its last position (the decay matrix's last
  # row is exactly that: exp(sum_{s<u<=end} a_u) * [doc_s == doc_end]).
  states_BxCxHxPxN = jnp.einsum("bcsn,bhcs,bcshp->bchpn", b_BxCxQxN, decay_BxHxCxQxQ[..., -1, :], xdt_BxCxQxHxP)
  # From the chunk start to position t: only used where the whole prefix is in one document (no restart), so no leak.
  acum_BxHxCxQ = cs_BxHxCxQ

  # 3. Across chunks: carry_c = state entering chunk c; kept only if chunk c ends in the same document as c - 1.
  doc_end_BxC = doc_BxCxQ[..., -1]
  doc_prev_end_BxC = jnp.concatenate([jnp.full_like(doc_end_BxC[:, :1], -1), doc_end_BxC[:, :-1]], axis=1)
  keep_BxHxC = jnp.where(doc_end_BxC == doc_prev_end_BxC, 1.0, 0.0)[:, None] * jnp.exp(acum_BxHxCxQ[..., -1])

  def carry_step(carry_BxHxPxN, inputs):
    keep_BxH, state_BxHxPxN = inputs
    return keep_BxH[..., None, None] * carry_BxHxPxN + state_BxHxPxN, carry_BxHxPxN

  init_BxHxPxN = jnp.zeros((batch, heads, head_dim, b_BxLxN.shape[-1]), jnp.float32)
  _, carry_CxBxHxPxN = jax.lax.scan(
    carry_step, init_BxHxPxN, (keep_BxHxC.transpose(2, 0, 1), states_BxCxHxPxN.transpose(1, 0, 2, 3, 4))
  )

  # 4. Carried state -> outputs, only for positions in the document of the previous chunk's last position.
  in_prev_BxCxQ = doc_BxCxQ == doc_prev_end_BxC[..., None]
  from_start_BxHxCxQ = jnp.where(in_prev_BxCxQ[:, None], jnp.exp(acum_BxHxCxQ), 0.0)
  y_off = jnp.einsum("bctn,bhct,cbhpn->bcthp", c_BxCxQxN, from_start_BxHxCxQ, carry_CxBxHxPxN)

  return (y_diag + y_off).reshape(batch, nc * q, heads, head_dim)[:, :length]


def ssd(
  x_BxLxHxP: jax.Array,
  dt_BxLxH: jax.Array,
  a_H: jax.Array,
  b_BxLxN: jax.Array,
  c_BxLxN: jax.Array,
  d_H: jax.Array,
  doc_BxL: jax.Array,
  chunk_size: int,
) -> jax.Array:
  """y_BxLxHxP of the SSD scan plus the D skip (float32): `ssd_chunked` + D_h x."""
  y_BxLxHxP = ssd_chunked(x_BxLxHxP, dt_BxLxH, a_H, b_BxLxN, c_BxLxN, doc_BxL, chunk_size)
  return y_BxLxHxP + d_H[None, None, :, None] * x_BxLxHxP
