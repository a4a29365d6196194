"""MergeDNA (Li et al., AAAI 2026): a hierarchical autoencoder over bases whose tokenizer is learned token merging.

  local encoder   per merging block: `local_layers` bidirectional blocks that attend within the token's window of
                  `window` bases, then a merge (model/merging.py) of adjacent tokens inside that window
  latent encoder  `latent_layers` full-attention blocks over the merged tokens (the representation: `pooled`)
  latent decoder  `latent_dec_layers` full-attention blocks
  local decoder   every merged token copied back to its bases (the source map), plus an embedding of the base's
                  offset inside its token, then `local_dec_layers` window-attention blocks and the byte head

Every block is non-causal (model/bidirectional.py); what a query sees is its window (local stacks) or every valid
token of its row (latent stacks). The local decoder has no skip connection from the local encoder: all it knows of
the input is what went through the merged tokens, which is what makes reconstruction train the tokenizer and
masking a merged token hide its bases.

Choices where the paper is silent (its abstract is what is public; no code):
  - Merge decisions: token i joins token i - 1 when m_i = (1 + cos(W_q x_i, W_k x_{i-1})) / 2 >= 1/2, with
    W_q = W_k = I at init (H-Net's routing similarity, bidirectional here: both tokens have seen their whole
    window). ToMe merges a fixed number of most similar pairs; a threshold lets the count vary with the sequence
    (a repeat merges more than a gene), and H-Net's ratio loss towards each block's `merge_ratios` entry holds the
    average, with forced boundaries (p = 1) at window starts counted as boundaries.
  - Soft merging with a straight-through hard path (model/merging.py): the forward pass is the hard merge, the
    backward pass a soft merge's, so the merge scores learn from both objectives.
  - Static shapes: block k keeps room for `capacity` x the bases / the product of the first k target ratios merged
    tokens (rounded up to 8; relative to the bases, so the slack does not compound over blocks); groups beyond it
    are dropped (their bases decode from zeros) and counted as overflow.
  - Positions: a merged token's RoPE position is its first base's index.
  - The input has one symbol beyond the bytes, `mask_id` (= vocab_size): masked modelling replaces whole windows of
    bases by it before the tokenizer (train/mergedna_loss.py says why); the head predicts bytes only. Being
    alike, the masked bases of a window merge into one token, which must then carry all of them;
    `tokenize(single_BxL=)` keeps them apart instead (one latent token per masked base, at its own position).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.config.mergedna import MergeDNAConfig
from chunklm.model.bidirectional import Block
from chunklm.model.chunking import ratio_loss
from chunklm.model.layers import Embed, Linear, RMSNorm, normal, param
from chunklm.model.merging import allowed_edges, compose, merge, unmerge


class Tokens(NamedTuple):
  x_BxMxD: jax.Array  # merged tokens after the local encoder
  valid_BxM: jax.Array
  start_BxM: jax.Array  # first base of each merged token
  size_BxM: jax.Array  # bases per merged token
  src_BxL: jax.Array  # every base's merged token (M where dropped or padding)
  ratio_loss: jax.Array  # summed over the merging blocks (unweighted)
  boundaries_K: jax.Array  # per merging block: tokens that start a group
  positions_K: jax.Array  # per merging block: valid input tokens
  overflow_K: jax.Array  # per merging block: input tokens dropped past the capacity
  routes: tuple[tuple[jax.Array, ...], ...]  # per merging block, over its input tokens: (first base of the token,
  #                                            valid, starts a merged token, boundary probability 1 - m)


def capacities(length: int, cfg: MergeDNAConfig) -> tuple[int, ...]:
  """Merged tokens each merging block keeps room for, from `length` bases (see the module docstring)."""
  out, n, target = [], length, 1.0
  for r in cfg.merge_ratios:
    target *= r
    n = min(n, 8 * math.ceil(length * cfg.capacity / target / 8))
    out.append(n)
  return tuple(out)


def window_pairs(start_BxN: jax.Array, valid_BxN: jax.Array, window: int) -> jax.Array:
  """allowed_BxNxN: both tokens valid and in the same window of `window` bases."""
  win_BxN = start_BxN // window
  return (win_BxN[:, :, None] == win_BxN[:, None, :]) & valid_BxN[:, :, None] & valid_BxN[:, None, :]


def by_window(blocks, x_BxLxD: jax.Array, valid_BxL: jax.Array, window: int) -> jax.Array:
  """`blocks` over bases, each window of `window` bases on its own (the rows cut into windows: the same result as
  a window mask over the whole row, at window x L scores instead of L x L). L is padded to a multiple of the
  window with invalid positions."""
  b, length, d = x_BxLxD.shape
  pad = -length % window
  x = jnp.pad(x_BxLxD, ((0, 0), (0, pad), (0, 0))).reshape(-1, window, d)
  valid = jnp.pad(valid_BxL, ((0, 0), (0, pad))).reshape(-1, window)
  pos = jnp.broadcast_to(jnp.arange(window, dtype=jnp.int32), valid.shape)  # RoPE is relative: offsets suffice
  pairs = valid_pairs(valid)
  for block in blocks:
    x = block(x, pos, pairs)
  return x.reshape(b, length + pad, d)[:, :length]


def valid_pairs(valid_BxN: jax.Array) -> jax.Array:
  return valid_BxN[:, :, None] & valid_BxN[:, None, :]


class MergeScorer(nnx.Module):
  """m_i = (1 + cos(W_q x_i, W_k x_{i-1})) / 2 over RMS-normed tokens (W_q = W_k = I at init); m_0 (no token
  before) is never an allowed edge."""

  def __init__(self, d: int):
    self.norm = RMSNorm(d)
    self.w_q = param(None, lambda k, s, dt: jnp.eye(s[0], dtype=dt), (d, d), ("embed", None))
    self.w_k = param(None, lambda k, s, dt: jnp.eye(s[0], dtype=dt), (d, d), ("embed", None))

  def __call__(self, x_BxNxD: jax.Array) -> jax.Array:
    h = self.norm(x_BxNxD).astype(jnp.float32)
    q, k = h @ self.w_q[...], h @ self.w_k[...]
    k_prev = jnp.pad(k[:, :-1], ((0, 0), (1, 0), (0, 0)))
    cos = jnp.sum(q * k_prev, -1) * jax.lax.rsqrt(jnp.sum(q * q, -1) * jnp.sum(k_prev * k_prev, -1) + 1e-12)
    return (1.0 + cos) / 2.0


class MergeDNA(nnx.Module):
  def __init__(self, cfg: MergeDNAConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, std = cfg.d_model, cfg.init_std
    depth = len(cfg.merge_ratios) * cfg.local_layers + cfg.latent_layers + cfg.latent_dec_layers + cfg.local_dec_layers
    out_std = std / math.sqrt(2 * depth)

    def blocks(n: int) -> nnx.List:
      return nnx.List([Block(cfg, rngs=rngs, out_std=out_std, decoder=False) for _ in range(n)])

    self.mask_id = cfg.vocab_size  # the masked-base symbol (an input only)
    self.embed = Embed(cfg.vocab_size + 1, d, rngs=rngs)
    self.local = nnx.List([blocks(cfg.local_layers) for _ in cfg.merge_ratios])
    self.scorers = nnx.List([MergeScorer(d) for _ in cfg.merge_ratios])
    self.latent_enc = blocks(cfg.latent_layers)
    self.latent_norm = RMSNorm(d)
    self.latent_dec = blocks(cfg.latent_dec_layers)
    self.offset = param(rngs.params(), normal(std), (cfg.window, d), (None, "embed"))
    self.local_dec = blocks(cfg.local_dec_layers)
    self.out_norm = RMSNorm(d)
    self.head = Linear(d, (cfg.vocab_size,), ("embed", "vocab"), rngs=rngs, std=std)

  def tokenize(self, ids_BxL: jax.Array, valid_BxL: jax.Array, single_BxL: jax.Array | None = None) -> Tokens:
    """The local encoder: bases -> merged tokens, with the source map and the merge statistics. Bases where
    `single_BxL` is set stay tokens of their own through every merging block (masked modelling's `masked_tokens:
    bases`)."""
    cfg = self.cfg
    b, length = ids_BxL.shape
    x = self.embed(ids_BxL)
    start = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    src, valid, size = start, valid_BxL, valid_BxL.astype(jnp.int32)
    total = jnp.zeros((), jnp.float32)
    stats, routes = [], []
    blocks = zip(self.local, self.scorers, cfg.merge_ratios, capacities(length, cfg))
    for level, (layers, scorer, r, cap) in enumerate(blocks):
      if level == 0:  # bases: attention inside each window, computed window by window
        x = by_window(layers, x, valid, cfg.window)
      else:
        pairs = window_pairs(start, valid, cfg.window)
        for block in layers:
          x = block(x, start, pairs)
      m = scorer(x)
      allowed = allowed_edges(valid, start, cfg.window)
      if single_BxL is not None:  # no edge into or out of a single base
        alone = jnp.take_along_axis(single_BxL, jnp.clip(start, 0, length - 1), axis=1)
        allowed = allowed & ~alone & ~jnp.pad(alone[:, :-1], ((0, 0), (1, 0)))
      out = merge(x, valid, start, size, m, allowed, cap)
      p_boundary = jnp.where(allowed, 1.0 - m, 1.0)
      n = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
      first = valid & ~(allowed & (m >= 0.5))
      boundaries = jnp.sum(first)
      routes.append((start, valid, first, p_boundary))
      total = total + ratio_loss(boundaries / n, jnp.sum(jnp.where(valid, p_boundary, 0.0)) / n, r)
      stats.append((boundaries, jnp.sum(valid), jnp.sum(out.overflow_B)))
      src = compose(src, out.group_BxN, cap)
      x, valid, start, size = out.x_BxMxD, out.valid_BxM, out.start_BxM, out.size_BxM
    boundaries_k, positions_k, overflow_k = (jnp.stack(s).astype(jnp.int32) for s in zip(*stats))
    return Tokens(x, valid, start, size, src, total, boundaries_k, positions_k, overflow_k, tuple(routes))

  def latent(self, tok: Tokens) -> jax.Array:
    """The latent encoder's output (after its norm) over the merged tokens."""
    x = tok.x_BxMxD
    pairs = valid_pairs(tok.valid_BxM)
    for block in self.latent_enc:
      x = block(x, tok.start_BxM, pairs)
    return self.latent_norm(x)

  def decode(self, enc_BxMxD: jax.Array, tok: Tokens, valid_BxL: jax.Array) -> jax.Array:
    """Byte logits_BxLxV (float32) of every base from the latent encoder's output."""
    x = enc_BxMxD
    pairs = valid_pairs(tok.valid_BxM)
    for block in self.latent_dec:
      x = block(x, tok.start_BxM, pairs)
    h = unmerge(x, tok.src_BxL)
    b, length = valid_BxL.shape
    pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    first = jnp.take_along_axis(jnp.pad(tok.start_BxM, ((0, 0), (0, 1))), tok.src_BxL, axis=1)
    h = h + self.offset[...][jnp.clip(pos - first, 0, self.cfg.window - 1)].astype(h.dtype)
    h = by_window(self.local_dec, h, valid_BxL, self.cfg.window)
    return self.head(self.out_norm(h)).astype(jnp.float32)

  def pooled(self, ids_BxL: jax.Array, lengths_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(the mean of the latent encoder's states over each record's merged tokens, float32 BxD; the ratio loss)
    of records padded to L with their base counts."""
    valid = jnp.arange(ids_BxL.shape[1])[None, :] < lengths_B[:, None]
    tok = self.tokenize(ids_BxL, valid)
    enc = self.latent(tok).astype(jnp.float32)
    mask = tok.valid_BxM[..., None].astype(jnp.float32)
    return jnp.sum(enc * mask, 1) / jnp.maximum(jnp.sum(mask, 1), 1.0), tok.ratio_loss
