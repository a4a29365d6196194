"""The MrT5 delete gate (Kallini et al. 2025) as a boundary predictor: which positions survive into the main network.

G_t = k sigmoid(w . LN(h_t) + c) with k = `model.delete_gate.scale` < 0: G ~ 0 keeps a position, G ~ k deletes it.
p_t = 1 - G_t / k = 1 - sigmoid(.) is the keep probability and b_t = G_t > k/2 (i.e. p_t > 1/2): the kept positions
are the chunk starts (select pooling), so "deleted" bytes join the previous kept chunk. Soft deletion: every kept
chunk's G is added as a key bias to the attention logits of every attention layer of the main network (Mamba layers
cannot take a bias; a nested H-Net main ignores it). The bias is the same in training and evaluation, so the
hard selection (positions with G < k/2 removed) and the soft bias compute one function. Regulariser (the router's
aux loss): alpha * mean(G) over the valid positions; alpha is `model.delete_gate.alpha`, or, when that is < 0, a
PI controller towards the deletion rate delta = 1 - 1/N: err = delta - deleted fraction of the batch,
p_acc = 0.9 p_acc + 0.1 k_p err, i_acc += k_i err, alpha = p_acc + i_acc (k_p = 0.5, k_i = 1e-5, MrT5's
defaults), updated by each training step (RouterStat) and used from the next one. MrT5 clamps alpha >= 0, which
only ever pushes towards deleting: in our tiny runs the language-model loss alone drove the gate past the target
(0.96 of the bytes deleted at 1200 steps against 0.83 wanted) and the clamped controller could only sit at 0.
So alpha may go negative by default (a negative alpha rewards keeping); `model.delete_gate.two_sided: false`
restores MrT5's clamp. The router also learns through p (the dechunk's confidence STE) and no ratio loss applies.
w starts with std 1/sqrt(D) and c at the standard-normal quantile of 1 - 1/N, so about 1/N of the positions are
kept at initialisation. `model.delete_gate.keep_all` keeps every position with G = 0 (evaluating the same weights
without deletion: `chunklm eval --set model.delete_gate.keep_all=true`). No cached generation step (the key bias
would have to live in the KV caches).
"""

from __future__ import annotations

import math
import statistics

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.model.layers import constant, normal, param
from chunklm.model.routing import Router, RouterStat, Routing, finalize

K_P, K_I = 0.5, 1e-5


def gate_values(
  h_BxLxD: jax.Array, scale_ln: jax.Array, shift_ln: jax.Array, w: jax.Array, c: jax.Array, k: float
) -> jax.Array:
  """G = k sigmoid(w . LN(h) + c) in float32 (LayerNorm eps 1e-5)."""
  h = h_BxLxD.astype(jnp.float32)
  mu = h.mean(-1, keepdims=True)
  var = ((h - mu) ** 2).mean(-1, keepdims=True)
  ln = (h - mu) * jax.lax.rsqrt(var + 1e-5) * scale_ln[None, None, :] + shift_ln[None, None, :]
  return k * jax.nn.sigmoid(ln @ w + c)


def pi_update(
  p_acc: jax.Array, i_acc: jax.Array, err: jax.Array, k_p: float = K_P, k_i: float = K_I, alpha_min: float = 0.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """MrT5's PI controller: err = target deletion - measured deletion; returns (p_acc, i_acc, alpha) with
  p_acc = 0.9 p_acc + 0.1 k_p err, i_acc += k_i err, alpha = max(alpha_min, p_acc + i_acc)."""
  p_acc = 0.9 * p_acc + 0.1 * k_p * err
  i_acc = i_acc + k_i * err
  return p_acc, i_acc, jnp.maximum(alpha_min, p_acc + i_acc)


class DeleteGateRouter(Router):
  ratio_loss = False
  generation = "the delete gate's attention key bias has no cached step; use cosine, stride, whitespace or gumbel"

  def __init__(self, cfg, level: int, dim: int, *, rngs: nnx.Rngs):
    n = float(cfg.target_ratio[level])
    self.scale_ln = param(None, constant(1.0), (dim,), ("norm",))
    self.shift_ln = param(None, constant(0.0), (dim,), ("norm",))
    self.w = param(rngs.params(), normal(1.0 / math.sqrt(dim)), (dim,), ("embed",))
    self.c = param(None, constant(statistics.NormalDist().inv_cdf(1.0 - 1.0 / n)), (), ())
    self.k, self.delta = cfg.delete_gate.scale, 1.0 - 1.0 / n
    self.fixed_alpha, self.keep_all = cfg.delete_gate.alpha, cfg.delete_gate.keep_all
    self.alpha_min = -math.inf if cfg.delete_gate.two_sided else 0.0
    self.alpha = RouterStat(jnp.asarray(max(cfg.delete_gate.alpha, 0.0), jnp.float32))
    self.p_acc = RouterStat(jnp.zeros((), jnp.float32))
    self.i_acc = RouterStat(jnp.zeros((), jnp.float32))

  def gate(self, h_BxLxD: jax.Array) -> jax.Array:
    return gate_values(h_BxLxD, self.scale_ln[...], self.shift_ln[...], self.w[...], self.c[...], self.k)

  def __call__(self, h_BxLxD, ids_BxL, segment_ids_BxL, valid_BxL, *, train=False, rng=None) -> Routing:
    del ids_BxL, rng
    g_BxL = self.gate(h_BxLxD)
    if self.keep_all:
      g_BxL = jnp.zeros_like(g_BxL)
    p_BxL = 1.0 - g_BxL / self.k
    b_BxL = g_BxL > self.k / 2
    v = valid_BxL.astype(jnp.float32)
    mean_g = jnp.sum(g_BxL * v) / jnp.maximum(v.sum(), 1.0)
    alpha = self.fixed_alpha if self.fixed_alpha >= 0 else jax.lax.stop_gradient(self.alpha[...])
    routing = finalize(p_BxL, b_BxL, segment_ids_BxL, valid_BxL, alpha * mean_g, key_bias_BxL=g_BxL)
    if train and self.fixed_alpha < 0:
      deleted = 1.0 - jnp.sum(routing.b_BxL * v) / jnp.maximum(v.sum(), 1.0)
      p_acc, i_acc, next_alpha = pi_update(
        self.p_acc[...], self.i_acc[...], self.delta - deleted, alpha_min=self.alpha_min
      )
      self.p_acc.set_value(p_acc)
      self.i_acc.set_value(i_acc)
      self.alpha.set_value(next_alpha)
    return routing
