"""Generation state and one-position steps for every model kind: KV caches for attention, recurrent states for
Mamba2, layer stacks, and the language model around them (the H-Net's own step, with the routing state of each
stage, is `HNet.step` in hnet.py, beside the forward it must equal).

A step takes one position per row. `update_B` marks the rows that receive a position: rows outside it keep their
state bit for bit (an H-Net's inner level receives a position only on the rows whose router just started a chunk).
`run_rows` runs a step on the marked rows only, gathered into a smaller batch when they are few. `unsupported` says
why a model cannot be stepped (mean pooling, a router without a step form) and `lm_init` refuses such a model.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from chunklm.errors import UserError
from chunklm.model.layers import rope


class GenerationUnsupported(UserError):
  """The model has a part without a one-position step (mean pooling, some routers)."""


@struct.dataclass
class KVCache:
  k_BxTxHxK: jax.Array
  v_BxTxHxK: jax.Array
  length_B: jax.Array  # positions written so far (= the position of the next entry)


def select_rows(update_B: jax.Array, new, old):
  """Row-wise select over two state pytrees."""

  def pick(n, o):
    return jnp.where(update_B.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)

  return jax.tree.map(pick, new, old)


def attention_step(att, x_BxD: jax.Array, cache: KVCache, update_B: jax.Array) -> tuple[jax.Array, KVCache]:
  b = x_BxD.shape[0]
  qkv_Bx3xHxK = att.w_qkv(x_BxD)
  pos_B = cache.length_B
  q = rope(qkv_Bx3xHxK[:, None, 0], pos_B[:, None], att.rotary_dim, att.rope_theta)[:, 0]
  k = rope(qkv_Bx3xHxK[:, None, 1], pos_B[:, None], att.rotary_dim, att.rope_theta)[:, 0]
  v = qkv_Bx3xHxK[:, 2]
  rows = jnp.arange(b)
  old_k, old_v = cache.k_BxTxHxK[rows, pos_B], cache.v_BxTxHxK[rows, pos_B]
  k_cache = cache.k_BxTxHxK.at[rows, pos_B].set(select_rows(update_B, k.astype(old_k.dtype), old_k))
  v_cache = cache.v_BxTxHxK.at[rows, pos_B].set(select_rows(update_B, v.astype(old_v.dtype), old_v))
  keys_T = jnp.arange(k_cache.shape[1])
  allowed_BxT = keys_T[None] <= pos_B[:, None]
  if att.window:
    allowed_BxT &= pos_B[:, None] - keys_T[None] <= att.window
  scores_BxHxT = jnp.einsum("bhk,bthk->bht", q.astype(jnp.float32), k_cache) / math.sqrt(att.head_dim)
  scores_BxHxT = jnp.where(allowed_BxT[:, None], scores_BxHxT, -jnp.inf)
  out_BxHxK = jnp.einsum("bht,bthk->bhk", jax.nn.softmax(scores_BxHxT, axis=-1), v_cache)
  y_BxD = att.w_out(out_BxHxK.reshape(b, -1).astype(x_BxD.dtype))
  return y_BxD, KVCache(k_cache, v_cache, pos_B + update_B.astype(pos_B.dtype))


def block_init(block, batch: int, max_len: int):
  if block.kind in "tT":
    att = block.mixer
    shape = (batch, max_len, att.n_heads, att.head_dim)
    return KVCache(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(batch, jnp.int32))
  return block.mixer.init_cache(batch)


def block_step(block, x_BxD: jax.Array, cache, update_B: jax.Array):
  h = block.norm1(x_BxD)
  if block.kind in "tT":
    h, cache = attention_step(block.mixer, h, cache, update_B)
  else:
    h, new = block.mixer.step(h, cache, jnp.zeros_like(update_B))
    cache = select_rows(update_B, new, cache)
  x_BxD = x_BxD + h.astype(jnp.float32)
  if block.kind.isupper():
    x_BxD = x_BxD + block.mlp(block.norm2(x_BxD)).astype(jnp.float32)
  return x_BxD, cache


def stack_init(stack, batch: int, max_len: int) -> list:
  return [block_init(b, batch, max_len) for b in stack.blocks]


def stack_step(stack, x_BxD: jax.Array, caches: list, update_B: jax.Array) -> tuple[jax.Array, list]:
  x_BxD = x_BxD.astype(jnp.float32)
  new_caches = []
  for block, cache in zip(stack.blocks, caches):
    x_BxD, cache = block_step(block, x_BxD, cache, update_B)
    new_caches.append(cache)
  return stack.norm(x_BxD), new_caches


def unsupported(model) -> str:
  """Why cached generation cannot run this model ("" when it can)."""
  return model.backbone.step_unsupported() if model.cfg.num_stages else ""


def compact_rows(batch: int) -> int:
  """How many rows the main network runs on at a time (a quarter of the batch, at least 1)."""
  return max(1, -(-batch // 4))


def run_rows(step, x_BxE: jax.Array, state, update_B: jax.Array, levels: list[int]):
  """step(x, state, update) -> (y, state, {level: boundary}) run only for the rows in `update_B`, compact_rows(B)
  rows at a time: not at all when no row starts a chunk (about 5 steps in 6 for one sequence), once when they fit
  (a batch of B sequences starts ~B/6 chunks per step), more often when many rows start chunks together. The rows
  are gathered into the small batch and scattered back inside a while loop, whose carried state XLA updates in
  place. Rows that do not run keep their state bit for bit; their y is 0."""
  batch = update_B.shape[0]
  small = compact_rows(batch)
  if small == batch:  # one row: run it or not, no gathering

    def skip(x, state):
      return jnp.zeros(x.shape, jnp.float32), state, {lv: jnp.zeros_like(update_B) for lv in levels}

    return jax.lax.cond(jnp.any(update_B), lambda x, state: step(x, state, update_B), skip, x_BxE, state)
  n_groups = -(-batch // small)
  order_G = jnp.nonzero(update_B, size=n_groups * small, fill_value=batch)[0]  # `batch` marks an unused slot
  groups = -(-jnp.sum(update_B) // small)

  def body(carry):
    g, y, state, inner = carry
    idx_S = jax.lax.dynamic_slice(order_G, (g * small,), (small,))

    def take(v):
      return jnp.take(v, idx_S, axis=0, mode="clip")

    def put(whole, part):
      return whole.at[idx_S].set(part.astype(whole.dtype), mode="drop")

    y_S, sub, inner_S = step(take(x_BxE), jax.tree.map(take, state), idx_S < batch)
    return (g + 1, put(y, y_S), jax.tree.map(put, state, sub), {lv: put(inner[lv], b) for lv, b in inner_S.items()})

  init = (jnp.int32(0), jnp.zeros(x_BxE.shape, jnp.float32), state, {lv: jnp.zeros_like(update_B) for lv in levels})
  _, y, state, inner = jax.lax.while_loop(lambda carry: carry[0] < groups, body, init)
  return y, state, inner


def lm_init(model, batch: int, max_len: int):
  why = unsupported(model)
  if why:
    raise GenerationUnsupported(f"cannot generate with this model: {why}")
  if model.cfg.num_stages:
    return model.backbone.init_step_state(batch, max_len)
  return stack_init(model.backbone, batch, max_len)


def lm_step(model, ids_B: jax.Array, state) -> tuple[jax.Array, object, dict]:
  """(logits_BxV float32, new state, {stage: boundary_B}) for the next id of every row."""
  x_BxD = model.embed(ids_B)
  every = jnp.ones(ids_B.shape[0], bool)
  if model.cfg.num_stages:
    y_BxD, state, bounds = model.backbone.step(x_BxD, state, every, ids_B)
  else:
    (y_BxD, state), bounds = stack_step(model.backbone, x_BxD, state, every), {}
  return model.head(y_BxD).astype(jnp.float32), state, bounds
