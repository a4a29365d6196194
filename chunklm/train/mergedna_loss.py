"""MergeDNA's two pretraining objectives over one batch of windows, and how the masked tokens are chosen.

  merged token reconstruction (MTR): every base rebuilt from the merged tokens (no masking), cross-entropy per
    base. It trains the tokenizer: what the merges throw away cannot come back.
  adaptive masked token modelling (AMTM): a second pass through the latent encoder and the decoders over the same
    merged tokens with `mask_rate` of each row's tokens replaced by the mask token; cross-entropy on the bases
    of the masked tokens only. With `select: loss` the masked tokens are drawn without replacement with probability
    ~ exp(MTR loss of the token / temperature) (Gumbel top-k): the tokens the autoencoder rebuilds worst are the
    informative ones, which is the "adaptive" selection; `select: uniform` is plain masked modelling.
The tokenizer runs once per batch: both passes see the same merges, and both objectives' gradients reach the merge
scores. Total = reconstruction_weight x MTR + masked_weight x AMTM + mergedna.ratio_loss_weight x the ratio loss.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from chunklm.config.mergedna import MergeDNAObjective
from chunklm.model.mergedna import MergeDNA, Tokens


def token_losses(ce_BxL: jax.Array, tok: Tokens) -> jax.Array:
  """Mean cross-entropy of each merged token's bases (0 for invalid tokens), gradient stopped."""
  m = tok.valid_BxM.shape[1]
  total = jax.vmap(lambda v, g: jax.ops.segment_sum(v, g, num_segments=m + 1))(ce_BxL, tok.src_BxL)[:, :m]
  return jax.lax.stop_gradient(total / jnp.maximum(tok.size_BxM, 1))


def select_masked(score_BxM: jax.Array, valid_BxM: jax.Array, key: jax.Array, obj: MergeDNAObjective) -> jax.Array:
  """mask_BxM: round(mask_rate x valid tokens) of each row's valid tokens (at least one), drawn without replacement
  with probability ~ exp(score / temperature) (`select: loss`) or uniformly."""
  n_B = jnp.sum(valid_BxM, axis=1)
  k_B = jnp.maximum(jnp.round(obj.mask_rate * n_B), 1).astype(jnp.int32)
  gumbel = jax.random.gumbel(key, score_BxM.shape)
  s = gumbel + (score_BxM / obj.temperature if obj.select == "loss" else 0.0)
  s = jnp.where(valid_BxM, s, -jnp.inf)
  rank_BxM = jnp.argsort(jnp.argsort(-s, axis=1), axis=1)
  return (rank_BxM < k_B[:, None]) & valid_BxM


def losses(model: MergeDNA, batch: dict, key: jax.Array, obj: MergeDNAObjective) -> tuple[jax.Array, dict]:
  """(the total loss, metrics: both objectives in bits per base, the ratio loss, bases per merged token, the
  fraction of bases masked and of tokens dropped past the capacity, each merging block's input tokens per output
  token `ratio_k`)."""
  ids, valid = batch["ids"], batch["valid"]
  v = valid.astype(jnp.float32)
  tok = model.tokenize(ids, valid)
  ce = optax.softmax_cross_entropy_with_integer_labels(model.decode(model.latent(tok), tok, valid), ids) * v
  mtr = jnp.sum(ce) / jnp.maximum(jnp.sum(v), 1.0)
  mask_BxM = select_masked(token_losses(ce, tok), tok.valid_BxM, key, obj)
  masked_bases = jnp.take_along_axis(jnp.pad(mask_BxM, ((0, 0), (0, 1))), tok.src_BxL, axis=1) & valid
  mb = masked_bases.astype(jnp.float32)
  logits_m = model.decode(model.latent(tok, mask_BxM), tok, valid)
  amtm = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits_m, ids) * mb) / jnp.maximum(jnp.sum(mb), 1.0)
  weight = model.cfg.ratio_loss_weight
  loss = obj.reconstruction_weight * mtr + obj.masked_weight * amtm + weight * tok.ratio_loss
  tokens = jnp.maximum(jnp.sum(tok.valid_BxM), 1)
  return loss, {
    "loss": loss,
    "mtr_bpb": mtr / math.log(2),
    "amtm_bpb": amtm / math.log(2),
    "ratio_loss": tok.ratio_loss,
    "bases_per_token": jnp.sum(v) / tokens,
    "masked": jnp.sum(mb) / jnp.maximum(jnp.sum(v), 1.0),
    "overflow": jnp.sum(tok.overflow_K) / jnp.maximum(jnp.sum(tok.positions_K), 1),
    **{f"ratio_{k}": tok.positions_K[k] / jnp.maximum(tok.boundaries_K[k], 1) for k in range(len(tok.routes))},
  }
