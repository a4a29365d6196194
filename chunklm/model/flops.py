"""Training FLOPs per byte, counted from the config (matmuls, attention scores/values, SSD scan; 1 multiply-add = 2).

Training = 3 x forward (forward + backward through activations and weights). Attention counts the keys each query
actually attends to (causal, windowed). An H-Net level s runs on one position per `bytes_per_position[s]` bytes:
level 0 on every byte, deeper levels on the chunks, with the chunk ratios measured in training (or the targets).
"""

from __future__ import annotations

import dataclasses
import math
import re

from chunklm.config import ModelConfig
from chunklm.config.mergedna import MergeDNAConfig
from chunklm.errors import ConfigError
from chunklm.model.mergedna import capacities
from chunklm.model.stack import layer_kinds


def mean_keys(length: int, window: int) -> float:
  """Average number of keys a causal query attends to in a sequence of `length` (window 0 = global)."""
  if length <= 0:
    return 0.0
  if not window or window + 1 >= length:
    return (length + 1) / 2
  w = window + 1  # keys per query once the window is full
  return (w * (w + 1) / 2 + (length - w) * w) / length


def attention_flops(d: int, length: int, window: int) -> float:
  """Forward FLOPs per position of one attention mixer (projections + scores + weighted values)."""
  return 2 * d * 3 * d + 2 * d * d + 4 * d * mean_keys(length, window)


def mamba_flops(cfg: ModelConfig, d: int) -> float:
  """Forward FLOPs per position of one Mamba2 mixer (projections, conv, chunked SSD)."""
  m = cfg.mamba
  inner, n, q = m.expand * d, m.d_state, m.chunk_size
  heads = inner // m.head_dim
  proj = 2 * d * (2 * inner + 2 * n + heads) + 2 * inner * d
  conv = 2 * m.d_conv * (inner + 2 * n)
  ssd = 2 * n * q + 2 * q * inner + 4 * n * inner  # intra-chunk C.B and weighted sum, state in and out
  return proj + conv + ssd


def stack_flops(cfg: ModelConfig, spec: str, level: int, length: int) -> float:
  """Forward FLOPs per position of a layer stack at `level` over sequences of `length` positions."""
  d = cfg.d_model[level]
  total = 0.0
  for kind in layer_kinds(spec):
    total += attention_flops(d, length, cfg.window[level]) if kind in "tT" else mamba_flops(cfg, d)
    if kind.isupper():
      total += 6 * d * cfg.ff_dim(level)
  return total


def routing_flops(d: int, cfg: ModelConfig | None = None, level: int = 0, length: int = 0) -> float:
  """Router and residual projection, per position of the outer level: the cosine router's q/k projections, the
  gumbel logit, the delete gate (LayerNorm + logit), the entropy router's byte LM (its stack and 256-way head over
  `length` positions); stride and word starts cost nothing."""
  residual = 2 * d * d
  router = cfg.router[level] if cfg is not None else "cosine"
  if router == "cosine":
    return 2 * 2 * d * d + residual
  if router == "gumbel":
    return 2 * d + residual
  if router == "delete_gate":
    return 2 * d + 8 * d + residual
  if router == "entropy" and cfg is not None:  # the router is read from cfg, so cfg is set here
    lm = cfg.entropy_lm()
    return stack_flops(lm, lm.layout[0], 0, length) + 2 * lm.d_model[0] * 256 + residual
  return residual


def level_positions(cfg: ModelConfig, bytes_per_position: tuple[float, ...] | None = None) -> tuple[float, ...]:
  """Bytes per position at every level: (1, N0, N0*N1, ...) from the targets unless measured values are given."""
  if bytes_per_position is not None:
    if len(bytes_per_position) != cfg.num_levels:
      raise ValueError(f"need {cfg.num_levels} bytes-per-position values, got {bytes_per_position}")
    return tuple(bytes_per_position)
  return tuple(math.prod(cfg.target_ratio[:s]) for s in range(cfg.num_levels))


def train_flops_per_byte(
  cfg: ModelConfig, seq_len: int, bytes_per_position: tuple[float, ...] | None = None, bytes_per_token: float = 1.0
) -> float:
  """Training FLOPs per byte of text.

  Args:
    cfg: model config.
    seq_len: positions per training window at level 0 (bytes, or tokens for a token model).
    bytes_per_position: bytes per position at each level (H-Net); defaults to the target ratios.
    bytes_per_token: for a token model, the tokenizer's average bytes per token (1 for bytes).
  """
  per_byte = level_positions(cfg, bytes_per_position)
  total: float = 2 * cfg.d_model[0] * cfg.vocab_size  # LM head (the embedding lookup is free)
  for level in range(cfg.num_levels):
    layout = cfg.level_layout(level)
    length = max(1, round(seq_len / per_byte[level]))
    if len(layout) == 1:
      level_total = stack_flops(cfg, layout[0], level, length)
    else:
      d = cfg.d_model[level]
      level_total = (
        stack_flops(cfg, layout[0], level, length)
        + stack_flops(cfg, layout[2], level, length)
        + routing_flops(d, cfg, level, length)
      )
    total += level_total / per_byte[level]
  return 3 * total / bytes_per_token


def match_flops(
  target: float,
  cfg: ModelConfig,
  seq_len: int,
  *,
  bytes_per_token: float = 1.0,
  bytes_per_position: tuple[float, ...] | None = None,
  vary: tuple[str, ...] = ("layers", "width"),
) -> tuple[ModelConfig, float]:
  """Resizes the innermost stack of `cfg` to `target` training FLOPs per byte; returns (config, relative error).

  `vary` picks what may change: "layers" (the count of a single-kind innermost stack such as 'T3') and/or "width"
  (the innermost d_model, in steps of 2 x n_heads, never below the next-outer width). Among candidates within 1 % of
  the best match, the one whose width/depth ratio is closest to the original wins.
  """
  level = cfg.num_stages
  spec = cfg.level_layout(level)[0]
  single = re.fullmatch(r"([mMtT])(\d+)", spec)
  d0, n0 = cfg.d_model[level], int(single.group(2)) if single else 1
  step = 2 * cfg.n_heads[level]
  floor = cfg.d_model[level - 1] if level else step
  widths = range(max(step, -(-floor // step) * step), 4 * d0 + 1, step) if "width" in vary else [d0]
  depths = range(1, max(64, 4 * n0) + 1) if "layers" in vary and single else [n0]
  candidates = []
  for d in widths:
    for n in depths:
      layout = _with_innermost(cfg.layout, level, f"{single.group(1)}{n}" if single else spec)
      widths_all = cfg.d_model[:level] + (d,) + cfg.d_model[level + 1 :]
      try:
        d_ff = cfg.d_ff if d == d0 else cfg.d_ff[:level] + (0,)  # a new width gets the default MLP ratio
        trial = dataclasses.replace(cfg, layout=layout, d_model=widths_all, d_ff=d_ff)
      except ConfigError:
        continue
      err = train_flops_per_byte(trial, seq_len, bytes_per_position, bytes_per_token) / target - 1
      candidates.append((abs(err), abs(math.log((d / n) / (d0 / n0))), trial, err))
  if not candidates:
    raise ConfigError(f"no size of {spec} at width multiples of {step} fits the config's constraints")
  best = min(c[0] for c in candidates)
  near = [c for c in candidates if c[0] <= best + 0.01]
  _, _, trial, err = min(near, key=lambda c: (c[1], c[0]))
  return trial, err


def _with_innermost(layout: tuple, level: int, spec: str) -> tuple:
  if level == 0:
    return (spec,)
  return (layout[0], _with_innermost(layout[1], level - 1, spec), layout[2])


def bidirectional_block_flops(d: int, ff: int, keys: float) -> float:
  """Forward FLOPs per position of a non-causal block (model/bidirectional.py): q, k, v and output projections,
  scores and values over `keys` keys, SwiGLU."""
  return 2 * d * 3 * d + 2 * d * d + 4 * d * keys + 6 * d * ff


def mergedna_train_flops_per_base(
  cfg: MergeDNAConfig,
  seq_len: int,
  ratios: tuple[float, ...] | None = None,
  executed: bool = False,
  single: float = 0.0,
) -> float:
  """Training FLOPs per base of MergeDNA (model/mergedna.py) on windows of `seq_len` bases; the whole model runs
  twice per batch (reconstruction, then masked modelling on a masked input; train/mergedna_loss.py).

  Nominal (default), as the H-Net's count: every stack at the positions that carry bases, with each merging block's
  measured ratio (default: the targets), a local query attending to the tokens of its window; in the masked pass a
  fraction `single` of the bases stays single tokens (`masked_tokens: bases`: the masked fraction) and the rest
  merges at the ratios. `executed`: what the static shapes compute, every merging block's output at its capacity
  (model/mergedna.py `capacities`); the stacks over bases run window by window, the local stacks over merged tokens
  score every position of the row (the window is a mask there) and the latent stacks every token of the capacity.
  Merging, unmerging and the offset embedding are not counted."""
  ratios = ratios or cfg.merge_ratios
  d, ff, w = cfg.d_model, cfg.ff_dim(), cfg.window
  caps = (seq_len, *capacities(seq_len, cfg))

  def one_pass(alone: float) -> float:
    total, per = 0.0, 1.0  # per: bases per merged position at the current level
    for k, r in enumerate(ratios):
      # (positions per base, keys per query): the capacity; or merged positions and single bases
      parts = [(caps[k] / seq_len, caps[k] if k else w)] if executed else [((1 - alone) / per, w / per), (alone, w)]
      for n, keys in parts:
        total += (cfg.local_layers * bidirectional_block_flops(d, ff, keys) + 4 * d * d) * n
      per *= r
    n = caps[-1] / seq_len if executed else (1 - alone) / per + alone
    latent = (cfg.latent_layers + cfg.latent_dec_layers) * bidirectional_block_flops(d, ff, seq_len * n) * n
    decoder = cfg.local_dec_layers * bidirectional_block_flops(d, ff, w) + 2 * d * cfg.vocab_size
    return 3 * (total + latent + decoder)  # forward and backward

  return one_pass(0.0) + one_pass(0.0 if executed else single)
