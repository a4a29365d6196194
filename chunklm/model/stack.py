"""Layer stacks built from layout strings: 'T4' (4 attention+MLP blocks), 'm4' (4 Mamba2 blocks), 'T1m4', ...

m = Mamba2 block, M = Mamba2 + SwiGLU MLP, t = attention block, T = attention + SwiGLU MLP. Blocks are pre-norm
residual blocks; every stack ends with an RMSNorm. The residual stream is kept in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.config import AttentionImpl, KernelImpl, ModelConfig, parse_layer_string
from chunklm.mesh.context import constrain_batch
from chunklm.model.layers import Attention, RMSNorm, SwiGLU
from chunklm.model.mamba2 import Mamba2


def layer_kinds(spec: str) -> list[str]:
  """'T1m2' -> ['T', 'm', 'm']."""
  return [kind for kind, n in parse_layer_string(spec) for _ in range(n)]


def stack_height(spec: str) -> int:
  """Residual adds of a stack: 1 per mixer-only block, 2 per block with an MLP."""
  return sum(2 if k.isupper() else 1 for k in layer_kinds(spec))


class Block(nnx.Module):
  def __init__(self, kind: str, cfg: ModelConfig, level: int, *, rngs: nnx.Rngs, out_std: float):
    dim, dtype = cfg.d_model[level], jnp.dtype(cfg.dtype)
    self.kind = kind
    self.norm1 = RMSNorm(dim)
    self.mixer: Attention | Mamba2
    if kind in "tT":
      self.mixer = Attention(
        dim,
        cfg.n_heads[level],
        rngs=rngs,
        rotary_fraction=cfg.rotary_fraction,
        rope_theta=cfg.rope_theta,
        window=cfg.window[level],
        std=cfg.init_std,
        out_std=out_std,
        dtype=dtype,
        block=cfg.attention_block,
      )
    else:
      m = cfg.mamba
      self.mixer = Mamba2(
        dim,
        rngs=rngs,
        d_state=m.d_state,
        d_conv=m.d_conv,
        expand=m.expand,
        head_dim=m.head_dim,
        chunk_size=m.chunk_size,
        std=cfg.init_std,
        out_std=out_std,
        dtype=dtype,
      )
    if kind.isupper():
      self.norm2 = RMSNorm(dim)
      self.mlp = SwiGLU(dim, cfg.ff_dim(level), rngs=rngs, std=cfg.init_std, out_std=out_std, dtype=dtype)

  def __call__(
    self,
    x_BxLxD: jax.Array,
    segment_ids_BxL: jax.Array,
    positions_BxL: jax.Array,
    key_bias_BxL: jax.Array | None = None,
  ) -> jax.Array:
    h = self.norm1(x_BxLxD)
    if isinstance(self.mixer, Attention):  # kind t or T
      h = self.mixer(h, segment_ids_BxL, positions_BxL, key_bias_BxL)
    else:
      h = self.mixer(h, segment_ids_BxL)
    x_BxLxD = x_BxLxD + h.astype(jnp.float32)
    if self.kind.isupper():
      x_BxLxD = x_BxLxD + self.mlp(self.norm2(x_BxLxD)).astype(jnp.float32)
    return x_BxLxD


class LayerStack(nnx.Module):
  """Blocks of one layout string at one level, then a final RMSNorm; `Stack` calls it as a layer stack, the H-Net's
  innermost main network (hnet.MainStack) as a nested H-Net.

  `n_residuals` is the number of residual adds on the path through this stack (its own plus those of the enclosing
  encoders and decoders); output projections are initialised with std init_std / sqrt(n_residuals).
  """

  def __init__(self, spec: str, cfg: ModelConfig, level: int, *, rngs: nnx.Rngs, n_residuals: int | None = None):
    n_residuals = n_residuals or stack_height(spec)
    out_std = cfg.init_std / math.sqrt(n_residuals)
    self.blocks = nnx.List([Block(k, cfg, level, rngs=rngs, out_std=out_std) for k in layer_kinds(spec)])
    self.norm = RMSNorm(cfg.d_model[level])
    self.remat = cfg.remat

  def run(
    self,
    x_BxLxD: jax.Array,
    segment_ids_BxL: jax.Array,
    positions_BxL: jax.Array,
    key_bias_BxL: jax.Array | None = None,
  ) -> jax.Array:
    """`key_bias_BxL` (optional) is added to the attention logits of every key in the attention blocks."""
    x_BxLxD = x_BxLxD.astype(jnp.float32)
    for block in self.blocks:
      if self.remat:  # keep only block inputs for the backward pass; recompute the rest
        x_BxLxD = nnx.remat(lambda b, x, s, p, k: b(x, s, p, k))(
          block, x_BxLxD, segment_ids_BxL, positions_BxL, key_bias_BxL
        )
      else:
        x_BxLxD = block(x_BxLxD, segment_ids_BxL, positions_BxL, key_bias_BxL)
      x_BxLxD = constrain_batch(x_BxLxD)  # the residual stream stays split over the batch axes of the mesh
    return self.norm(x_BxLxD)

  def set_attention_impl(self, impl: AttentionImpl) -> None:
    """Every attention block's softmax backend (`kernels.attention`; 'auto' until set): the model sets it once, after
    construction, on the stacks it runs (CausalLM), so no constructor passes it down."""
    for block in self.blocks:
      if isinstance(block.mixer, Attention):  # kind t or T
        block.mixer.impl = impl

  def set_ssd_impl(self, impl: KernelImpl) -> None:
    """Every Mamba2 block's SSD backend (`kernels.impl`, whose 'auto' keeps the XLA SSD: see `kernels/ssd.py`), set
    once by the model as `set_attention_impl` is."""
    for block in self.blocks:
      if isinstance(block.mixer, Mamba2):
        block.mixer.impl = impl


class Stack(LayerStack):
  """A layer stack: y_BxLxD = norm(blocks(x_BxLxD))."""

  def __call__(
    self,
    x_BxLxD: jax.Array,
    segment_ids_BxL: jax.Array,
    positions_BxL: jax.Array,
    key_bias_BxL: jax.Array | None = None,
  ) -> jax.Array:
    """`key_bias_BxL` (optional) is added to the attention logits of every key in the attention blocks."""
    return self.run(x_BxLxD, segment_ids_BxL, positions_BxL, key_bias_BxL)
