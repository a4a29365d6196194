"""Bidirectional (non-causal) pre-norm Transformer blocks over an explicit mask of allowed query-key pairs: the MrT5
encoder and decoder, and MergeDNA's local and latent stacks.

A block is self-attention (RoPE on queries and keys, from the positions given), optional cross-attention (no
positions) and a SwiGLU MLP. What a query may see is the `allowed_BxQxS` mask alone, so a block is non-causal exactly
where its caller's mask says so (a window, a document, every valid key).
"""

from __future__ import annotations

import math
from typing import Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.model.layers import Linear, RMSNorm, SwiGLU, rope


class BlockDims(Protocol):
  """The sizes a block reads from its model's config (MrT5Config, MergeDNAConfig)."""

  @property
  def d_model(self) -> int: ...
  @property
  def n_heads(self) -> int: ...
  @property
  def rope_theta(self) -> float: ...
  @property
  def softmax1(self) -> bool: ...
  @property
  def init_std(self) -> float: ...
  def ff_dim(self) -> int: ...


def attend(
  q_BxQxHxK: jax.Array,
  k_BxSxHxK: jax.Array,
  v_BxSxHxK: jax.Array,
  allowed_BxQxS: jax.Array,
  bias_BxS: jax.Array | None,
  softmax1: bool,
) -> jax.Array:
  """Softmax attention over the allowed keys (a query with none gets 0), `bias_BxS` added to each key's logits;
  softmax1 adds an implicit zero logit to every row (exp(x_i) / (1 + sum_j exp(x_j)))."""
  logits = jnp.einsum("bqhk,bshk->bhqs", q_BxQxHxK, k_BxSxHxK) / math.sqrt(q_BxQxHxK.shape[-1])
  if bias_BxS is not None:
    logits = logits + bias_BxS[:, None, None, :]
  allowed = allowed_BxQxS[:, None]
  logits = jnp.where(allowed, logits, -jnp.inf)
  top = jnp.max(logits, axis=-1, keepdims=True)
  top = jnp.maximum(top, 0.0) if softmax1 else jnp.where(jnp.isfinite(top), top, 0.0)
  e = jnp.where(allowed, jnp.exp(logits - top), 0.0)
  denom = jnp.sum(e, axis=-1, keepdims=True) + (jnp.exp(-top) if softmax1 else 0.0)
  probs = e / jnp.where(denom > 0, denom, 1.0)
  return jnp.einsum("bhqs,bshk->bqhk", probs, v_BxSxHxK)


class Attention(nnx.Module):
  """Self-attention (RoPE on queries and keys) or cross-attention (no positions)."""

  def __init__(self, cfg: BlockDims, *, rngs: nnx.Rngs, out_std: float, cross: bool = False):
    d, h = cfg.d_model, cfg.n_heads
    self.cross, self.theta, self.softmax1 = cross, cfg.rope_theta, cfg.softmax1
    self.w_q = Linear(d, (h, d // h), ("embed", "heads", "kv"), rngs=rngs, std=cfg.init_std)
    self.w_kv = Linear(d, (2, h, d // h), ("embed", None, "heads", "kv"), rngs=rngs, std=cfg.init_std)
    self.w_out = Linear(d, (d,), ("heads", "embed"), rngs=rngs, std=out_std)

  def __call__(self, x_BxQxD, pos_BxQ, ctx_BxSxD, pos_BxS, allowed_BxQxS, bias_BxS=None) -> jax.Array:
    q = self.w_q(x_BxQxD)
    kv = self.w_kv(ctx_BxSxD)
    k, v = kv[:, :, 0], kv[:, :, 1]
    if not self.cross:
      q = rope(q, pos_BxQ, q.shape[-1], self.theta)
      k = rope(k, pos_BxS, k.shape[-1], self.theta)
    out = attend(q, k, v, allowed_BxQxS, bias_BxS, self.softmax1)
    return self.w_out(out.reshape(*out.shape[:2], -1))


class Block(nnx.Module):
  """Pre-norm: self-attention, [cross-attention,] SwiGLU."""

  def __init__(self, cfg: BlockDims, *, rngs: nnx.Rngs, out_std: float, decoder: bool):
    d = cfg.d_model
    self.norm1 = RMSNorm(d)
    self.attn = Attention(cfg, rngs=rngs, out_std=out_std)
    self.norm_x = RMSNorm(d) if decoder else None
    self.cross = Attention(cfg, rngs=rngs, out_std=out_std, cross=True) if decoder else None
    self.norm2 = RMSNorm(d)
    self.mlp = SwiGLU(d, cfg.ff_dim(), rngs=rngs, std=cfg.init_std, out_std=out_std)

  def cross_parts(self) -> tuple[RMSNorm, Attention]:
    """(norm_x, cross) of a decoder block; encoder blocks have no cross-attention."""
    if self.norm_x is None or self.cross is None:
      raise ValueError("an encoder block has no cross-attention")
    return self.norm_x, self.cross

  def __call__(self, x, pos, allowed, bias=None, enc=None):
    h = self.norm1(x)
    x = x + self.attn(h, pos, h, pos, allowed, bias)
    if self.norm_x is not None and self.cross is not None:  # decoder blocks (both are set together)
      enc_h, enc_allowed, enc_bias = enc
      x = x + self.cross(self.norm_x(x), pos, enc_h, None, enc_allowed, enc_bias)
    return x + self.mlp(self.norm2(x))
