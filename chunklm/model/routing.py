"""Boundary predictors ("routers"): where does a new chunk start? The interface and the H-Net router.

Every predictor has the same interface so they can be compared fairly:
  router(h_BxLxD, ids_BxL, segment_ids_BxL, valid_BxL, train=False, rng=None) -> Routing(p_BxL, b_BxL, aux_loss)
p is a boundary probability in [0, 1] (float32, carries gradient), b the hard decision (bool). Document starts are
always boundaries (p = 1) and invalid positions (padding) never are. `aux_loss` is a predictor-specific loss (0 for
the H-Net router, whose ratio loss lives in chunking.py). `ids_BxL` is None at inner stages. `train` turns on
training-only behaviour (noise from `rng`, running statistics); evaluation is deterministic.
Class attributes: `ratio_loss` says whether the H-Net ratio loss applies (it needs a learnable p); `generation` is
"" when `step` reproduces the forward, else why it cannot. Generation calls
  router.step(h_BxD, h_prev_BxD, has_prev_B, ids_B, state) -> (p_B, b_B, state), state from init_step_state(batch).
Running statistics that are not trained by gradient live in `RouterStat` variables (not nnx.Param): the training
step writes back their updated values; checkpoints keep them. The other routers are in routers.py's registry.

The H-Net router (paper Sec. 2.2.1): p_t = (1 - cos(W_q h_{t-1}, W_k h_t)) / 2, b_t = 1[p_t > 1/2], with W_q and W_k
initialised to the identity. No noise or temperature: the router learns through the dechunk smoothing, the
confidence straight-through estimator and the ratio loss.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.model.layers import param, with_weight


class Routing(NamedTuple):
  p_BxL: jax.Array  # boundary probability, float32
  b_BxL: jax.Array  # boundary decision, bool
  aux_loss: jax.Array  # predictor-specific loss (scalar)
  key_bias_BxL: jax.Array | None = None  # additive attention key bias for the main network (delete gate)


class RouterStat(nnx.Variable):
  """A router statistic updated by the training step itself (not by the optimizer), e.g. a running threshold."""


class Router(nnx.Module):
  ratio_loss = True  # the H-Net ratio loss applies (the router has a learnable p)
  generation = ""  # why cached generation cannot run with this router ("" = it can)

  def __call__(self, h_BxLxD, ids_BxL, segment_ids_BxL, valid_BxL, *, train=False, rng=None) -> Routing:
    raise NotImplementedError

  def init_step_state(self, batch: int):
    del batch
    return {}

  def step(self, h_BxD, h_prev_BxD, has_prev_B, ids_B, state):
    """(p_B, b_B, state) for one position; only routers whose `generation` is "" have one."""
    raise NotImplementedError(self.generation)


def document_starts(segment_ids_BxL: jax.Array) -> jax.Array:
  """True at position 0 and wherever the segment id changes."""
  prev = jnp.pad(segment_ids_BxL[:, :-1], ((0, 0), (1, 0)), constant_values=-2)
  return segment_ids_BxL != prev


def finalize(
  p_BxL: jax.Array,
  b_BxL: jax.Array,
  segment_ids_BxL: jax.Array,
  valid_BxL: jax.Array,
  aux_loss: jax.Array | float = 0.0,
  key_bias_BxL: jax.Array | None = None,
) -> Routing:
  """Forces p = 1 and b = 1 at document starts, b = 0 on invalid positions."""
  starts = document_starts(segment_ids_BxL) & valid_BxL
  p = jnp.where(starts, 1.0, p_BxL.astype(jnp.float32))
  b = (b_BxL | starts) & valid_BxL
  return Routing(p, b, jnp.asarray(aux_loss, jnp.float32), key_bias_BxL)


def update_running_quantile(
  threshold: RouterStat,
  updates: RouterStat,
  stat_BxL: jax.Array,
  decide_BxL: jax.Array,
  frac: jax.Array,
  momentum: float,
) -> None:
  """Moves a running threshold towards this batch's level that leaves a fraction `frac` of the decided positions
  above it: threshold <- momentum * threshold + (1 - momentum) * quantile(stat[decide], 1 - frac); the first update
  takes the batch's quantile as is. `updates` counts the batches seen (0 = the threshold is still its initial value).
  A batch with nothing to decide leaves both unchanged."""
  q = jnp.nanquantile(jnp.where(decide_BxL, stat_BxL.astype(jnp.float32), jnp.nan), 1.0 - frac)
  moved = jnp.where(updates[...] > 0, momentum * threshold[...] + (1 - momentum) * q, q)
  threshold.set_value(jnp.where(jnp.isfinite(q), moved, threshold[...]))
  updates.set_value(updates[...] + jnp.isfinite(q).astype(jnp.float32))


def _identity(key, shape, dtype):
  del key
  rows, cols = shape
  return jnp.eye(rows, cols, dtype=dtype)


class CosineRouter(Router):
  """The H-Net routing module: cosine dissimilarity of adjacent (projected) encoder states."""

  def __init__(self, cfg, level: int, dim: int, *, rngs: nnx.Rngs):
    del cfg, level, rngs
    self.w_q = param(None, _identity, (dim, dim), ("embed", "embed_out"))
    self.w_k = param(None, _identity, (dim, dim), ("embed", "embed_out"))

  def __call__(
    self,
    h_BxLxD: jax.Array,
    ids_BxL: jax.Array,
    segment_ids_BxL: jax.Array,
    valid_BxL: jax.Array,
    *,
    train: bool = False,
    rng: jax.Array | None = None,
  ) -> Routing:
    del ids_BxL, train, rng
    h = h_BxLxD.astype(jnp.float32)
    q_BxLxD = _normalize(with_weight(jnp.matmul, h, self.w_q))
    k_BxLxD = _normalize(with_weight(jnp.matmul, h, self.w_k))
    cos_BxL1 = jnp.sum(q_BxLxD[:, :-1] * k_BxLxD[:, 1:], axis=-1)  # q from t-1, k from t (as in the official code)
    p_BxL = jnp.pad(jnp.clip((1.0 - cos_BxL1) / 2.0, 0.0, 1.0), ((0, 0), (1, 0)), constant_values=1.0)
    return finalize(p_BxL, p_BxL > 0.5, segment_ids_BxL, valid_BxL)

  def step(self, h_BxD, h_prev_BxD, has_prev_B, ids_B, state):
    """One position of generation: (p_B, b_B, state) from this and the previous encoder state; p = 1 at a
    document start."""
    del ids_B
    q = _normalize(with_weight(jnp.matmul, h_prev_BxD.astype(jnp.float32), self.w_q))
    k = _normalize(with_weight(jnp.matmul, h_BxD.astype(jnp.float32), self.w_k))
    p = jnp.clip((1.0 - jnp.sum(q * k, axis=-1)) / 2.0, 0.0, 1.0)
    p = jnp.where(has_prev_B, p, 1.0)
    return p, (p > 0.5) | ~has_prev_B, state


def _normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  # rsqrt of the clamped squared norm keeps the gradient finite at x = 0 (an all-zero padding slot)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))
