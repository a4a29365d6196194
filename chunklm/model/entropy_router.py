"""Entropy boundaries (BLT, Pagnoni et al. 2024): a chunk starts where a small byte LM is unsure of the next byte.

The router owns a tiny causal byte LM (`model.entropy.layout` at width `model.entropy.d_model`) trained jointly on
the same bytes: its mean next-byte NLL is the router's aux loss (added to the training loss with weight 1). It
reads the bytes, not the H-Net's states, so no gradient flows between it and the main model, and the boundary
decision is a hard threshold (p = b, no ratio loss). H_t is the entropy of its prediction of byte t from bytes < t
(causal). mode global: b_t = H_t > theta; jump: b_t = H_t - H_{t-1} > theta (0 right after a document start).
theta is a running statistic (RouterStat, kept in checkpoints, untouched by the optimizer): an EMA, momentum
`model.entropy.momentum`, of each training batch's quantile of the statistic at the level that leaves a fraction
1/N of boundaries (document starts counted). The forward uses the stored theta (never the current batch's, which
would let later bytes move earlier boundaries); before the first update theta is +inf (document starts only).
No cached generation step yet (the byte LM would need its own caches): `generate` refuses this router.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.model.layers import Embed, Linear
from chunklm.model.routing import Router, RouterStat, Routing, document_starts, finalize, update_running_quantile
from chunklm.model.stack import Stack


class EntropyRouter(Router):
  ratio_loss = False
  generation = "the entropy router's byte LM has no cached step; use cosine, stride, whitespace or gumbel"

  def __init__(self, cfg, level: int, dim: int, *, rngs: nnx.Rngs):
    del dim
    lm = cfg.entropy_lm()  # the byte LM: a plain stack at level 0
    d = lm.d_model[0]
    self.embed = Embed(256, d, rngs=rngs)
    self.lm = Stack(lm.layout[0], lm, 0, rngs=rngs)
    self.head = Linear(d, (256,), ("embed", "vocab"), rngs=rngs, std=cfg.init_std)
    self.mode, self.rate, self.momentum = cfg.entropy.mode, 1.0 / float(cfg.target_ratio[level]), cfg.entropy.momentum
    self.threshold = RouterStat(jnp.zeros((), jnp.float32))
    self.updates = RouterStat(jnp.zeros((), jnp.float32))  # how many batches the threshold has seen

  def __call__(self, h_BxLxD, ids_BxL, segment_ids_BxL, valid_BxL, *, train=False, rng=None) -> Routing:
    del h_BxLxD, rng
    if ids_BxL is None:
      raise ValueError("the entropy router needs the bytes (stage 0 only)")
    positions = jnp.broadcast_to(jnp.arange(ids_BxL.shape[1]), ids_BxL.shape)
    logits_BxLxV = self.head(self.lm(self.embed(ids_BxL), segment_ids_BxL, positions)).astype(jnp.float32)
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV)
    targets = jnp.roll(ids_BxL, -1, axis=1).astype(jnp.int32)
    same_next = (jnp.roll(segment_ids_BxL, -1, axis=1) == segment_ids_BxL) & jnp.roll(valid_BxL, -1, axis=1)
    same_next = same_next.at[:, -1].set(False) & valid_BxL
    nll_BxL = -jnp.take_along_axis(logp_BxLxV, targets[..., None], axis=-1)[..., 0]
    w = same_next.astype(jnp.float32)
    nll = jnp.sum(nll_BxL * w) / jnp.maximum(w.sum(), 1.0)
    ent_BxL = -jnp.sum(jnp.exp(logp_BxLxV) * logp_BxLxV, axis=-1)
    h_BxL = jax.lax.stop_gradient(jnp.pad(ent_BxL[:, :-1], ((0, 0), (1, 0))))  # H_t: predicting byte t
    starts = document_starts(segment_ids_BxL)
    if self.mode == "jump":
      after_start = jnp.pad(starts[:, :-1], ((0, 0), (1, 0)), constant_values=True)
      stat_BxL = jnp.where(after_start, 0.0, h_BxL - jnp.pad(h_BxL[:, :-1], ((0, 0), (1, 0))))
    else:
      stat_BxL = h_BxL
    seen = self.updates[...] > 0
    theta = jnp.where(seen, jax.lax.stop_gradient(self.threshold[...]), jnp.inf)
    b_BxL = stat_BxL > theta
    if train:
      n_valid, n_starts = valid_BxL.sum(), (valid_BxL & starts).sum()
      frac = jnp.clip((n_valid * self.rate - n_starts) / jnp.maximum(n_valid - n_starts, 1), 0.0, 1.0)
      update_running_quantile(self.threshold, self.updates, stat_BxL, valid_BxL & ~starts, frac, self.momentum)
    return finalize(b_BxL.astype(jnp.float32), b_BxL, segment_ids_BxL, valid_BxL, nll)
