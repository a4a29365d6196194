"""Typed, frozen experiment configuration: YAML files plus `--set a.b=c` overrides.

A config is data: every field is typed and documented in one line, values are checked once in `__post_init__`,
and unknown keys are errors that list the valid ones. Per-level model fields (`d_model`, `n_heads`, ...) hold one
value per nesting level of the layout, outermost first; a single value is broadcast to every level.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from chunklm.errors import ConfigError

LAYER_RE = re.compile(r"([mMtT])(\d+)")
ROUTERS = ("cosine", "stride", "whitespace", "gumbel", "entropy", "delete_gate")
BYTE_ROUTERS = ("whitespace", "entropy")  # read the bytes themselves: stage 0 only
POOLINGS = ("select", "mean")
WORD_BOUNDARIES = ("space", "punct")  # or "regex:<character class>"
ENTROPY_MODES = ("global", "jump")
SCRIPTS = ("default", "latin", "greek", "cyrillic", "arabic", "devanagari", "hiragana", "katakana", "han", "hangul")
WORD_REGEX_RE = re.compile(r"(\[(?:\\.|[^\]\\])+\]|\\[sSdDwW]|\\x[0-9a-fA-F]{2}|[^\\\[\]()|*+?{}^$])\+?")
DTYPES = ("float32", "bfloat16")
SCHEDULES = ("cosine", "wsd", "constant")
KERNEL_IMPLS = ("auto", "xla", "pallas", "interpret")  # as chunklm.kernels.api.IMPLS (config must import alone)


def parse_layer_string(spec: str, where: str = "model.layout") -> list[tuple[str, int]]:
  """'T1m4' -> [('T', 1), ('m', 4)]; raises ConfigError naming the bad part."""
  parts = LAYER_RE.findall(spec)
  if not spec or "".join(f"{k}{n}" for k, n in parts) != spec:
    raise ConfigError(
        f"{where}: cannot parse layer string {spec!r}; use letters m (Mamba2), M (Mamba2+MLP), "
        "t (attention), T (attention+MLP) each followed by a count, e.g. 'm4' or 'T1m4'")
  out = [(k, int(n)) for k, n in parts]
  if any(n <= 0 for _, n in out):
    raise ConfigError(f"{where}: layer counts must be positive in {spec!r}")
  return out


def layout_depth(layout: tuple) -> int:
  """Number of routing stages S of a nested layout: ('T4',) -> 0, ('m4', ('T9',), 'm4') -> 1."""
  if len(layout) == 1:
    return 0
  return 1 + layout_depth(layout[1])


def _check_layout(layout: Any, where: str = "model.layout") -> None:
  if not isinstance(layout, tuple) or len(layout) not in (1, 3):
    raise ConfigError(f"{where}: expected [stack] or [encoder, [inner...], decoder], got {layout!r}")
  if len(layout) == 1:
    if not isinstance(layout[0], str):
      raise ConfigError(f"{where}: the innermost level must be one layer string, got {layout[0]!r}")
    parse_layer_string(layout[0], where)
    return
  enc, inner, dec = layout
  for part, name in ((enc, "encoder"), (dec, "decoder")):
    if not isinstance(part, str):
      raise ConfigError(f"{where}: {name} must be a layer string, got {part!r}")
    parse_layer_string(part, f"{where} ({name})")
  _check_layout(inner, where + "[1]")


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
  router: tuple[str, ...] = ("cosine",)  # boundary predictor per routing stage (ROUTERS; stride uses target_ratio as S)
  pooling: tuple[str, ...] = ("select",)  # chunk vector per stage: select (state at the boundary) | mean (shifted)
  word_boundary: str = "space"  # whitespace router: space | punct | regex:<byte class>, e.g. regex:[\s.,;:]+
  gumbel_temperature: float = 0.5  # gumbel router: temperature of the relaxed Bernoulli in training
  gumbel_prior_weight: float = 1.0  # gumbel router: weight of the binomial prior loss
  script_ratios: tuple[str, ...] = ()  # gumbel router: per-script target N as {latin: 5, han: 2, default: 6}
  entropy_layout: str = "T1"  # entropy router: layer string of its byte LM
  entropy_d_model: int = 32  # entropy router: width of its byte LM (heads = n_heads of level 0)
  entropy_mode: str = "global"  # entropy router: boundary where H_t > thr (global) or H_t - H_{t-1} > thr (jump)
  entropy_momentum: float = 0.9  # entropy router: EMA momentum of the running threshold (a quantile per batch)
  delete_gate_scale: float = -30.0  # delete_gate router: k in G = k sigmoid(w LN(h) + b), k < 0
  delete_gate_alpha: float = -1.0  # delete_gate router: regulariser weight; < 0 = PI controller to 1 - 1/N
  delete_gate_two_sided: bool = True  # delete_gate PI controller: alpha may go negative (push back to keeping);
  #   false = MrT5's alpha >= 0, which cannot stop over-deletion
  delete_gate_keep_all: bool = False  # delete_gate router: keep every position (evaluate "no deletion")
  target_ratio: tuple[float, ...] = (6.0,)  # target compression N per routing stage (> 1)
  capacity_factor: float = 1.5  # static chunk capacity = ceil(L / N * factor) + room for document starts
  capacity: tuple[int, ...] = (0,)  # explicit chunk capacity per routing stage; 0 = from capacity_factor
  ratio_loss_weight: float = 0.03  # alpha of the ratio loss
  lr_multipliers: tuple[float, ...] = ()  # learning-rate multiplier per level; () = paper's formula (App. C)
  init_std: float = 0.02  # std of linear-layer init; output projections are scaled down by depth
  dtype: str = "float32"  # compute dtype (params stay float32): float32 | bfloat16
  remat: bool = False  # recompute each block's activations in the backward pass (less memory, ~1/3 more compute)
  attention_block: int = 0  # queries per attention block (memory ~ block x length instead of length^2); 0 = all

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

  def __post_init__(self):
    _check_layout(self.layout)
    levels = self.num_levels
    for name in ("d_model", "d_ff", "n_heads", "window"):
      value = getattr(self, name)
      if len(value) == 1 and levels > 1:
        object.__setattr__(self, name, value * levels)
      elif len(value) != levels:
        raise ConfigError(f"model.{name}: layout has {levels} level(s), got {len(value)} values {list(value)}")
    stages = self.num_stages
    for name in ("router", "pooling", "target_ratio", "capacity"):
      value = getattr(self, name)
      if stages == 0:
        continue  # unused by a plain stack
      if len(value) == 1 and stages > 1:
        object.__setattr__(self, name, value * stages)
      elif len(value) != stages:
        raise ConfigError(f"model.{name}: layout has {stages} routing stage(s), got {len(value)} values")
    for level in range(levels):
      d, h = self.d_model[level], self.n_heads[level]
      if d <= 0 or h <= 0 or self.d_ff[level] < 0 or self.window[level] < 0:
        raise ConfigError(f"model: sizes must be positive (level {level}: d_model={d}, n_heads={h}, "
                          f"d_ff={self.d_ff[level]}, window={self.window[level]})")
      if d % h:
        raise ConfigError(f"model.n_heads: d_model {d} is not divisible by n_heads {h} at level {level}")
      if level and d < self.d_model[level - 1]:
        raise ConfigError(f"model.d_model: inner width {d} (level {level}) is smaller than outer width "
                          f"{self.d_model[level - 1]}; inner levels must be at least as wide")
      uses_mamba = any(k in "mM" for k, _ in _level_layers(self.level_layout(level)))
      if uses_mamba and (self.mamba.expand * d) % self.mamba.head_dim:
        raise ConfigError(f"model.mamba.head_dim: {self.mamba.head_dim} must divide expand*d_model = "
                          f"{self.mamba.expand * d} at level {level}")
    for r in self.router[:stages]:
      if r not in ROUTERS:
        raise ConfigError(f"model.router: unknown router {r!r}; valid: {', '.join(ROUTERS)}")
    for n in self.target_ratio[:stages]:
      if not n > 1:
        raise ConfigError(f"model.target_ratio: target compression N must be > 1, got {n}")
    if stages:
      self._check_routers(stages)
    if any(c < 0 for c in self.capacity):
      raise ConfigError(f"model.capacity: must be >= 0 (0 = automatic), got {list(self.capacity)}")
    if self.capacity_factor < 1:
      raise ConfigError(f"model.capacity_factor: must be >= 1, got {self.capacity_factor}")
    if self.lr_multipliers and len(self.lr_multipliers) != levels:
      raise ConfigError(f"model.lr_multipliers: need {levels} values (one per level) or [], "
                        f"got {list(self.lr_multipliers)}")
    if self.attention_block < 0:
      raise ConfigError(f"model.attention_block: must be >= 0 (0 = one block), got {self.attention_block}")
    if self.vocab_size <= 0 or self.init_std <= 0 or not 0 <= self.rotary_fraction <= 1:
      raise ConfigError("model: vocab_size and init_std must be positive, rotary_fraction in [0, 1]")
    if self.dtype not in DTYPES:
      raise ConfigError(f"model.dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")

  def _check_routers(self, stages: int) -> None:
    for s, (r, pool, n) in enumerate(zip(self.router, self.pooling, self.target_ratio)):
      if pool not in POOLINGS:
        raise ConfigError(f"model.pooling: unknown pooling {pool!r} at stage {s}; valid: {', '.join(POOLINGS)}")
      if r in BYTE_ROUTERS and s > 0:
        raise ConfigError(f"model.router: {r!r} reads bytes, so it only works at stage 0, not stage {s}; use "
                          "cosine, stride, gumbel or delete_gate for inner stages")
      if r == "stride" and float(n) != int(n):
        raise ConfigError(f"model.target_ratio: the stride router uses target_ratio as its stride S (a boundary "
                          f"every S bytes), so it must be an integer >= 2; got {n} at stage {s}")
    if not (self.word_boundary in WORD_BOUNDARIES or self.word_boundary.startswith("regex:")):
      raise ConfigError(f"model.word_boundary: {self.word_boundary!r} is not one of space, punct, regex:<class>")
    if self.word_boundary.startswith("regex:"):
      pattern = self.word_boundary[len("regex:"):]
      try:
        re.compile(pattern.encode())
      except re.error as e:
        raise ConfigError(f"model.word_boundary: cannot compile regex {pattern!r}: {e}") from None
      if not WORD_REGEX_RE.fullmatch(pattern):
        raise ConfigError(f"model.word_boundary: regex {pattern!r} is not supported; boundaries are computed in the "
                          "graph, so only one byte class is allowed, optionally with '+' (a run counts once), e.g. "
                          "regex:[\\s.,;:] or regex:[\\s]+ or regex:\\W+")
    if self.gumbel_temperature <= 0 or self.gumbel_prior_weight < 0:
      raise ConfigError("model.gumbel_temperature must be > 0 and model.gumbel_prior_weight >= 0")
    for item in self.script_ratios:
      name, _, value = item.partition(":")
      if name not in SCRIPTS:
        raise ConfigError(f"model.script_ratios: unknown script {name!r}; valid: {', '.join(SCRIPTS)}")
      try:
        ok = float(value) > 1
      except ValueError:
        ok = False
      if not ok:
        raise ConfigError(f"model.script_ratios: the target of {name!r} must be a number > 1, got {value!r}")
    if self.script_ratios and "gumbel" not in self.router[:stages]:
      raise ConfigError("model.script_ratios: per-script targets are used by the gumbel router only; set "
                        "model.router=[gumbel] or remove model.script_ratios")
    if self.entropy_mode not in ENTROPY_MODES:
      raise ConfigError(f"model.entropy_mode: {self.entropy_mode!r} is not one of {', '.join(ENTROPY_MODES)}")
    if "entropy" in self.router[:stages]:
      parse_layer_string(self.entropy_layout, "model.entropy_layout")
      if self.entropy_d_model <= 0 or self.entropy_d_model % self.n_heads[0]:
        raise ConfigError(f"model.entropy_d_model: must be a positive multiple of n_heads[0]={self.n_heads[0]}, "
                          f"got {self.entropy_d_model}")
      if any(k in "mM" for k, _ in parse_layer_string(self.entropy_layout)) \
          and (self.mamba.expand * self.entropy_d_model) % self.mamba.head_dim:
        raise ConfigError(f"model.entropy_d_model: mamba.head_dim {self.mamba.head_dim} must divide expand * "
                          f"entropy_d_model = {self.mamba.expand * self.entropy_d_model}")
    if not 0 <= self.entropy_momentum < 1:
      raise ConfigError(f"model.entropy_momentum: must be in [0, 1), got {self.entropy_momentum}")
    if not self.delete_gate_scale < 0:
      raise ConfigError(f"model.delete_gate_scale: k must be negative (G in [k, 0]), got {self.delete_gate_scale}")

  def script_targets(self) -> dict[str, float]:
    """Per-script target N of the gumbel router ('default' falls back to target_ratio[0])."""
    out = {"default": float(self.target_ratio[0])}
    out.update({k: float(v) for k, _, v in (item.partition(":") for item in self.script_ratios)})
    return out


def _level_layers(level_layout: tuple) -> list[tuple[str, int]]:
  if len(level_layout) == 1:
    return parse_layer_string(level_layout[0])
  return parse_layer_string(level_layout[0]) + parse_layer_string(level_layout[2])


@dataclasses.dataclass(frozen=True)
class DataConfig:
  sources: tuple[str, ...] = ()  # training paths (files, dirs, .jsonl, FASTA/FASTQ, .gz); () = Python stdlib
  valid_sources: tuple[str, ...] = ()  # held-out paths; () = split `sources` by document
  include: tuple[str, ...] = ("*",)  # glob patterns a file inside a directory must match (name or relative path)
  exclude: tuple[str, ...] = ()  # glob patterns that skip files inside directories
  jsonl_field: str = "text"  # field holding the text in .jsonl records
  doc_separator: str = ""  # split text files into documents at this string; "" = one document per file
  valid_fraction: float = 0.02  # fraction of documents held out when valid_sources is empty
  split_seed: int = 0  # seed of the document hash that decides the train/valid split
  seq_len: int = 256  # window length L in bytes
  min_doc_bytes: int = 16  # shorter documents are skipped (bounds the documents per window)
  seed: int = 0  # shuffle seed (document order and window order per epoch)
  mmap_min_mb: int = 256  # corpora larger than this are kept in a memory-mapped cache file, not in RAM
  prefetch: int = 4  # batches prepared ahead by the grain iterator
  tokenizer: str = ""  # sentencepiece model of a token-level model (BPE baseline); "" = bytes

  @property
  def max_docs_per_window(self) -> int:
    """Upper bound on document starts in one window: each document is BOS + >= min_doc_bytes bytes."""
    return math.ceil(self.seq_len / (self.min_doc_bytes + 1)) + 1

  def __post_init__(self):
    if self.seq_len <= 1:
      raise ConfigError(f"data.seq_len: must be > 1, got {self.seq_len}")
    if self.min_doc_bytes < 1:
      raise ConfigError(f"data.min_doc_bytes: must be >= 1, got {self.min_doc_bytes}")
    if not 0 < self.valid_fraction < 1:
      raise ConfigError(f"data.valid_fraction: must be in (0, 1), got {self.valid_fraction}")
    if self.mmap_min_mb < 0 or self.prefetch < 0:
      raise ConfigError("data.mmap_min_mb and data.prefetch must be >= 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 1000  # optimizer steps
  batch_size: int = 8  # global batch (windows per step)
  lr: float = 3e-3  # peak learning rate
  warmup_steps: int = 100  # linear warmup from 0
  schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay, 1/sqrt decay) | constant
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

  def __post_init__(self):
    for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
      if getattr(self, name) <= 0:
        raise ConfigError(f"train.{name}: must be positive, got {getattr(self, name)}")
    for name in ("warmup_steps", "eval_every", "weight_decay", "grad_clip"):
      if getattr(self, name) < 0:
        raise ConfigError(f"train.{name}: must be >= 0, got {getattr(self, name)}")
    if self.lr <= 0:
      raise ConfigError(f"train.lr: must be positive, got {self.lr}")
    if self.schedule not in SCHEDULES:
      raise ConfigError(f"train.schedule: {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if not 0 <= self.min_lr_ratio <= 1 or not 0 < self.decay_fraction <= 1:
      raise ConfigError("train.min_lr_ratio must be in [0, 1] and train.decay_fraction in (0, 1]")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  batch_size: int = 16  # windows per evaluation batch
  max_bytes: int = 262144  # bytes of the valid split used by periodic evals; 0 = all
  final_max_bytes: int = 0  # bytes used by the final evaluation; 0 = the whole valid split
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
  impl: str = "auto"  # chunk-op backend: auto (Pallas on GPU/TPU, XLA on CPU) | xla | pallas | interpret

  def __post_init__(self):
    if self.impl not in KERNEL_IMPLS:
      raise ConfigError(f"kernels.impl: {self.impl!r} is not one of {', '.join(KERNEL_IMPLS)}")


@dataclasses.dataclass(frozen=True)
class Config:
  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()
  eval: EvalConfig = EvalConfig()
  mesh: MeshConfig = MeshConfig()
  kernels: KernelsConfig = KernelsConfig()

  def __post_init__(self):
    if self.model.vocab_size != 256 and not self.data.tokenizer:
      raise ConfigError(f"model.vocab_size {self.model.vocab_size} is for a token model: set data.tokenizer to a "
                        "sentencepiece model (`chunklm tokenizer train`), or use vocab_size 256 for bytes")
    if self.model.num_stages:
      from chunklm.model.capacity import stage_capacities  # local: config must stay importable alone
      stage_capacities(self.model, self.data)  # raises ConfigError when a capacity cannot hold the documents


# ----------------------------------------------------------------------------- loading


def _coerce(value: Any, tp: Any, key: str) -> Any:
  origin = typing.get_origin(tp)
  if dataclasses.is_dataclass(tp):
    if not isinstance(value, dict):
      raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return from_dict(tp, value, key)
  if tp is tuple:  # the nested layout
    return _to_layout(value, key)
  if origin is tuple:
    item_tp = typing.get_args(tp)[0]
    if isinstance(value, dict) and item_tp is str:  # a mapping such as {latin: 5} is kept as ('latin:5',)
      value = [f"{k}:{v}" for k, v in value.items()]
    items = value if isinstance(value, (list, tuple)) else [value]
    return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(items))
  if tp is bool:
    if isinstance(value, bool):
      return value
  elif tp is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+(\.0*)?([eE]\+?\d+)?", value.strip()):
      return int(float(value))
  elif tp is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    if isinstance(value, str):
      try:
        return float(value)
      except ValueError:
        pass
  elif tp is str:
    if isinstance(value, str):
      return value
  name = getattr(tp, "__name__", str(tp))
  raise ConfigError(f"{key}: expected {name}, got {value!r}")


def _to_layout(value: Any, key: str) -> tuple:
  if isinstance(value, str):
    return (value,)
  if isinstance(value, (list, tuple)):
    return tuple(v if isinstance(v, str) else _to_layout(v, key) for v in value)
  raise ConfigError(f"{key}: expected a layout such as ['m4', ['T9'], 'm4'], got {value!r}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
  """Builds dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
  hints = typing.get_type_hints(cls)
  fields = [f.name for f in dataclasses.fields(cls)]
  kwargs = {}
  for key, value in data.items():
    full = f"{prefix}.{key}" if prefix else str(key)
    if key not in fields:
      raise ConfigError(f"{full}: unknown key; valid keys{' in ' + prefix if prefix else ''}: {', '.join(fields)}")
    kwargs[key] = _coerce(value, hints[key], full)
  return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
  """Plain nested dicts/lists (YAML- and JSON-friendly)."""
  if dataclasses.is_dataclass(cfg):
    return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
  if isinstance(cfg, tuple):
    return [to_dict(v) for v in cfg]
  return cfg


def _set_path(tree: dict, key: str, raw: str) -> None:
  parts = key.split(".")
  cls, node = Config, tree
  for i, part in enumerate(parts):
    names = {f.name: f for f in dataclasses.fields(cls)}
    where = ".".join(parts[: i + 1])
    if part not in names:
      scope = ".".join(parts[:i]) or "the top level"
      raise ConfigError(f"--set {key}: unknown key {where!r}; valid keys in {scope}: {', '.join(names)}")
    tp = typing.get_type_hints(cls)[part]
    if i == len(parts) - 1:
      if dataclasses.is_dataclass(tp):
        raise ConfigError(f"--set {key}: {where} is a section; set one of its keys, e.g. {where}.{dataclasses.fields(tp)[0].name}=...")
      # Strings stay verbatim; everything else is parsed as YAML so '256', '[1, 2]' and 'true' get their types.
      if tp is str:
        node[part] = raw
      else:
        try:
          node[part] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError as e:
          raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e.problem}") from None
      return
    if not dataclasses.is_dataclass(tp):
      raise ConfigError(f"--set {key}: {where} is not a section")
    node = node.setdefault(part, {})
    if not isinstance(node, dict):
      raise ConfigError(f"--set {key}: {where} is not a mapping in the config file")
    cls = tp


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
  """Loads YAML at `path` (or the defaults), applies `a.b=c` overrides, validates; raises ConfigError."""
  tree: dict = {}
  if path is not None:
    tree = read_yaml(resolve_config_path(path))
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set model.d_model=256")
    key, raw = item.split("=", 1)
    _set_path(tree, key.strip(), raw)
  return from_dict(Config, tree)


def read_yaml(path: Path) -> dict:
  try:
    text = path.read_text()
  except OSError as e:
    raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
  try:
    tree = yaml.safe_load(text)
  except yaml.YAMLError as e:
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    raise ConfigError(f"invalid YAML in {path}{where}: {getattr(e, 'problem', None) or e}") from None
  if tree is None:
    return {}
  if not isinstance(tree, dict):
    raise ConfigError(f"{path}: expected a mapping of sections (model, data, train, eval, mesh, kernels) at the "
                      "top level")
  return tree


CONFIG_DIR = Path(__file__).parent / "configs"


def resolve_bundled(path: str | os.PathLike, folder: Path, what: str) -> Path:
  """A path, or the name of a YAML file in `folder` ('x' or 'x.yaml'); else an error listing the bundled ones."""
  p = Path(path)
  if p.is_file():
    return p
  for candidate in (folder / p.name, folder / f"{p.name}.yaml"):
    if candidate.is_file():
      return candidate
  bundled = ", ".join(sorted(q.stem for q in folder.glob("*.yaml")))
  raise ConfigError(f"{what} {str(path)!r} not found; bundled {what}s: {bundled}")


def resolve_config_path(path: str | os.PathLike) -> Path:
  """A path, or the name of a bundled config ('hnet_1stage_tiny' or 'hnet_1stage_tiny.yaml')."""
  return resolve_bundled(path, CONFIG_DIR, "config")


def dump_yaml(cfg: Config) -> str:
  return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def flat_items(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flat_items(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
  return {prefix: tree}


def differing_fields(a: Config, b: Config, sections: tuple[str, ...]) -> list[str]:
  """Dotted keys under `sections` whose values differ, as 'key: a -> b'."""
  fa, fb = flat_items(to_dict(a)), flat_items(to_dict(b))
  return [f"{k}: {fa[k]!r} -> {fb[k]!r}" for k in fa if k.split(".")[0] in sections and fa[k] != fb.get(k)]
