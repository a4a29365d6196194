"""One chunk of one head of the SSD scan, forward and backward, on tiles: the body both SSD kernel families run.

The TPU (Mosaic) and GPU (Triton) kernels differ in how they walk the chunks and load tiles; the arithmetic of a
chunk is this file, written only with what both lowerings support: 2-D tiles, elementwise maths, `where`, sums along
one axis kept as a column (Q x 1) or a row (1 x Q), and matmuls (`dot`) accumulating in float32. A row is turned
into a column (and back) by a reduction against the identity, not a transpose, so no 1-D layout change is needed.

Tiles (Q = chunk positions, P = head channels, N = state size), all float32:
  x_QxP, dt_1xQ (> 0), doc_1xQ (document index, non-decreasing, as float), b_QxN, c_QxN;
  a_1x1 = A_h (< 0), d_1x1 = D_h, prev_1x1 = the document of the previous chunk's last position (-1 for the first);
  carry_PxN = the state entering the chunk (already cut where a document ended before the chunk).
With a_t = dt_t A_h, cs_t = sum of a_u over u <= t in t's document, S[t, s] = [doc_s = doc_t, s <= t]:
  y_t = sum_s (C_t . B_s) S[t, s] exp(cs_t - cs_s) dt_s x_s  +  w_t (carry C_t)  +  D x_t,
        w_t = [doc_t = prev] exp(cs_t)                                          (the carried state reaches t)
  carry_out = keep * carry + sum_s l_s dt_s x_s (outer) B_s,
        l_s = [doc_s = doc_end] exp(cs_end - cs_s),  keep = [doc_end = prev] exp(cs_end)
which is `ssd_reference.ssd_chunked` restricted to one chunk. The backward takes the cotangents of y and of
carry_out and returns those of every input tile and of carry (the adjoint carried to the previous chunk).
Per-position scalars (dt and doc in; dt's and A's cotangents out) are rows: in HBM a row of Q values is Q lanes,
where a column would take a whole 128-lane row per value on a TPU (its layout pads the minor dimension to 128).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def dot(a: jax.Array, b: jax.Array, trans_a: bool = False, trans_b: bool = False) -> jax.Array:
  """a @ b in float32 with either operand transposed (contracting its first / last axis instead)."""
  dims = (((0,) if trans_a else (1,)), ((1,) if trans_b else (0,)))
  return jax.lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=F32)


def _iota(q: int) -> tuple[jax.Array, jax.Array]:
  return jax.lax.broadcasted_iota(jnp.int32, (q, q), 0), jax.lax.broadcasted_iota(jnp.int32, (q, q), 1)


def to_row(col_Qx1: jax.Array, eye_QxQ: jax.Array) -> jax.Array:
  return jnp.sum(jnp.where(eye_QxQ, col_Qx1, 0.0), axis=0, keepdims=True)


def to_col(row_1xQ: jax.Array, eye_QxQ: jax.Array) -> jax.Array:
  return jnp.sum(jnp.where(eye_QxQ, row_1xQ, 0.0), axis=1, keepdims=True)


def last(col_Qx1: jax.Array) -> jax.Array:
  """The value at the chunk's last position, as 1 x 1."""
  row = jax.lax.broadcasted_iota(jnp.int32, col_Qx1.shape, 0)
  return jnp.sum(jnp.where(row == col_Qx1.shape[0] - 1, col_Qx1, 0.0), axis=0, keepdims=True)


def _decays(dt_1xQ, doc_1xQ, a_1x1, prev_1x1):
  """The chunk's decay factors: (same_QxQ, decay_QxQ, cs_Qx1, w_Qx1, l_Qx1, keep_1x1, eye_QxQ, dt_Qx1)."""
  t, s = _iota(dt_1xQ.shape[1])
  eye = t == s
  doc_Qx1, dt_Qx1 = to_col(doc_1xQ, eye), to_col(dt_1xQ, eye)
  same = (doc_Qx1 == doc_1xQ) & (s <= t)
  a_row = dt_1xQ * a_1x1
  cs_Qx1 = jnp.sum(jnp.where(same, a_row, 0.0), axis=1, keepdims=True)
  diff = cs_Qx1 - to_row(cs_Qx1, eye)
  decay = jnp.where(same, jnp.exp(jnp.where(same, diff, 0.0)), 0.0)  # no exp of a masked (possibly huge) value
  cs_end, doc_end = last(cs_Qx1), last(doc_Qx1)
  w_Qx1 = jnp.where(doc_Qx1 == prev_1x1, jnp.exp(cs_Qx1), 0.0)
  in_end_Qx1 = doc_Qx1 == doc_end
  l_Qx1 = jnp.where(in_end_Qx1, jnp.exp(jnp.where(in_end_Qx1, cs_end - cs_Qx1, 0.0)), 0.0)
  keep = jnp.where(doc_end == prev_1x1, jnp.exp(cs_end), 0.0)
  return same, decay, cs_Qx1, w_Qx1, l_Qx1, keep, eye, dt_Qx1


def forward(x_QxP, dt_1xQ, doc_1xQ, b_QxN, c_QxN, a_1x1, d_1x1, prev_1x1, carry_PxN):
  """(y_QxP, carry_out_PxN) of one chunk of one head (see the module docstring)."""
  _, decay, _, w_Qx1, l_Qx1, keep, _, dt_Qx1 = _decays(dt_1xQ, doc_1xQ, a_1x1, prev_1x1)
  xdt_QxP = x_QxP * dt_Qx1
  m_QxQ = dot(c_QxN, b_QxN, trans_b=True) * decay
  y_QxP = dot(m_QxQ, xdt_QxP) + w_Qx1 * dot(c_QxN, carry_PxN, trans_b=True) + d_1x1 * x_QxP
  carry_out_PxN = keep * carry_PxN + dot(xdt_QxP, l_Qx1 * b_QxN, trans_a=True)
  return y_QxP, carry_out_PxN


def backward(x_QxP, dt_1xQ, doc_1xQ, b_QxN, c_QxN, a_1x1, d_1x1, prev_1x1, carry_PxN, dy_QxP, g_PxN):
  """Cotangents of one chunk given dy (of y) and g (of carry_out):
  (dx_QxP, ddt_1xQ through x dt only, da_1xQ = dL/d(dt_t A_h), db_QxN, dc_QxN, dcarry_PxN)."""
  same, decay, cs_Qx1, w_Qx1, l_Qx1, keep, eye, dt_Qx1 = _decays(dt_1xQ, doc_1xQ, a_1x1, prev_1x1)
  xdt_QxP = x_QxP * dt_Qx1
  cb_QxQ = dot(c_QxN, b_QxN, trans_b=True)
  m_QxQ = cb_QxQ * decay
  carry_c_QxP = dot(c_QxN, carry_PxN, trans_b=True)
  xg_QxN = dot(xdt_QxP, g_PxN)
  # y = M xdt + w (C carry^T) + D x;  carry_out = keep carry + xdt^T (l * B)
  dm_QxQ = dot(dy_QxP, xdt_QxP, trans_b=True)
  dxdt_QxP = dot(m_QxQ, dy_QxP, trans_a=True) + l_Qx1 * dot(b_QxN, g_PxN, trans_b=True)
  dx_QxP = dxdt_QxP * dt_Qx1 + d_1x1 * dy_QxP
  ddt_1xQ = to_row(jnp.sum(dxdt_QxP * x_QxP, axis=1, keepdims=True), eye)
  dcb_QxQ = dm_QxQ * decay
  db_QxN = dot(dcb_QxQ, c_QxN, trans_a=True) + l_Qx1 * xg_QxN
  dc_QxN = dot(dcb_QxQ, b_QxN) + w_Qx1 * dot(dy_QxP, carry_PxN)
  dcarry_PxN = keep * g_PxN + dot(w_Qx1 * dy_QxP, c_QxN, trans_a=True)
  # Back to cs: decay[t, s] = exp(cs_t - cs_s), w_t = exp(cs_t), l_s = exp(cs_end - cs_s), keep = exp(cs_end).
  # The diagonal (t = s) and the last position's own l are exp(0) = 1 whatever cs is: leaving them out keeps their
  # gradients exactly 0 instead of a + and a - term that cancel only up to rounding (all of dA when decays underflow).
  row = jax.lax.broadcasted_iota(jnp.int32, cs_Qx1.shape, 0)
  e_QxQ = jnp.where(eye, 0.0, dm_QxQ * cb_QxQ * decay)
  dl_Qx1 = jnp.where(row == cs_Qx1.shape[0] - 1, 0.0, jnp.sum(b_QxN * xg_QxN, axis=1, keepdims=True) * l_Qx1)
  dw_Qx1 = jnp.sum(dy_QxP * carry_c_QxP, axis=1, keepdims=True) * w_Qx1
  dkeep = jnp.sum(jnp.sum(g_PxN * carry_PxN, axis=1, keepdims=True), axis=0, keepdims=True) * keep
  d_end = jnp.sum(dl_Qx1, axis=0, keepdims=True) + dkeep
  dcs_Qx1 = (
    jnp.sum(e_QxQ, axis=1, keepdims=True)
    - to_col(jnp.sum(e_QxQ, axis=0, keepdims=True), eye)
    + dw_Qx1
    - dl_Qx1
    + jnp.where(row == cs_Qx1.shape[0] - 1, d_end, 0.0)
  )
  # cs_t = sum_s same[t, s] a_s, so da_s = sum_t same[t, s] dcs_t.
  da_1xQ = jnp.sum(jnp.where(same, dcs_Qx1, 0.0), axis=0, keepdims=True)
  return dx_QxP, ddt_1xQ, da_1xQ, db_QxN, dc_QxN, dcarry_PxN
