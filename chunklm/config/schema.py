"""The typed, frozen config sections: model, train, eval, mesh, kernels (data.py holds data; experiment.py holds them
together).

Every field is typed and documented in one line. A field with a closed set of choices has a `Literal` type, which the
loader checks (loading.py, naming the valid ones); the other values are checked once in `__post_init__`. Per-level model
fields (`d_model`, `n_heads`, ...) hold one value per nesting level of the layout, outermost first; a single value is
broadcast to every level. Per-stage fields (`router`, `pooling`, `target_ratio`, `capacity`) work the same way over
the routing stages.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from chunklm.config.layout import check_layout, layout_depth, level_layer_strings, uses_mamba
from chunklm.config.routers import (
  BYTE_ROUTERS,
  ROUTERS,
  DeleteGateConfig,
  EntropyConfig,
  GumbelConfig,
  RouterName,
  WhitespaceConfig,
)
from chunklm.errors import ConfigError

# The closed sets of choices: the loader refuses any other value, naming the valid ones (typing.get_args lists them).
Pooling = Literal["select", "mean"]  # chunk vector: the state at the boundary | the mean of the chunk (shifted)
DType = Literal["float32", "bfloat16"]
Schedule = Literal["cosine", "wsd", "constant"]
NanPolicy = Literal["stop", "skip"]
KernelImpl = Literal["auto", "xla", "pallas", "interpret"]  # chunk-op backends (chunklm.kernels.api)
AttentionImpl = Literal["auto", "xla", "cudnn", "splash"]  # softmax-attention backends
RatioLoss = Literal["hnet", "hinge"]  # H-Net's two-sided ratio loss | a one-sided bound (FLEXITOKENS' idea)
Compat = Literal["chunklm", "official"]  # H-Net numerics: chunklm's own, or the official code's (converted weights)


MAX_STEPS = 2**31 - 1  # train.steps: the most optax's int32 step count reaches


@dataclasses.dataclass(frozen=True)
class MambaConfig:
  d_state: int = 128  # SSM state size N per head
  d_conv: int = 4  # depthwise causal convolution width
  expand: int = 2  # inner width = expand * d_model
  head_dim: int = 64  # SSD head dimension P
  chunk_size: int = 64  # block length of the chunked (SSD) parallel scan

  def __post_init__(self):
    for name in ("d_state", "d_conv", "expand", "head_dim", "chunk_size"):
      if getattr(self, name) <= 0:
        raise ConfigError(f"model.mamba.{name}: must be positive, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  layout: tuple = ("T2",)  # nested layer layout: ('T4',) plain stack; ('m4', ('T22',), 'm4') 1-stage H-Net
  d_model: tuple[int, ...] = (128,)  # width per level, outermost first (inner >= outer)
  d_ff: tuple[int, ...] = (0,)  # SwiGLU hidden width per level; 0 = 8/3 * d_model rounded up to 64
  n_heads: tuple[int, ...] = (4,)  # attention heads per level
  window: tuple[int, ...] = (0,)  # sliding attention window per level (keys back incl. self - 1); 0 = global
  rotary_fraction: float = 0.5  # fraction of each head's dims rotated by RoPE (partial RoPE)
  rope_theta: float = 10000.0  # RoPE base
  vocab_size: int = 256  # 256 for bytes
  mamba: MambaConfig = MambaConfig()  # Mamba2 (SSD) layer settings, shared by all levels
  router: tuple[RouterName, ...] = ("cosine",)  # boundary predictor per routing stage (stride: target_ratio is S)
  pooling: tuple[Pooling, ...] = ("select",)  # chunk vector per stage: select (state at the boundary) | mean (shifted)
  whitespace: WhitespaceConfig = WhitespaceConfig()  # whitespace router settings (word boundary)
  gumbel: GumbelConfig = GumbelConfig()  # gumbel router settings (temperature, prior, per-script targets)
  entropy: EntropyConfig = EntropyConfig()  # entropy router settings (its byte LM and threshold)
  delete_gate: DeleteGateConfig = DeleteGateConfig()  # delete_gate router settings (scale, regulariser)
  target_ratio: tuple[float, ...] = (6.0,)  # target compression N per routing stage (> 1)
  capacity_factor: float = 0.0  # chunk capacity = ceil(L / N * factor) + document starts; 0 = 1 + 4/sqrt(L / N)
  capacity: tuple[int, ...] = (0,)  # explicit chunk capacity per routing stage; 0 = from capacity_factor
  ratio_loss_weight: float = 0.03  # alpha of the ratio loss
  ratio_loss: RatioLoss = "hnet"  # hnet (the paper's, two-sided) | hinge (only while splitting more often than 1/N)
  ratio_start: tuple[float, ...] = ()  # curriculum: the ratio loss's target N per stage at step 0 (() = none) ...
  ratio_warmup_steps: int = 0  # ... moving linearly to target_ratio over this many training steps
  confidence_loss_weight: float = 0.0  # weight of mean 4p(1-p): pushes boundary probabilities away from 0.5
  lr_multipliers: tuple[float, ...] = ()  # learning-rate multiplier per level; () = paper's formula (App. C)
  init_std: float = 0.02  # std of linear-layer init; output projections are scaled down by depth
  dtype: DType = "float32"  # compute dtype (params stay float32): float32 | bfloat16
  remat: bool = False  # recompute each block's activations in the backward pass (less memory, ~1/3 more compute)
  attention_block: int = 0  # queries per attention block (memory ~ block x length instead of length^2); 0 = all
  compat: Compat = "chunklm"  # official = the official H-Net code's numerics (residual bias, dechunk clamp, bf16 EMA)

  @property
  def num_stages(self) -> int:
    return layout_depth(self.layout)

  @property
  def num_levels(self) -> int:
    return self.num_stages + 1

  def level_layout(self, level: int) -> tuple:
    layout = self.layout
    for _ in range(level):
      layout = layout[1]
    return layout

  def ff_dim(self, level: int) -> int:
    d_ff = self.d_ff[level]
    return d_ff if d_ff > 0 else 64 * math.ceil(8 * self.d_model[level] / 3 / 64)

  @property
  def is_token_model(self) -> bool:
    """Whether the model reads sentencepiece tokens (a vocabulary other than the 256 bytes): it needs data.tokenizer."""
    return self.vocab_size != 256

  def __post_init__(self):
    check_layout(self.layout)
    self._broadcast()
    stages = self.num_stages
    for level in range(self.num_levels):
      self._check_level(level)
    for n in self.target_ratio[:stages]:
      if not n > 1:
        raise ConfigError(f"model.target_ratio: target compression N must be > 1, got {n}")
    if stages:
      self._check_routers(stages)
    self._check_curriculum(stages)
    if any(c < 0 for c in self.capacity):
      raise ConfigError(f"model.capacity: must be >= 0 (0 = automatic), got {list(self.capacity)}")
    if self.capacity_factor < 1 and self.capacity_factor != 0:
      raise ConfigError(f"model.capacity_factor: must be >= 1 (or 0: from the window), got {self.capacity_factor}")
    if self.lr_multipliers and len(self.lr_multipliers) != self.num_levels:
      raise ConfigError(
        f"model.lr_multipliers: need {self.num_levels} values (one per level) or [], got {list(self.lr_multipliers)}"
      )
    if self.attention_block < 0:
      raise ConfigError(f"model.attention_block: must be >= 0 (0 = one block), got {self.attention_block}")
    if self.vocab_size <= 0 or self.init_std <= 0 or not 0 <= self.rotary_fraction <= 1:
      raise ConfigError("model: vocab_size and init_std must be positive, rotary_fraction in [0, 1]")
    if self.ratio_loss_weight < 0 or self.confidence_loss_weight < 0:
      raise ConfigError("model.ratio_loss_weight and model.confidence_loss_weight must be >= 0")
    if self.compat == "official" and (
      not stages or set(self.router[:stages]) != {"cosine"} or set(self.pooling[:stages]) != {"select"}
    ):
      raise ConfigError(
        "model.compat: official is the official H-Net's computation, which needs an H-Net with "
        "the cosine router and select pooling at every stage"
      )

  def _broadcast(self) -> None:
    """A single per-level (per-stage) value stands for every level (stage); any other count must match."""
    levels, stages = self.num_levels, self.num_stages
    for name in ("d_model", "d_ff", "n_heads", "window"):
      value = getattr(self, name)
      if len(value) == 1 and levels > 1:
        object.__setattr__(self, name, value * levels)
      elif len(value) != levels:
        raise ConfigError(f"model.{name}: layout has {levels} level(s), got {len(value)} values {list(value)}")
    for name in ("router", "pooling", "target_ratio", "capacity", "ratio_start"):
      value = getattr(self, name)
      if stages == 0 or (name == "ratio_start" and not value):
        continue  # unused by a plain stack; no curriculum
      if len(value) == 1 and stages > 1:
        object.__setattr__(self, name, value * stages)
      elif len(value) != stages:
        raise ConfigError(f"model.{name}: layout has {stages} routing stage(s), got {len(value)} values")

  def _check_level(self, level: int) -> None:
    d, h = self.d_model[level], self.n_heads[level]
    if d <= 0 or h <= 0 or self.d_ff[level] < 0 or self.window[level] < 0:
      raise ConfigError(
        f"model: sizes must be positive (level {level}: d_model={d}, n_heads={h}, "
        f"d_ff={self.d_ff[level]}, window={self.window[level]})"
      )
    if d % h:
      raise ConfigError(f"model.n_heads: d_model {d} is not divisible by n_heads {h} at level {level}")
    if level and d < self.d_model[level - 1]:
      raise ConfigError(
        f"model.d_model: inner width {d} (level {level}) is smaller than outer width "
        f"{self.d_model[level - 1]}; inner levels must be at least as wide"
      )
    mamba = any(uses_mamba(spec) for spec in level_layer_strings(self.level_layout(level)))
    if mamba and (self.mamba.expand * d) % self.mamba.head_dim:
      raise ConfigError(
        f"model.mamba.head_dim: {self.mamba.head_dim} must divide expand*d_model = "
        f"{self.mamba.expand * d} at level {level}"
      )

  def _check_routers(self, stages: int) -> None:
    for s, (r, n) in enumerate(zip(self.router, self.target_ratio)):
      if r in BYTE_ROUTERS and s > 0:
        inner = ", ".join(name for name, kind in ROUTERS.items() if not kind.reads_bytes)
        raise ConfigError(
          f"model.router: {r!r} reads bytes, so it only works at stage 0, not stage {s}; use one of "
          f"{inner} for inner stages"
        )
      if r == "stride" and float(n) != int(n):
        raise ConfigError(
          f"model.target_ratio: the stride router uses target_ratio as its stride S (a boundary "
          f"every S bytes), so it must be an integer >= 2; got {n} at stage {s}"
        )
    if self.gumbel.script_ratios and "gumbel" not in self.router[:stages]:
      raise ConfigError(
        "model.gumbel.script_ratios: per-script targets are used by the gumbel router only; set "
        "model.router=[gumbel] or remove model.gumbel.script_ratios"
      )
    if "entropy" in self.router[:stages]:
      d = self.entropy.d_model
      if d % self.n_heads[0]:
        raise ConfigError(f"model.entropy.d_model: must be a multiple of n_heads[0]={self.n_heads[0]}, got {d}")
      if uses_mamba(self.entropy.layout) and (self.mamba.expand * d) % self.mamba.head_dim:
        raise ConfigError(
          f"model.entropy.d_model: mamba.head_dim {self.mamba.head_dim} must divide expand * "
          f"entropy.d_model = {self.mamba.expand * d}"
        )

  def _check_curriculum(self, stages: int) -> None:
    if not self.ratio_start:
      if self.ratio_warmup_steps:
        raise ConfigError("model.ratio_warmup_steps: set model.ratio_start too (the target N at step 0), or 0")
      return
    if not stages:
      raise ConfigError("model.ratio_start: a ratio curriculum needs an H-Net (a layout with routing stages)")
    if any(not n > 1 for n in self.ratio_start):
      raise ConfigError(f"model.ratio_start: target compression N must be > 1, got {list(self.ratio_start)}")
    if self.ratio_warmup_steps <= 0:
      raise ConfigError(
        f"model.ratio_warmup_steps: the curriculum needs > 0 steps to move from ratio_start to "
        f"target_ratio, got {self.ratio_warmup_steps}"
      )
    for s, r in enumerate(self.router[:stages]):
      if r != "cosine":  # the only router with the H-Net ratio loss (a learnable p)
        raise ConfigError(
          f"model.ratio_start: stage {s}'s router {r!r} has no ratio loss for a curriculum to move "
          "(only the cosine router has one)"
        )

  def lowest_ratios(self) -> tuple[float, ...]:
    """Per stage the smallest target N training asks for (capacities are sized for it)."""
    return tuple(min(pair) for pair in zip(self.target_ratio, self.ratio_start or self.target_ratio))

  def script_targets(self) -> dict[str, float]:
    """Per-script target N of the gumbel router ('default' falls back to target_ratio[0])."""
    out = {"default": float(self.target_ratio[0])}
    out.update({k: float(v) for k, _, v in (item.partition(":") for item in self.gumbel.script_ratios)})
    return out

  def entropy_lm(self) -> ModelConfig:
    """The ModelConfig of the entropy router's byte LM: a plain stack at level 0 with the `entropy` section's size."""
    return dataclasses.replace(
      self,
      layout=(self.entropy.layout,),
      d_model=(self.entropy.d_model,),
      d_ff=(0,),
      n_heads=(self.n_heads[0],),
      window=(self.window[0],),
      lr_multipliers=(),
      router=("cosine",),
      pooling=("select",),
      target_ratio=(6.0,),
      capacity=(0,),
      gumbel=dataclasses.replace(self.gumbel, script_ratios=()),
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 1000  # optimizer steps
  batch_size: int = 8  # global batch (windows per step)
  lr: float = 3e-3  # peak learning rate
  warmup_steps: int = 100  # linear warmup from 0
  schedule: Schedule = "cosine"  # cosine | wsd (warmup-stable-decay, 1/sqrt decay) | constant
  min_lr_ratio: float = 0.1  # final lr / peak lr (cosine, wsd)
  decay_fraction: float = 0.2  # wsd: fraction of steps spent decaying
  weight_decay: float = 0.1  # AdamW decoupled weight decay (not on norms, embeddings, biases)
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  grad_clip: float = 1.0  # global-norm clipping; 0 disables
  seed: int = 0  # parameter init and sampling seed
  log_every: int = 10  # steps between metric records
  eval_every: int = 0  # steps between evaluations; 0 = only at the end
  checkpoint_every: int = 200  # steps between checkpoints (one is always written at the end)
  keep_checkpoints: int = 3  # checkpoints kept on disk
  nan_policy: NanPolicy = "stop"  # a step with a non-finite loss or gradient: stop (exit 3) | skip (drop its update)
  nan_skip_limit: int = 10  # nan_policy=skip: stop after this many skipped steps in a row
  init_from: str = ""  # a run or one of its checkpoints whose parameters start this run (fine-tuning); "" = random
  freeze: tuple[str, ...] = ()  # parameters left as they are: named parts (embed, main, encoder.s0, ...) or globs
  lr_scale: tuple[str, ...] = ()  # learning-rate factor per part, {main: 0.1} (PART:FACTOR); the last match wins

  def lr_scales(self) -> list[tuple[str, float]]:
    """`lr_scale` as (selector, factor) pairs."""
    out = []
    for item in self.lr_scale:
      sel, sep, raw = item.rpartition(":")
      try:
        factor = float(raw)
      except ValueError:
        factor = float("nan")
      if not sep or not sel or not 0 < factor < float("inf"):
        raise ConfigError(f"train.lr_scale: {item!r} is not PART:FACTOR with a positive factor, e.g. main:0.1")
      out.append((sel, factor))
    return out

  def __post_init__(self):
    self.lr_scales()
    for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "nan_skip_limit"):
      if getattr(self, name) <= 0:
        raise ConfigError(f"train.{name}: must be positive, got {getattr(self, name)}")
    for name in ("warmup_steps", "eval_every", "weight_decay", "grad_clip"):
      if getattr(self, name) < 0:
        raise ConfigError(f"train.{name}: must be >= 0, got {getattr(self, name)}")
    if self.steps > MAX_STEPS:
      raise ConfigError(
        f"train.steps {self.steps}: at most {MAX_STEPS:,} (the optimizer counts its steps in int32); "
        "stop a run early with --stop-after N instead"
      )
    if self.lr <= 0:
      raise ConfigError(f"train.lr: must be positive, got {self.lr}")
    if not 0 <= self.min_lr_ratio <= 1 or not 0 < self.decay_fraction <= 1:
      raise ConfigError("train.min_lr_ratio must be in [0, 1] and train.decay_fraction in (0, 1]")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  batch_size: int = 16  # windows per evaluation batch
  max_bytes: int = 262144  # bytes of the valid split used by periodic evals; 0 = all
  final_max_bytes: int = 4194304  # bytes of the valid split the final evaluation reads; 0 = all of it (at scale, the
  # valid split is then found by reading the whole corpus at start)
  sample_bytes: int = 160  # bytes generated at the end of training
  sample_prompt: str = ""  # prompt of the end-of-training sample ("" = start of a valid document)
  temperature: float = 0.8
  top_p: float = 0.95

  def __post_init__(self):
    if self.batch_size <= 0 or self.max_bytes < 0 or self.final_max_bytes < 0 or self.sample_bytes < 0:
      raise ConfigError("eval: batch_size must be positive and byte counts >= 0")
    if self.temperature < 0 or not 0 < self.top_p <= 1:
      raise ConfigError("eval: temperature must be >= 0 and top_p in (0, 1]")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1  # data-parallel axis size; -1 = all remaining devices
  fsdp: int = 1  # parameter-sharding axis size
  tensor: int = 1  # tensor-parallel axis size

  def __post_init__(self):
    if self.data == 0 or self.data < -1 or self.fsdp <= 0 or self.tensor <= 0:
      raise ConfigError("mesh: axis sizes must be positive (data may be -1 for 'all remaining devices')")


@dataclasses.dataclass(frozen=True)
class KernelsConfig:
  impl: KernelImpl = "auto"  # chunk-op backend: auto (Pallas on GPU/TPU, XLA on CPU) | xla | pallas | interpret
  attention: AttentionImpl = "auto"  # softmax attention: auto (cuDNN flash attention on a GPU, Splash on a TPU,
  #                                    where they apply, else XLA) | xla | cudnn | splash (on CPU: interpreted)
