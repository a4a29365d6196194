"""MrT5 (Kallini et al. 2025): a byte encoder-decoder whose encoder learns to delete positions.

Encoder: pre-norm blocks of bidirectional self-attention + SwiGLU over the input bytes. After `gate_layer` blocks the
delete gate scores every position, G_t = k sigmoid(w . LN(h_t) + c) in [k, 0] (k = `gate_scale` < 0; MrT5 writes
k sigmoid(-(w h + b)), the same function with w, b negated): G ~ 0 keeps a position, G ~ k deletes it.
  soft deletion (training): G is added to the attention logits of every key in the later encoder blocks and in the
    decoder's cross-attention, so deleted positions fade out while everything stays differentiable;
  hard deletion (inference): positions with G < k/2 are removed and the kept ones compacted into the smallest of a
    few static lengths (`buckets` x input length) that holds every row's kept count, so the later encoder blocks
    and the cross-attention run on fewer positions. Kept positions keep their original RoPE indices and their own
    G as a key bias, so hard deletion equals soft deletion with the deleted positions' G at -inf.
Decoder: causal self-attention, cross-attention over the encoder output, SwiGLU. Embedding shared by encoder and
decoder inputs, separate LM head. Attention may use the off-by-one softmax exp(x_i) / (1 + sum_j exp(x_j))
(`softmax1`). Everything is float32.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.config.mrt5 import MrT5Config
from chunklm.model.bidirectional import Block, attend
from chunklm.model.delete_gate import gate_values
from chunklm.model.layers import Embed, Linear, RMSNorm, constant, normal, param, rope

GATE_INIT_BIAS = -3.0  # sigmoid(-3 + w.LN(h)) is small for most positions: the gate starts by keeping them


class Encoded(NamedTuple):
  h_BxCxD: jax.Array  # encoder output (C = input length, or the bucket after hard deletion)
  valid_BxC: jax.Array  # positions that hold an (undeleted) input byte
  bias_BxC: jax.Array | None  # key bias for cross-attention (G; None without a gate)
  g_BxL: jax.Array  # the gate over every input position (k at padding)
  keep_BxL: jax.Array  # positions the gate keeps (G > k/2), valid ones only
  g_reg_BxL: jax.Array | None = None  # G with the encoder states held fixed: what the regulariser trains


def _pairs(valid_BxL: jax.Array) -> jax.Array:
  return valid_BxL[:, :, None] & valid_BxL[:, None, :]


class MrT5(nnx.Module):
  def __init__(self, cfg: MrT5Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d = cfg.d_model
    self.embed = Embed(cfg.vocab_size, d, rngs=rngs)
    enc_std = cfg.init_std / math.sqrt(2 * cfg.enc_layers)
    dec_std = cfg.init_std / math.sqrt(3 * cfg.dec_layers)
    self.encoder = nnx.List([Block(cfg, rngs=rngs, out_std=enc_std, decoder=False) for _ in range(cfg.enc_layers)])
    self.enc_norm = RMSNorm(d)
    self.gate_scale_ln = param(None, constant(1.0), (d,), ("norm",))
    self.gate_shift_ln = param(None, constant(0.0), (d,), ("norm",))
    self.gate_w = param(rngs.params(), normal(1.0 / math.sqrt(d)), (d,), ("embed",))
    self.gate_c = param(None, constant(GATE_INIT_BIAS), (), ())
    self.decoder = nnx.List([Block(cfg, rngs=rngs, out_std=dec_std, decoder=True) for _ in range(cfg.dec_layers)])
    self.dec_norm = RMSNorm(d)
    self.head = Linear(d, (cfg.vocab_size,), ("embed", "vocab"), rngs=rngs, std=cfg.init_std)

  def gate(self, x_BxLxD: jax.Array, valid_BxL: jax.Array) -> jax.Array:
    g = gate_values(
      x_BxLxD, self.gate_scale_ln[...], self.gate_shift_ln[...], self.gate_w[...], self.gate_c[...], self.cfg.gate_scale
    )
    return jnp.where(valid_BxL, g, self.cfg.gate_scale)

  def encode_front(self, ids_BxL: jax.Array, valid_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(h_BxLxD after the first gate_layer blocks, G_BxL with k at padding)."""
    pos = jnp.broadcast_to(jnp.arange(ids_BxL.shape[1]), ids_BxL.shape)
    x = self.embed(ids_BxL).astype(jnp.float32)
    for block in self.encoder[: self.cfg.gate_layer]:
      x = block(x, pos, _pairs(valid_BxL))
    return x, self.gate(x, valid_BxL)

  def encode_back(self, x_BxCxD, pos_BxC, valid_BxC, bias_BxC) -> jax.Array:
    for block in self.encoder[self.cfg.gate_layer :]:
      x_BxCxD = block(x_BxCxD, pos_BxC, _pairs(valid_BxC), bias_BxC)
    return self.enc_norm(x_BxCxD)

  def encode(
    self,
    ids_BxL: jax.Array,
    valid_BxL: jax.Array,
    mode: str = "soft",
    capacity: int | None = None,
    gate_on: jax.Array | float = 1.0,
    front: tuple[jax.Array, jax.Array] | None = None,
  ) -> Encoded:
    """mode: 'soft' (G as key bias), 'none' (the gate computed but not applied: a plain encoder), 'hard' (deleted
    positions removed, the rest compacted into `capacity` slots, which must hold every row's kept count), 'mask'
    (soft with the deleted positions' bias at -inf: what hard deletion computes, at full length). `gate_on` scales
    the soft bias (0: the gate is computed but neither applied nor trained, as before the gate is switched on).
    `front`: `encode_front`'s (h, G) of these inputs when the caller already has them (evaluation runs the front
    once per batch to choose the hard-deletion bucket)."""
    x, g = self.encode_front(ids_BxL, valid_BxL) if front is None else front
    keep = (g > self.cfg.gate_scale / 2) & valid_BxL
    pos = jnp.broadcast_to(jnp.arange(ids_BxL.shape[1]), ids_BxL.shape)
    if mode == "none":
      return Encoded(self.encode_back(x, pos, valid_BxL, None), valid_BxL, None, g, keep)
    if mode == "soft":
      bias = g * gate_on
      return Encoded(
        self.encode_back(x, pos, valid_BxL, bias),
        valid_BxL,
        bias,
        g,
        keep,
        self.gate(jax.lax.stop_gradient(x), valid_BxL),
      )
    if mode == "mask":
      bias = jnp.where(keep, g, -jnp.inf)
      return Encoded(self.encode_back(x, pos, valid_BxL, bias), valid_BxL, bias, g, keep)
    if mode != "hard":
      raise ValueError(f"unknown encoder mode {mode!r}")
    h, kept, gk, order = compact(x, g, keep, capacity or ids_BxL.shape[1])
    return Encoded(self.encode_back(h, order, kept, gk), kept, gk, g, keep)

  def decode(self, enc: Encoded, dec_in_BxT: jax.Array, dec_valid_BxT: jax.Array) -> jax.Array:
    """float32 logits_BxTxV of the next byte at every decoder position (teacher forcing)."""
    t = dec_in_BxT.shape[1]
    pos = jnp.broadcast_to(jnp.arange(t), dec_in_BxT.shape)
    causal = jnp.tril(jnp.ones((t, t), bool))[None] & _pairs(dec_valid_BxT)
    cross_allowed = dec_valid_BxT[:, :, None] & enc.valid_BxC[:, None, :]
    x = self.embed(dec_in_BxT).astype(jnp.float32)
    for block in self.decoder:
      x = block(x, pos, causal, None, (enc.h_BxCxD, cross_allowed, enc.bias_BxC))
    return self.head(self.dec_norm(x)).astype(jnp.float32)

  def init_cache(self, enc: Encoded, max_len: int) -> list[dict]:
    """Decoding state per decoder block: self-attention keys/values for `max_len` positions (filled as bytes are
    decoded) and the cross-attention keys/values of the encoder output (computed once)."""
    b, h, kd = enc.h_BxCxD.shape[0], self.cfg.n_heads, self.cfg.d_model // self.cfg.n_heads
    caches = []
    for block in self.decoder:
      kv = block.cross_parts()[1].w_kv(enc.h_BxCxD)
      caches.append(
        {"k": jnp.zeros((b, max_len, h, kd)), "v": jnp.zeros((b, max_len, h, kd)), "ck": kv[:, :, 0], "cv": kv[:, :, 1]}
      )
    return caches

  def decode_step(
    self, enc: Encoded, token_B: jax.Array, t: jax.Array, caches: list[dict]
  ) -> tuple[jax.Array, list[dict]]:
    """(logits_BxV of the byte after position t, caches) for decoder input `token_B` at position t: the cached form
    of `decode`, equal to its row t."""
    b = token_B.shape[0]
    pos = jnp.full((b, 1), t)
    x = self.embed(token_B[:, None]).astype(jnp.float32)
    new = []
    for block, cache in zip(self.decoder, caches):
      h = block.norm1(x)
      q = rope(block.attn.w_q(h), pos, self.cfg.d_model // self.cfg.n_heads, self.cfg.rope_theta)
      kv = block.attn.w_kv(h)
      k = rope(kv[:, :, 0], pos, q.shape[-1], self.cfg.rope_theta)
      cache = {
        **cache,
        "k": jax.lax.dynamic_update_slice_in_dim(cache["k"], k, t, axis=1),
        "v": jax.lax.dynamic_update_slice_in_dim(cache["v"], kv[:, :, 1], t, axis=1),
      }
      seen = jnp.broadcast_to(jnp.arange(cache["k"].shape[1])[None, None] <= t, (b, 1, cache["k"].shape[1]))
      out = attend(q, cache["k"], cache["v"], seen, None, self.cfg.softmax1)
      x = x + block.attn.w_out(out.reshape(b, 1, -1))
      norm_x, cross = block.cross_parts()
      qc = cross.w_q(norm_x(x))
      out = attend(qc, cache["ck"], cache["cv"], enc.valid_BxC[:, None, :], enc.bias_BxC, self.cfg.softmax1)
      x = x + cross.w_out(out.reshape(b, 1, -1))
      x = x + block.mlp(block.norm2(x))
      new.append(cache)
    return self.head(self.dec_norm(x))[:, 0].astype(jnp.float32), new

  def __call__(
    self,
    ids_BxL,
    valid_BxL,
    dec_in_BxT,
    dec_valid_BxT,
    mode: str = "soft",
    capacity: int | None = None,
    gate_on: jax.Array | float = 1.0,
    front: tuple[jax.Array, jax.Array] | None = None,
  ) -> tuple[jax.Array, Encoded]:
    enc = self.encode(ids_BxL, valid_BxL, mode, capacity, gate_on, front)
    return self.decode(enc, dec_in_BxT, dec_valid_BxT), enc


def compact(
  x_BxLxD: jax.Array, g_BxL: jax.Array, keep_BxL: jax.Array, capacity: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Hard deletion: (states, slot holds a kept position, its G, its original position), the kept positions first
  and in order, in `capacity` slots (which must hold every row's kept count)."""
  length = keep_BxL.shape[1]
  pos = jnp.arange(length)[None]
  order = jnp.argsort(jnp.where(keep_BxL, pos, length + pos), axis=1)[:, :capacity]
  kept = jnp.take_along_axis(keep_BxL, order, axis=1)
  h = jnp.take_along_axis(x_BxLxD, order[..., None], axis=1)
  gk = jnp.where(kept, jnp.take_along_axis(g_BxL, order, axis=1), 0.0)
  return h, kept, gk, order


def bucket_capacity(kept_max: int, length: int, buckets: tuple[float, ...]) -> int:
  """The smallest static kept length (a bucket fraction of `length`, at least 1) that holds `kept_max`."""
  for frac in buckets:
    cap = max(1, math.ceil(frac * length))
    if cap >= kept_max:
      return cap
  return length
