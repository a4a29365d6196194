"""Gumbel-sigmoid boundary predictor with a binomial prior (dynamic token pooling, Nawrot et al. 2023; per-script
targets as in MAGNET).

A linear boundary logit per position, l_t = w . h_t + c (c starts at log(1/(N-1)), so the initial rate is ~1/N).
Training: a relaxed Bernoulli sample s_t = sigmoid((l_t + logistic noise) / tau), hard decision b_t = s_t > 1/2 and
p_t = b_t + s_t - stop_gradient(s_t) (forward 0/1, gradient of s). The router learns through p (the dechunk's
confidence STE) and through the prior: aux = weight * sum_g -log Binomial(k_g; n_g, 1/N_g) / positions, where per
window and script group g, n_g counts the positions the router decides on (not document starts) and k_g = sum of
their p (soft count, forward = the hard count). With `model.gumbel.script_ratios` the target N of a byte depends on
the Unicode script of its character (scripts.py; stage 0 only, inner stages use target_ratio).
Evaluation and generation have no noise: b_t = l_t > theta. The dynamic-pooling rule theta = 0 (sigmoid(l) > 1/2)
keeps the training rate only once the logits polarise; in our short runs they do not (at 1200 tiny steps every
logit stayed below 0, so evaluation kept document starts only: 255 bytes per chunk instead of 6). So theta is a
running statistic (RouterStat, as the entropy router's): an EMA, momentum 0.9, of each training batch's quantile of
the noise-free logits at the fraction of positions the noisy sample made boundaries. Evaluation then keeps the rate
the prior enforced in training, at the positions the router ranks highest. Before the first training step theta = 0.
One threshold serves every script: with `model.gumbel.script_ratios` the training sample keeps each script's rate,
and evaluation keeps the overall rate, split between scripts by the logits (exact per script once they polarise). A
threshold per script cannot be causal: a lead byte's script is known only from the bytes after it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.config import SCRIPTS
from chunklm.model.layers import constant, normal, param
from chunklm.model.routing import Router, RouterStat, Routing, document_starts, finalize, update_running_quantile
from chunklm.model.scripts import script_classes

EVAL_THRESHOLD_MOMENTUM = 0.9


def binomial_log_prob(k: jax.Array, n: jax.Array, q: jax.Array) -> jax.Array:
  """log C(n, k) q^k (1-q)^(n-k) for real k in [0, n] (lgamma form, differentiable in k)."""
  k = jnp.clip(k, 0.0, n)
  return (
    jax.lax.lgamma(n + 1.0)
    - jax.lax.lgamma(k + 1.0)
    - jax.lax.lgamma(n - k + 1.0)
    + k * jnp.log(q)
    + (n - k) * jnp.log1p(-q)
  )


class GumbelRouter(Router):
  ratio_loss = False

  def __init__(self, cfg, level: int, dim: int, *, rngs: nnx.Rngs):
    n = float(cfg.target_ratio[level])
    self.w = param(rngs.params(), normal(cfg.init_std), (dim,), ("embed",))
    self.c = param(None, constant(math.log(1.0 / (n - 1.0))), (), ())
    self.temperature, self.prior_weight = cfg.gumbel.temperature, cfg.gumbel.prior_weight
    targets = cfg.script_targets() if level == 0 else {"default": n}
    self.rates = tuple(1.0 / targets.get(s, targets["default"]) for s in SCRIPTS)  # per script class
    self.by_script = level == 0 and bool(cfg.gumbel.script_ratios)
    self.threshold = RouterStat(jnp.zeros((), jnp.float32))  # the evaluation threshold on the logit
    self.updates = RouterStat(jnp.zeros((), jnp.float32))  # how many training batches it has seen

  def logits(self, h):
    return h.astype(jnp.float32) @ self.w[...] + self.c[...]

  def __call__(self, h_BxLxD, ids_BxL, segment_ids_BxL, valid_BxL, *, train=False, rng=None) -> Routing:
    logit_BxL = self.logits(h_BxLxD)
    if not train:
      b_BxL = logit_BxL > jax.lax.stop_gradient(self.threshold[...])
      return finalize(b_BxL.astype(jnp.float32), b_BxL, segment_ids_BxL, valid_BxL)  # p = b, as in training
    sample_BxL = logit_BxL
    if rng is not None:
      u = jax.random.uniform(rng, logit_BxL.shape, jnp.float32, 1e-6, 1.0 - 1e-6)
      sample_BxL = logit_BxL + jnp.log(u) - jnp.log1p(-u)  # logistic noise = difference of two Gumbels
    soft_BxL = jax.nn.sigmoid(sample_BxL / self.temperature)
    b_BxL = soft_BxL > 0.5
    p_BxL = b_BxL.astype(jnp.float32) + soft_BxL - jax.lax.stop_gradient(soft_BxL)
    decide_BxL = valid_BxL & ~document_starts(segment_ids_BxL)
    groups_BxL = (
      script_classes(ids_BxL) if self.by_script and ids_BxL is not None else jnp.zeros(segment_ids_BxL.shape, jnp.int32)
    )
    log_prob = jnp.zeros((), jnp.float32)
    for g, rate in enumerate(self.rates):
      if g and not self.by_script:
        break
      in_g = (decide_BxL & (groups_BxL == g)).astype(jnp.float32)
      n_B, k_B = in_g.sum(1), (p_BxL * in_g).sum(1)
      log_prob += jnp.sum(binomial_log_prob(k_B, n_B, jnp.float32(rate)))
    aux = -self.prior_weight * log_prob / jnp.maximum(decide_BxL.sum(), 1)
    frac = jnp.sum(b_BxL & decide_BxL) / jnp.maximum(decide_BxL.sum(), 1)
    update_running_quantile(
      self.threshold, self.updates, jax.lax.stop_gradient(logit_BxL), decide_BxL, frac, EVAL_THRESHOLD_MOMENTUM
    )
    return finalize(p_BxL, b_BxL, segment_ids_BxL, valid_BxL, aux)

  def step(self, h_BxD, h_prev_BxD, has_prev_B, ids_B, state):
    del h_prev_BxD, ids_B
    logit_B = self.logits(h_BxD)
    b_B = (logit_B > self.threshold[...]) | ~has_prev_B  # no noise: as the evaluation forward
    return b_B.astype(jnp.float32), b_B, state
