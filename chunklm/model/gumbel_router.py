"""Gumbel-sigmoid boundary predictor with a binomial prior (dynamic token pooling, Nawrot et al. 2023; per-script
targets as in MAGNET).

A linear boundary logit per position, l_t = w . h_t + c (c starts at log(1/(N-1)), so the initial rate is ~1/N).
Training: a relaxed Bernoulli sample s_t = sigmoid((l_t + logistic noise) / tau), hard decision b_t = s_t > 1/2 and
p_t = b_t + s_t - stop_gradient(s_t) (forward 0/1, gradient of s). The router learns through p (the dechunk's
confidence STE) and through the prior: aux = weight * sum_g -log Binomial(k_g; n_g, 1/N_g) / positions, where per
window and script group g, n_g counts the positions the router decides on (not document starts) and k_g = sum of
their p (soft count, forward = the hard count). Evaluation and generation: no noise, b_t = sigmoid(l_t) > 1/2.
With `model.script_ratios` the target N of a byte depends on the Unicode script of its character (scripts.py;
stage 0 only, inner stages use target_ratio).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.config import SCRIPTS
from chunklm.model.layers import constant, normal, param
from chunklm.model.routing import Router, Routing, document_starts, finalize
from chunklm.model.scripts import script_classes


def binomial_log_prob(k: jax.Array, n: jax.Array, q: jax.Array) -> jax.Array:
  """log C(n, k) q^k (1-q)^(n-k) for real k in [0, n] (lgamma form, differentiable in k)."""
  k = jnp.clip(k, 0.0, n)
  return (jax.lax.lgamma(n + 1.0) - jax.lax.lgamma(k + 1.0) - jax.lax.lgamma(n - k + 1.0)
          + k * jnp.log(q) + (n - k) * jnp.log1p(-q))


class GumbelRouter(Router):
  ratio_loss = False

  def __init__(self, cfg, level: int, dim: int, *, rngs: nnx.Rngs):
    n = float(cfg.target_ratio[level])
    self.w = param(rngs.params(), normal(cfg.init_std), (dim,), ("embed",))
    self.c = param(None, constant(math.log(1.0 / (n - 1.0))), (), ())
    self.temperature, self.prior_weight = cfg.gumbel_temperature, cfg.gumbel_prior_weight
    targets = cfg.script_targets() if level == 0 else {"default": n}
    self.rates = tuple(1.0 / targets.get(s, targets["default"]) for s in SCRIPTS)  # per script class
    self.by_script = level == 0 and bool(cfg.script_ratios)

  def logits(self, h):
    return h.astype(jnp.float32) @ self.w[...] + self.c[...]

  def __call__(self, h_BxLxD, ids_BxL, segment_ids_BxL, valid_BxL, *, train=False, rng=None) -> Routing:
    logit_BxL = self.logits(h_BxLxD)
    if train and rng is not None:
      u = jax.random.uniform(rng, logit_BxL.shape, jnp.float32, 1e-6, 1.0 - 1e-6)
      logit_BxL = logit_BxL + jnp.log(u) - jnp.log1p(-u)  # logistic noise = difference of two Gumbels
    soft_BxL = jax.nn.sigmoid(logit_BxL / (self.temperature if train else 1.0))
    b_BxL = soft_BxL > 0.5
    p_BxL = b_BxL.astype(jnp.float32) + soft_BxL - jax.lax.stop_gradient(soft_BxL)
    decide_BxL = valid_BxL & ~document_starts(segment_ids_BxL)
    groups_BxL = script_classes(ids_BxL) if self.by_script and ids_BxL is not None \
        else jnp.zeros(segment_ids_BxL.shape, jnp.int32)
    log_prob = jnp.zeros((), jnp.float32)
    for g, rate in enumerate(self.rates):
      if g and not self.by_script:
        break
      in_g = (decide_BxL & (groups_BxL == g)).astype(jnp.float32)
      n_B, k_B = in_g.sum(1), (p_BxL * in_g).sum(1)
      log_prob += jnp.sum(binomial_log_prob(k_B, n_B, jnp.float32(rate)))
    aux = -self.prior_weight * log_prob / jnp.maximum(decide_BxL.sum(), 1)
    return finalize(p_BxL, b_BxL, segment_ids_BxL, valid_BxL, aux)

  def step(self, h_BxD, h_prev_BxD, has_prev_B, ids_B, state):
    del h_prev_BxD, ids_B
    b_B = (self.logits(h_BxD) > 0.0) | ~has_prev_B  # sigmoid > 1/2, no noise: as the evaluation forward
    return b_B.astype(jnp.float32), b_B, state
