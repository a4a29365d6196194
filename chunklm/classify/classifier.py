"""A classifier over a byte-level language model: the model's states pooled into one vector per record, then a
linear or small MLP head.

Pooling:
  - `mean`: the mean over the main network's chunk states of the innermost H-Net stage (the states the main
    network computes for each kept chunk, before dechunking); for a plain stack, the mean of the last hidden
    states over the record's bytes; for MergeDNA, the mean of the latent encoder's states over the merged tokens.
  - `last`: the last hidden state (the decoder's, after its final norm) at the record's last byte (language models
    only: MergeDNA is bidirectional and has no last state that has read the whole record).
The backbone's own auxiliary loss (the H-Net's routing losses, MergeDNA's merge ratio loss) is added to the
classification loss, so fine-tuning keeps the chunk or token sizes the backbone was trained at.
"""

from __future__ import annotations

from typing import Literal, get_args

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.errors import UserError
from chunklm.model.layers import Linear, param
from chunklm.model.lm import CausalLM, hidden_and_chunk_states
from chunklm.model.mergedna import MergeDNA
from chunklm.train.step import routing_loss

Pooling = Literal["mean", "last"]
Head = Literal["linear", "mlp"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
HEADS: tuple[str, ...] = get_args(Head)


class Classifier(nnx.Module):
  def __init__(
    self, lm: CausalLM | MergeDNA, n_classes: int, *, pooling: Pooling, head: Head, hidden: int, rngs: nnx.Rngs
  ):
    self.lm, self.pooling = lm, pooling
    if isinstance(lm, MergeDNA):
      if pooling != "mean":
        raise UserError(f"--pooling {pooling}: a MergeDNA backbone is pooled by mean over its latent states")
      dim, std = lm.cfg.d_model, lm.cfg.init_std
    else:
      # mean pools the innermost stage's chunk states (width of that stage's outer level), last the byte states
      cfg = lm.cfg
      dim = cfg.d_model[max(cfg.num_stages - 1, 0)] if pooling == "mean" else cfg.d_model[0]
      std = cfg.init_std
    self.hidden: Linear | None
    if head == "mlp":
      self.hidden = Linear(dim, (hidden,), ("embed", "mlp"), rngs=rngs, std=std)
      self.out = Linear(hidden, (n_classes,), ("mlp", None), rngs=rngs, std=std)
    else:
      self.hidden = None
      self.out = Linear(dim, (n_classes,), ("embed", None), rngs=rngs, std=std)
    self.bias = param(None, lambda k, s, d: jnp.zeros(s, d), (n_classes,), (None,))

  def features(self, ids_BxL: jax.Array, lengths_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(pooled features_BxD in float32, the backbone's auxiliary loss) of records padded to L with their byte
    counts."""
    if isinstance(self.lm, MergeDNA):
      pooled_BxD, ratio = self.lm.pooled(ids_BxL, lengths_B)
      return pooled_BxD, self.lm.cfg.ratio_loss_weight * ratio
    length = ids_BxL.shape[1]
    valid_BxL = jnp.arange(length)[None, :] < lengths_B[:, None]
    segment_ids_BxL = valid_BxL.astype(jnp.int32)  # one document per row; 0 marks padding
    positions_BxL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), ids_BxL.shape)
    h_BxLxD, stages, chunk_states = hidden_and_chunk_states(self.lm, ids_BxL, segment_ids_BxL, positions_BxL)
    h_BxLxD = h_BxLxD.astype(jnp.float32)
    aux = routing_loss(stages, self.lm.cfg)
    if self.pooling == "last":
      last_B = jnp.maximum(lengths_B - 1, 0)
      return jnp.take_along_axis(h_BxLxD, last_B[:, None, None], axis=1)[:, 0], aux
    if chunk_states:  # the innermost stage's main network
      states_BxMxD, mask_BxM = chunk_states[-1].main_BxMxD, chunk_states[-1].valid_BxM
    else:
      states_BxMxD, mask_BxM = h_BxLxD, valid_BxL
    mask_BxMx1 = mask_BxM[..., None].astype(jnp.float32)
    total_BxD = jnp.sum(states_BxMxD.astype(jnp.float32) * mask_BxMx1, axis=1)
    return total_BxD / jnp.maximum(jnp.sum(mask_BxMx1, axis=1), 1.0), aux

  def __call__(self, ids_BxL: jax.Array, lengths_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(float32 class logits_BxC, the backbone's auxiliary loss)."""
    x_BxD, aux = self.features(ids_BxL, lengths_B)
    if self.hidden is not None:
      x_BxD = jax.nn.gelu(self.hidden(x_BxD))
    return self.out(x_BxD).astype(jnp.float32) + self.bias[...][None, :], aux
