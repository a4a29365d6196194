"""Mamba2 (SSD) mixer: chunked parallel scan for training, one-token recurrent step for generation.

Per head h (P = head_dim channels, N = d_state, one B/C group shared by all heads), for each position t:

  a_t = dt_t * A_h                      dt_t = softplus(dt_raw_t + dt_bias_h) > 0,  A_h = -exp(A_log_h) < 0
  h_t = r_t * exp(a_t) * h_{t-1} + dt_t * x_t ⊗ B_t      (h_t is P x N)
  y_t = h_t · C_t + D_h * x_t

where x, B, C come out of a depthwise causal conv (width d_conv, with bias) + SiLU over the in_proj outputs, and the
layer output is out_proj(RMSNorm(y * silu(z))) (gate before norm, as in Mamba2's RMSNormGated).

Document reset rule: `segment_ids` are turned into a document index that grows by one at every change of segment id
(so padding 0 and a segment id that reappears later are separate documents). r_t = 0 at the first position of every
document, so no state crosses a boundary; a conv tap contributes only when its source position is in the output
position's document. Resets are exact 0/1 masks (never -inf in log space), so gradients across documents are exactly 0.

The chunked (SSD) scan and its kernels are `chunklm.kernels.ssd` (backend: `kernels.impl`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from chunklm.kernels.ssd import ssd
from chunklm.model.layers import Linear, RMSNorm, param


@struct.dataclass
class Mamba2Cache:
  """Generation state of one Mamba2 layer (float32)."""

  conv_state_BxKxC: jax.Array  # last d_conv - 1 conv inputs (K = d_conv - 1, C = d_inner + 2 * d_state), oldest first
  ssm_state_BxHxPxN: jax.Array  # SSM state per head


def uniform(low: float, high: float):
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, low, high)


def dt_bias_init(dt_min: float = 1e-3, dt_max: float = 1e-1, floor: float = 1e-4):
  """Inverse softplus of dt drawn log-uniformly in [dt_min, dt_max], so softplus(dt_bias) starts in that range."""

  def init(key, shape, dtype):
    u = jax.random.uniform(key, shape, dtype)
    dt = jnp.maximum(jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)), floor)
    return dt + jnp.log(-jnp.expm1(-dt))

  return init


def a_log_init(low: float = 1.0, high: float = 16.0):
  return lambda key, shape, dtype: jnp.log(jax.random.uniform(key, shape, dtype, low, high))


def document_index(segment_ids_BxL: jax.Array) -> jax.Array:
  """doc_BxL (int32): 0 at position 0, +1 at every change of segment id; non-decreasing along L."""
  change_BxL = jnp.pad(segment_ids_BxL[:, 1:] != segment_ids_BxL[:, :-1], ((0, 0), (1, 0)))
  return jnp.cumsum(change_BxL.astype(jnp.int32), axis=1)


def causal_conv(u_BxLxC: jax.Array, doc_BxL: jax.Array, w_KxC: jax.Array, b_C: jax.Array) -> jax.Array:
  """Depthwise causal conv; tap k reads position t - (K-1) + k and counts only if it lies in t's document."""
  k_width, length = w_KxC.shape[0], u_BxLxC.shape[1]
  u_pad = jnp.pad(u_BxLxC, ((0, 0), (k_width - 1, 0), (0, 0)))
  doc_pad = jnp.pad(doc_BxL, ((0, 0), (k_width - 1, 0)), constant_values=-1)  # before the start: no document
  out_BxLxC = jnp.broadcast_to(b_C, u_BxLxC.shape)
  for k in range(k_width):
    same_BxL = doc_pad[:, k : k + length] == doc_BxL
    out_BxLxC = out_BxLxC + jnp.where(same_BxL[..., None], u_pad[:, k : k + length] * w_KxC[k][None, None, :], 0.0)
  return out_BxLxC


class Mamba2(nnx.Module):
  """Mamba2 mixer (single B/C group): x_BxLxD -> y_BxLxD, with document resets from segment ids."""

  def __init__(
    self,
    dim: int,
    *,
    rngs: nnx.Rngs,
    d_state: int,
    d_conv: int,
    expand: int,
    head_dim: int,
    chunk_size: int,
    std: float,
    out_std: float,
    dtype=jnp.float32,
  ):
    d_inner = expand * dim
    if d_inner % head_dim:
      raise ValueError(f"expand * dim = {d_inner} is not a multiple of head_dim = {head_dim}")
    if d_conv < 1 or chunk_size < 1:
      raise ValueError(f"d_conv ({d_conv}) and chunk_size ({chunk_size}) must be >= 1")
    self.d_inner, self.d_state, self.d_conv, self.head_dim = d_inner, d_state, d_conv, head_dim
    self.n_heads, self.chunk_size = d_inner // head_dim, chunk_size
    self.impl = "auto"  # the SSD backend (kernels.impl); the model sets it after construction (Stack.set_ssd_impl)
    conv_dim = d_inner + 2 * d_state
    # One projection to [z (d_inner), x (d_inner), B (N), C (N), dt (H)], as in Mamba2.
    self.in_proj = Linear(
      dim, (2 * d_inner + 2 * d_state + self.n_heads,), ("embed", "ssm_inner"), rngs=rngs, std=std, dtype=dtype
    )
    bound = 1.0 / math.sqrt(d_conv)  # PyTorch's default for a depthwise Conv1d (fan_in = d_conv)
    self.conv_w = param(rngs.params(), uniform(-bound, bound), (d_conv, conv_dim), ("conv", "ssm_inner"))
    self.conv_b = param(rngs.params(), uniform(-bound, bound), (conv_dim,), ("ssm_inner",))
    self.dt_bias = param(rngs.params(), dt_bias_init(), (self.n_heads,), ("ssm_heads",))
    self.a_log = param(rngs.params(), a_log_init(), (self.n_heads,), ("ssm_heads",))
    self.d_skip = param(None, lambda key, shape, dtype: jnp.ones(shape, dtype), (self.n_heads,), ("ssm_heads",))
    self.norm = RMSNorm(d_inner)
    self.out_proj = Linear(d_inner, (dim,), ("ssm_inner", "embed"), rngs=rngs, std=out_std, dtype=dtype)

  def _split(self, zxbcdt: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """-> z (d_inner), conv input [x, B, C] (d_inner + 2N), dt_raw (H), all float32."""
    zxbcdt = zxbcdt.astype(jnp.float32)
    i, c = self.d_inner, self.d_inner + 2 * self.d_state
    return zxbcdt[..., :i], zxbcdt[..., i : i + c], zxbcdt[..., i + c :]

  def _conv_out(self, xbc: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Post-conv [x, B, C] -> x (..., H, P), B (..., N), C (..., N)."""
    xbc = jax.nn.silu(xbc)
    i, n = self.d_inner, self.d_state
    return xbc[..., :i].reshape(*xbc.shape[:-1], self.n_heads, self.head_dim), xbc[..., i : i + n], xbc[..., i + n :]

  def _output(self, y: jax.Array, z: jax.Array, out_dtype) -> jax.Array:
    """Gated RMSNorm (gate first) and out_proj; y (..., H, P), z (..., d_inner)."""
    y = y.reshape(*y.shape[:-2], self.d_inner) * jax.nn.silu(z)
    return self.out_proj(self.norm(y)).astype(out_dtype)

  def __call__(self, x_BxLxD: jax.Array, segment_ids_BxL: jax.Array) -> jax.Array:
    """Parallel (training) form: y_BxLxD; segment_ids_BxL (int) change at each new document (0 = padding)."""
    doc_BxL = document_index(segment_ids_BxL)
    z_BxLxI, xbc_BxLxC, dt_raw_BxLxH = self._split(self.in_proj(x_BxLxD))
    xbc_BxLxC = causal_conv(xbc_BxLxC, doc_BxL, self.conv_w[...], self.conv_b[...])
    x_BxLxHxP, b_BxLxN, c_BxLxN = self._conv_out(xbc_BxLxC)
    dt_BxLxH = jax.nn.softplus(dt_raw_BxLxH + self.dt_bias[...][None, None, :])
    a_H = -jnp.exp(self.a_log[...])
    d_H = self.d_skip[...]
    y_BxLxHxP = ssd(x_BxLxHxP, dt_BxLxH, a_H, b_BxLxN, c_BxLxN, d_H, doc_BxL, self.chunk_size, impl=self.impl)
    return self._output(y_BxLxHxP, z_BxLxI, x_BxLxD.dtype)

  def init_cache(self, batch_size: int) -> Mamba2Cache:
    """Empty (all-zero) state: the same as a reset."""
    return Mamba2Cache(
      conv_state_BxKxC=jnp.zeros((batch_size, self.d_conv - 1, self.d_inner + 2 * self.d_state), jnp.float32),
      ssm_state_BxHxPxN=jnp.zeros((batch_size, self.n_heads, self.head_dim, self.d_state), jnp.float32),
    )

  def step(self, x_BxD: jax.Array, cache: Mamba2Cache, reset_B: jax.Array) -> tuple[jax.Array, Mamba2Cache]:
    """Recurrent form for one token: (y_BxD, new cache); reset_B (bool) clears the state first (new document)."""
    conv_BxKxC = jnp.where(reset_B[:, None, None], 0.0, cache.conv_state_BxKxC)
    ssm_BxHxPxN = jnp.where(reset_B[:, None, None, None], 0.0, cache.ssm_state_BxHxPxN)
    z_BxI, xbc_BxC, dt_raw_BxH = self._split(self.in_proj(x_BxD))
    window_BxKxC = jnp.concatenate([conv_BxKxC, xbc_BxC[:, None]], axis=1)
    xbc_BxC = jnp.sum(window_BxKxC * self.conv_w[...][None], axis=1) + self.conv_b[...][None, :]
    x_BxHxP, b_BxN, c_BxN = self._conv_out(xbc_BxC)
    dt_BxH = jax.nn.softplus(dt_raw_BxH + self.dt_bias[...][None, :])
    decay_BxH = jnp.exp(dt_BxH * -jnp.exp(self.a_log[...])[None, :])
    ssm_BxHxPxN = decay_BxH[..., None, None] * ssm_BxHxPxN + jnp.einsum("bh,bhp,bn->bhpn", dt_BxH, x_BxHxP, b_BxN)
    y_BxHxP = jnp.einsum("bhpn,bn->bhp", ssm_BxHxPxN, c_BxN) + self.d_skip[...][None, :, None] * x_BxHxP
    new_cache = Mamba2Cache(conv_state_BxKxC=window_BxKxC[:, 1:], ssm_state_BxHxPxN=ssm_BxHxPxN)
    return self._output(y_BxHxP, z_BxI, x_BxD.dtype), new_cache
