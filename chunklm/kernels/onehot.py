"""Exact one-hot matmuls: gathers and segment sums of rows on a matrix unit (TPU MXU, GPU tensor cores).

A 0/1 selection matrix is exact in bfloat16, so `sel @ x` with float32 accumulation adds whole rows of x without
rounding their values. bfloat16 rows take one pass; float32 rows are split into three bfloat16 pieces
(hi + mid + lo = x exactly, 8 + 8 + 8 significand bits) and take three passes, which is cheaper than a full-precision
float32 matmul (6 passes on the MXU; Triton's IEEE path has no tensor cores) and exact for every finite x of
normal magnitude. Only the float32 additions of the selected rows round, as in any float32 segment sum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def onehot_matmul(sel_NxK: jax.Array, x_KxD: jax.Array) -> jax.Array:
  """float32 sel @ x for a boolean selection matrix sel_NxK (rows with several ones sum their rows of x)."""
  s_NxK = sel_NxK.astype(jnp.bfloat16)
  if x_KxD.dtype == jnp.bfloat16:
    return jnp.dot(s_NxK, x_KxD, preferred_element_type=jnp.float32)
  x_KxD = x_KxD.astype(jnp.float32)
  hi = x_KxD.astype(jnp.bfloat16)
  rest = x_KxD - hi.astype(jnp.float32)
  mid = rest.astype(jnp.bfloat16)
  lo = (rest - mid.astype(jnp.float32)).astype(jnp.bfloat16)
  out = jnp.dot(s_NxK, lo, preferred_element_type=jnp.float32)  # smallest pieces first
  out = out + jnp.dot(s_NxK, mid, preferred_element_type=jnp.float32)
  return out + jnp.dot(s_NxK, hi, preferred_element_type=jnp.float32)
