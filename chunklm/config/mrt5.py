"""The MrT5 encoder-decoder's settings (Kallini et al. 2025): sizes, the delete gate and its controller, positions.

Positions are rotary (RoPE) rather than T5's learned relative-position buckets: chunklm's layers already have RoPE,
it adds no bias tables, and because a position keeps its original index when deletion compacts the sequence, the
relative positions of the kept bytes are the same with and without hard deletion (so hard deletion computes what
soft deletion computes, with no per-pair bias to gather as MrT5 does).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from chunklm.config.data import DataConfig
from chunklm.config.schema import TrainConfig
from chunklm.errors import ConfigError

Objective = Literal["span", "seq2seq"]


@dataclasses.dataclass(frozen=True)
class MrT5Config:
  d_model: int = 128  # width of encoder and decoder
  n_heads: int = 4  # attention heads (self- and cross-attention)
  d_ff: int = 0  # SwiGLU hidden width; 0 = 8/3 d_model rounded up to 64
  enc_layers: int = 4  # encoder blocks
  dec_layers: int = 2  # decoder blocks (self-attention, cross-attention, MLP)
  gate_layer: int = 2  # the delete gate reads the output of this many encoder blocks (1 .. enc_layers - 1)
  gate_scale: float = -30.0  # k in G = k sigmoid(-(w LN(h) + b)); a position is deleted when G < k/2
  target_deletion: float = 0.5  # delta: the fraction of positions the PI controller aims to delete, in [0, 1)
  alpha: float = -1.0  # regulariser weight of mean(G); < 0 = set by the PI controller towards target_deletion
  k_p: float = 0.5  # PI controller's proportional gain (MrT5's default)
  k_i: float = 1e-5  # PI controller's integral gain (MrT5's default)
  two_sided: bool = True  # alpha may go negative (rewarding keeping) when the gate deletes too much; false = MrT5's
  #                          alpha >= 0, which can only push towards deleting
  regularizer_delay: int = 0  # steps before the gate is switched on (applied, trained, regularised)
  gate_lr_scale: float = 1.0  # the gate's learning rate relative to train.lr (1 = MrT5's)
  gate_ema: float = 0.0  # > 0: evaluate (and bench, decode) with an exponential moving average of the gate's
  #                        parameters over training steps at this decay (0.99: ~100 steps), started when the gate is
  #                        switched on; 0 = the gate's last parameters, as MrT5 does
  softmax1: bool = True  # off-by-one softmax in attention (a query may attend to nothing, as MrT5 uses)
  rope_theta: float = 10000.0  # RoPE base (every head dimension rotated)
  buckets: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # hard deletion: kept lengths as fractions of the input
  init_std: float = 0.02  # std of linear-layer init
  vocab_size: int = 256  # bytes

  def ff_dim(self) -> int:
    return self.d_ff if self.d_ff > 0 else 64 * math.ceil(8 * self.d_model / 3 / 64)

  def __post_init__(self):
    if self.d_model <= 0 or self.n_heads <= 0 or self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
      raise ConfigError(f"mrt5: d_model {self.d_model} must split into {self.n_heads} heads of an even width")
    if self.enc_layers < 2 or self.dec_layers < 1:
      raise ConfigError(
        f"mrt5: need >= 2 encoder layers and >= 1 decoder layer, got {self.enc_layers}, {self.dec_layers}"
      )
    if not 1 <= self.gate_layer < self.enc_layers:
      raise ConfigError(
        f"mrt5.gate_layer: {self.gate_layer} is not between 1 and enc_layers - 1 = "
        f"{self.enc_layers - 1} (the gate needs encoder layers before and after it)"
      )
    if not 0 <= self.target_deletion < 1:
      raise ConfigError(f"mrt5.target_deletion: delta must be in [0, 1), got {self.target_deletion}")
    if not self.gate_scale < 0:
      raise ConfigError(f"mrt5.gate_scale: k must be negative (G in [k, 0]), got {self.gate_scale}")
    if (
      not self.buckets or sorted(self.buckets) != list(self.buckets) or self.buckets[-1] != 1.0 or self.buckets[0] <= 0
    ):
      raise ConfigError(f"mrt5.buckets: increasing fractions in (0, 1] ending with 1.0, got {list(self.buckets)}")
    if self.k_p < 0 or self.k_i < 0 or self.regularizer_delay < 0 or not self.gate_lr_scale > 0:
      raise ConfigError("mrt5: k_p, k_i and regularizer_delay must be >= 0, gate_lr_scale > 0")
    if not 0 <= self.gate_ema < 1:
      raise ConfigError(f"mrt5.gate_ema: a decay in [0, 1) (0 = off), got {self.gate_ema}")


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
  objective: Objective = "span"  # span: ByT5 span corruption of the data.* corpus | seq2seq: JSONL {"input", "target"}
  train_file: str = ""  # seq2seq: training records (JSONL)
  test_file: str = ""  # seq2seq: held-out records (JSONL); exact-match accuracy is measured on them
  noise_density: float = 0.15  # span: fraction of each window's bytes replaced by sentinels
  mean_span: float = 20.0  # span: mean noise-span length in bytes
  target_len: int = 64  # decoder length in bytes (targets end with EOS; longer ones are an error)

  def __post_init__(self):
    if self.objective == "seq2seq" and not (self.train_file and self.test_file):
      raise ConfigError(
        'seq2seq.objective seq2seq needs seq2seq.train_file and seq2seq.test_file (JSONL with "input" and "target")'
      )
    if not 0 < self.noise_density < 1 or self.mean_span < 1 or self.target_len < 2:
      raise ConfigError("seq2seq: noise_density in (0, 1), mean_span >= 1, target_len >= 2")


@dataclasses.dataclass(frozen=True)
class MrT5Run:
  """The config of a `chunklm mrt5` run: the model, the byte data (data.seq_len is the encoder length), the
  objective, and the optimizer (train.*, as for every chunklm run)."""

  mrt5: MrT5Config = MrT5Config()
  data: DataConfig = DataConfig()
  seq2seq: Seq2SeqConfig = Seq2SeqConfig()
  train: TrainConfig = TrainConfig()

  def __post_init__(self):
    s = self.seq2seq
    if s.objective == "span":
      need = round(self.data.seq_len * s.noise_density) + 9 + 1  # noise bytes, at most 9 sentinels, EOS
      if s.target_len < need:
        raise ConfigError(
          f"seq2seq.target_len: {s.target_len} cannot hold the targets of a {self.data.seq_len}-byte "
          f"window at noise_density {s.noise_density} (needs {need})"
        )
