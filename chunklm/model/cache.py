"""Generation state and one-position steps for every model kind: KV caches for attention, recurrent states for
Mamba2, and for the H-Net the routing state of each stage.

A step takes one position per row. `update_B` marks the rows that receive a position at this level: every row at
level 0, and at an H-Net's inner level only the rows whose router just started a chunk, so the main network runs
(and its caches advance) only when a new chunk starts; other rows keep their state bit for bit. In a batch the main
network runs on the chunk-starting rows only, gathered into a smaller batch when they are few (`run_rows`). The
dechunk EMA state (the last smoothed chunk vector) is carried between steps, and bytes inside a chunk reuse it. The step
computes exactly what the full-sequence forward (evaluation capacity) computes at that position. Routers keep their
own step state (a byte counter, the last bytes); `unsupported` says why a model cannot be stepped (mean pooling, a
router without a step form) and `lm_init` refuses such a model.
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


def _where(update_B: jax.Array, new, old):
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
  k_cache = cache.k_BxTxHxK.at[rows, pos_B].set(_where(update_B, k.astype(old_k.dtype), old_k))
  v_cache = cache.v_BxTxHxK.at[rows, pos_B].set(_where(update_B, v.astype(old_v.dtype), old_v))
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
    cache = _where(update_B, new, cache)
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


def _is_hnet(module) -> bool:
  return hasattr(module, "router")


def _levels(module) -> list[int]:
  """Routing levels of an H-Net and its nested H-Nets ([] for a stack)."""
  return [module.level] + _levels(module.main) if _is_hnet(module) else []


def unsupported(model) -> str:
  """Why cached generation cannot run this model ("" when it can)."""
  hnet = getattr(model, "backbone", model)
  while _is_hnet(hnet):
    if hnet.pooling != "select":
      return f"stage {hnet.level} uses {hnet.pooling} pooling, which has no cached step (only select pooling does)"
    if hnet.router.generation:
      return f"stage {hnet.level}: {hnet.router.generation}"
    hnet = hnet.main
  return ""


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
    skip = lambda x, state: (jnp.zeros(x.shape, jnp.float32), state, {lv: jnp.zeros_like(update_B) for lv in levels})
    return jax.lax.cond(jnp.any(update_B), lambda x, state: step(x, state, update_B), skip, x_BxE, state)
  n_groups = -(-batch // small)
  order_G = jnp.nonzero(update_B, size=n_groups * small, fill_value=batch)[0]  # `batch` marks an unused slot
  groups = -(-jnp.sum(update_B) // small)

  def body(carry):
    g, y, state, inner = carry
    idx_S = jax.lax.dynamic_slice(order_G, (g * small,), (small,))
    take = lambda v: jnp.take(v, idx_S, axis=0, mode="clip")
    put = lambda whole, part: whole.at[idx_S].set(part.astype(whole.dtype), mode="drop")
    y_S, sub, inner_S = step(take(x_BxE), jax.tree.map(take, state), idx_S < batch)
    return (g + 1, put(y, y_S), jax.tree.map(put, state, sub),
            {lv: put(inner[lv], b) for lv, b in inner_S.items()})

  init = (jnp.int32(0), jnp.zeros(x_BxE.shape, jnp.float32), state, {lv: jnp.zeros_like(update_B) for lv in levels})
  _, y, state, inner = jax.lax.while_loop(lambda carry: carry[0] < groups, body, init)
  return y, state, inner


def hnet_init(hnet, batch: int, max_len: int) -> dict:
  dim = hnet.residual_proj.kernel.shape[0]
  main = hnet_init(hnet.main, batch, max_len) if _is_hnet(hnet.main) else stack_init(hnet.main, batch, max_len)
  return {"enc": stack_init(hnet.encoder, batch, max_len), "dec": stack_init(hnet.decoder, batch, max_len),
          "main": main, "h_prev": jnp.zeros((batch, dim), jnp.float32), "has_prev": jnp.zeros(batch, bool),
          "zbar": jnp.zeros((batch, dim), jnp.float32), "router": hnet.router.init_step_state(batch)}


def hnet_step(hnet, x_BxD: jax.Array, state: dict, update_B: jax.Array, ids_B: jax.Array | None = None
              ) -> tuple[jax.Array, dict, dict]:
  """(y_BxD, new state, {stage: boundary_B}) for one position of the rows in `update_B`; `ids_B` are the bytes
  (level 0 only)."""
  h_BxD, enc = stack_step(hnet.encoder, x_BxD, state["enc"], update_B)
  p_B, chosen_B, router_state = hnet.router.step(h_BxD, state["h_prev"], state["has_prev"], ids_B, state["router"])
  b_B = chosen_B & update_B
  z_BxE = h_BxD
  if hnet.pad is not None:
    z_BxE = jnp.concatenate([h_BxD, jnp.broadcast_to(hnet.pad[...].astype(h_BxD.dtype),
                                                     (h_BxD.shape[0], hnet.pad.shape[0]))], axis=-1)

  def main_step(z, main_state, update):
    if _is_hnet(hnet.main):
      zhat, main_state, inner = hnet_step(hnet.main, z, main_state, update)
    else:
      (zhat, main_state), inner = stack_step(hnet.main, z, main_state, update), {}
    return zhat.astype(jnp.float32), main_state, inner

  zhat_BxE, main, inner = run_rows(main_step, z_BxE, state["main"], b_B, _levels(hnet.main))
  zhat_BxD = zhat_BxE[:, : h_BxD.shape[-1]]
  p_use = jnp.where(state["has_prev"], jnp.clip(p_B, 1e-4, 1 - 1e-4), 1.0)[:, None]
  zbar_BxD = jnp.where(b_B[:, None], p_use * zhat_BxD + (1 - p_use) * state["zbar"], state["zbar"])
  y_BxD = zbar_BxD + hnet.residual_proj(h_BxD.astype(jnp.float32))
  out_BxD, dec = stack_step(hnet.decoder, y_BxD, state["dec"], update_B)
  new_state = {"enc": enc, "dec": dec, "main": main, "h_prev": _where(update_B, h_BxD.astype(jnp.float32),
                                                                      state["h_prev"]),
               "has_prev": state["has_prev"] | update_B, "zbar": zbar_BxD,
               "router": _where(update_B, router_state, state["router"])}
  return out_BxD, new_state, {hnet.level: b_B, **inner}


def lm_init(model, batch: int, max_len: int):
  why = unsupported(model)
  if why:
    raise GenerationUnsupported(f"cannot generate with this model: {why}")
  if _is_hnet(model.backbone):
    return hnet_init(model.backbone, batch, max_len)
  return stack_init(model.backbone, batch, max_len)


def lm_step(model, ids_B: jax.Array, state) -> tuple[jax.Array, object, dict]:
  """(logits_BxV float32, new state, {stage: boundary_B}) for the next id of every row."""
  x_BxD = model.embed(ids_B)
  every = jnp.ones(ids_B.shape[0], bool)
  if _is_hnet(model.backbone):
    y_BxD, state, bounds = hnet_step(model.backbone, x_BxD, state, every, ids_B)
  else:
    (y_BxD, state), bounds = stack_step(model.backbone, x_BxD, state, every), {}
  return model.head(y_BxD).astype(jnp.float32), state, bounds
