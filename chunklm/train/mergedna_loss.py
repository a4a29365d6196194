"""MergeDNA's two pretraining objectives over one batch of windows, and how the masked spans are chosen.

  merged token reconstruction (MTR): every base rebuilt from the merged tokens (no masking), cross-entropy per
    base. It trains the tokenizer: what the merges throw away cannot come back.
  adaptive masked token modelling (AMTM): `mask_rate` of each row's merge windows (`mergedna.window` bases each)
    have every base replaced by the mask symbol in the input, the masked input goes through the whole model again
    (tokenizer included) and the cross-entropy is taken on the masked bases only. With `select: loss` the windows
    are drawn without replacement with probability ~ exp(the MTR loss of their bases / temperature) (Gumbel top-k):
    the spans the autoencoder rebuilds worst are the informative ones, which is the "adaptive" selection; `select:
    uniform` is plain span masking. `masked_tokens: bases` keeps the masked bases from merging (one latent token
    each) instead of letting a masked window merge into one token.
Why whole windows of the input, not merged tokens: a masked merged token still shows its span (its bases' offsets,
the next token's position), and spans are decided by the content, so masking tokens after merging leaks what it
hides. In tiny runs that did so the masked loss fell to 0.7 bits per base, far below what DNA allows, while the
tokenizer drifted to its capacity. A window is fixed in place and nothing is merged across its edges or attended
across them before merging, so a masked window tokenizes the same whatever its bases were (tested).
Total = reconstruction_weight x MTR + masked_weight x AMTM + mergedna.ratio_loss_weight x the ratio loss of the
unmasked pass.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from chunklm.config.mergedna import MergeDNAObjective
from chunklm.model.mergedna import MergeDNA


def window_losses(ce_BxL: jax.Array, valid_BxL: jax.Array, window: int) -> tuple[jax.Array, jax.Array]:
  """(mean cross-entropy of each window's valid bases, gradient stopped; windows holding a valid base), BxK with
  K = L / window."""
  b, length = ce_BxL.shape
  total = ce_BxL.reshape(b, length // window, window).sum(-1)
  n = valid_BxL.reshape(b, length // window, window).sum(-1)
  return jax.lax.stop_gradient(total / jnp.maximum(n, 1)), n > 0


def mask_windows(ids_BxL: jax.Array, valid_BxL: jax.Array, mask_BxK: jax.Array, window: int, mask_id: int):
  """(ids with every valid base of the masked windows replaced by `mask_id`, those bases as a bool BxL)."""
  masked_BxL = jnp.repeat(mask_BxK, window, axis=1) & valid_BxL
  return jnp.where(masked_BxL, mask_id, ids_BxL), masked_BxL


def select_masked(score_BxM: jax.Array, valid_BxM: jax.Array, key: jax.Array, obj: MergeDNAObjective) -> jax.Array:
  """mask_BxM: round(mask_rate x valid entries) of each row's valid entries (at least one), drawn without
  replacement with probability ~ exp(score / temperature) (`select: loss`) or uniformly."""
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
  token `ratio_k`; all of the unmasked pass but AMTM and `masked_overflow`, the masked pass's overflow)."""
  ids, valid = batch["ids"], batch["valid"]
  v = valid.astype(jnp.float32)
  window = model.cfg.window
  tok = model.tokenize(ids, valid)
  ce = optax.softmax_cross_entropy_with_integer_labels(model.decode(model.latent(tok), tok, valid), ids) * v
  mtr = jnp.sum(ce) / jnp.maximum(jnp.sum(v), 1.0)
  mask_BxK = select_masked(*window_losses(ce, valid, window), key, obj)
  masked_ids, masked = mask_windows(ids, valid, mask_BxK, window, model.mask_id)
  mb = masked.astype(jnp.float32)
  tok_m = model.tokenize(masked_ids, valid, masked if obj.masked_tokens == "bases" else None)
  logits_m = model.decode(model.latent(tok_m), tok_m, valid)
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
    "masked_overflow": jnp.sum(tok_m.overflow_K) / jnp.maximum(jnp.sum(tok_m.positions_K), 1),
    **{f"ratio_{k}": tok.positions_K[k] / jnp.maximum(tok.boundaries_K[k], 1) for k in range(len(tok.routes))},
  }
