"""The MergeDNA model's settings (model/mergedna.py) and its two pretraining objectives (train/mergedna_loss.py).

Sizes are in bases (bytes) and merged tokens. `window` bounds every merged token: no token spans two windows of
`window` bases (aligned at multiples of it), and the local stacks attend within a window only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from chunklm.config.data import DataConfig
from chunklm.config.schema import TrainConfig
from chunklm.errors import ConfigError

MaskSelect = Literal["loss", "uniform"]
MaskedTokens = Literal["merged", "bases"]


@dataclasses.dataclass(frozen=True)
class MergeDNAConfig:
  d_model: int = 128  # width of every stack
  n_heads: int = 4
  d_ff: int = 0  # SwiGLU hidden width; 0 = 8/3 d_model rounded up to 64
  window: int = 16  # bases per merge window: a merged token never spans two (also the local stacks' attention span)
  merge_ratios: tuple[float, ...] = (2.0, 2.0)  # one token-merging block each: the target input tokens per output
  #                                               token (the ratio loss holds it; the product is bases per token)
  capacity: float = 1.5  # merged tokens each merging block keeps room for, x the bases / its cumulative target ratio
  #                        (static shapes; merged tokens beyond it are dropped and counted as overflow)
  local_layers: int = 1  # window-attention blocks before each merging block (local encoder)
  latent_layers: int = 4  # full-attention blocks over the merged tokens (latent encoder)
  latent_dec_layers: int = 1  # full-attention blocks after the latent encoder (latent decoder)
  local_dec_layers: int = 2  # window-attention blocks over the unmerged bases (local decoder)
  ratio_loss_weight: float = 0.03  # alpha of the ratio loss, summed over the merging blocks (H-Net's value)
  softmax1: bool = False  # off-by-one softmax in attention
  rope_theta: float = 10000.0
  init_std: float = 0.02
  vocab_size: int = 256  # bytes

  def ff_dim(self) -> int:
    return self.d_ff if self.d_ff > 0 else 64 * math.ceil(8 * self.d_model / 3 / 64)

  def bases_per_token(self) -> float:
    """The target: bases per merged token after every merging block."""
    return math.prod(self.merge_ratios)

  def __post_init__(self):
    if self.d_model <= 0 or self.n_heads <= 0 or self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
      raise ConfigError(f"mergedna: d_model {self.d_model} must split into {self.n_heads} heads of an even width")
    if not self.merge_ratios or any(not (math.isfinite(r) and r > 1) for r in self.merge_ratios):
      raise ConfigError(f"mergedna.merge_ratios: one ratio > 1 per merging block, got {list(self.merge_ratios)}")
    if self.window < 2 or self.window < self.bases_per_token():
      raise ConfigError(
        f"mergedna.window: {self.window} bases cannot hold the target of {self.bases_per_token():g} bases per "
        "token (the product of merge_ratios); make the window at least that"
      )
    if not (math.isfinite(self.capacity) and self.capacity >= 1):
      raise ConfigError(f"mergedna.capacity: a factor >= 1, got {self.capacity}")
    if self.local_layers < 0 or self.latent_layers < 1 or self.latent_dec_layers < 0 or self.local_dec_layers < 1:
      raise ConfigError(
        "mergedna: local_layers >= 0, latent_layers >= 1, latent_dec_layers >= 0 and local_dec_layers >= 1"
      )
    if self.ratio_loss_weight < 0:
      raise ConfigError(f"mergedna.ratio_loss_weight: must be >= 0, got {self.ratio_loss_weight}")


@dataclasses.dataclass(frozen=True)
class MergeDNAObjective:
  """The pretraining loss: reconstruction_weight x merged-token reconstruction + masked_weight x adaptive masked
  token modelling (+ the merge ratio loss)."""

  reconstruction_weight: float = 1.0  # every base rebuilt from the merged tokens (trains the tokenizer)
  masked_weight: float = 1.0  # the bases of masked windows predicted from the rest of the row
  mask_rate: float = 0.15  # fraction of each row's windows (mergedna.window bases each) masked (at least one)
  select: MaskSelect = "loss"  # loss: masked windows drawn with probability ~ exp(the reconstruction loss of their
  #                              bases / temperature): the spans the autoencoder rebuilds worst carry the information
  #                              | uniform: plain span masking
  temperature: float = 1.0  # of `select: loss`; large = uniform
  masked_tokens: MaskedTokens = "merged"  # merged: a masked window merges like any other (its bases are all the
  #                                          mask symbol, so into one token that must carry them all) | bases: its
  #                                          bases stay single tokens, one latent position each (more latent tokens
  #                                          in the masked pass)

  def __post_init__(self):
    if self.reconstruction_weight < 0 or self.masked_weight < 0 or self.reconstruction_weight + self.masked_weight == 0:
      raise ConfigError("objective: reconstruction_weight and masked_weight must be >= 0, not both 0")
    if not 0 < self.mask_rate < 1:
      raise ConfigError(f"objective.mask_rate: a fraction in (0, 1), got {self.mask_rate}")
    if not (math.isfinite(self.temperature) and self.temperature > 0):
      raise ConfigError(f"objective.temperature: must be > 0, got {self.temperature}")


@dataclasses.dataclass(frozen=True)
class MergeDNARun:
  """The config of a `chunklm mergedna` run: the model, its objective, the DNA data (data.seq_len bases per window)
  and the optimizer (train.*, as for every chunklm run)."""

  mergedna: MergeDNAConfig = MergeDNAConfig()
  objective: MergeDNAObjective = MergeDNAObjective()
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()

  def __post_init__(self):
    if self.data.seq_len % self.mergedna.window:
      raise ConfigError(
        f"data.seq_len: {self.data.seq_len} is not a multiple of mergedna.window {self.mergedna.window}"
      )
