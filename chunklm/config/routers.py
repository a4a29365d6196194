"""Boundary predictors in the config: the registry of router kinds and the settings section of each router that has
settings (`model.whitespace`, `model.gumbel`, `model.entropy`, `model.delete_gate`).

`model.router` names one kind per routing stage; a router's section is the ModelConfig field of the same name and
checks its own values. Checks that need other model fields (widths, heads, the stages that use a router) are in
ModelConfig. chunklm.model.routers maps the same names to the classes.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from chunklm.config.layout import parse_layer_string
from chunklm.errors import ConfigError

WORD_BOUNDARIES = ("space", "punct")  # or "regex:<character class>"
WORD_REGEX_RE = re.compile(r"(\[(?:\\.|[^\]\\])+\]|\\[sSdDwW]|\\x[0-9a-fA-F]{2}|[^\\\[\]()|*+?{}^$])\+?")
EntropyMode = Literal["global", "jump"]
SCRIPTS = ("default", "latin", "greek", "cyrillic", "arabic", "devanagari", "hiragana", "katakana", "han", "hangul")


@dataclasses.dataclass(frozen=True)
class WhitespaceConfig:
  boundary: str = "space"  # word starts after: space | punct | regex:<byte class>, e.g. regex:[\s.,;:]+

  def __post_init__(self):
    if not (self.boundary in WORD_BOUNDARIES or self.boundary.startswith("regex:")):
      raise ConfigError(f"model.whitespace.boundary: {self.boundary!r} is not one of space, punct, regex:<class>")
    if not self.boundary.startswith("regex:"):
      return
    pattern = self.boundary[len("regex:") :]
    try:
      re.compile(pattern.encode())
    except re.error as e:
      raise ConfigError(f"model.whitespace.boundary: cannot compile regex {pattern!r}: {e}") from None
    if not WORD_REGEX_RE.fullmatch(pattern):
      raise ConfigError(
        f"model.whitespace.boundary: regex {pattern!r} is not supported; boundaries are computed in "
        "the graph, so only one byte class is allowed, optionally with '+' (a run counts once), e.g. "
        "regex:[\\s.,;:] or regex:[\\s]+ or regex:\\W+"
      )


@dataclasses.dataclass(frozen=True)
class GumbelConfig:
  temperature: float = 0.5  # temperature of the relaxed Bernoulli in training
  prior_weight: float = 1.0  # weight of the binomial prior loss
  script_ratios: tuple[str, ...] = ()  # per-script target N (stage 0) as {latin: 5, han: 2, default: 6}

  def __post_init__(self):
    if self.temperature <= 0:
      raise ConfigError(f"model.gumbel.temperature: must be > 0, got {self.temperature}")
    if self.prior_weight < 0:
      raise ConfigError(f"model.gumbel.prior_weight: must be >= 0, got {self.prior_weight}")
    for item in self.script_ratios:
      name, _, value = item.partition(":")
      if name not in SCRIPTS:
        raise ConfigError(f"model.gumbel.script_ratios: unknown script {name!r}; valid: {', '.join(SCRIPTS)}")
      try:
        ok = float(value) > 1
      except ValueError:
        ok = False
      if not ok:
        raise ConfigError(f"model.gumbel.script_ratios: the target of {name!r} must be a number > 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class EntropyConfig:
  layout: str = "T1"  # layer string of the router's byte LM
  d_model: int = 32  # width of its byte LM (heads = n_heads of level 0)
  mode: EntropyMode = "global"  # boundary where H_t > thr (global) or H_t - H_{t-1} > thr (jump)
  momentum: float = 0.9  # EMA momentum of the running threshold (a quantile per batch)

  def __post_init__(self):
    parse_layer_string(self.layout, "model.entropy.layout")
    if self.d_model <= 0:
      raise ConfigError(f"model.entropy.d_model: must be positive, got {self.d_model}")
    if not 0 <= self.momentum < 1:
      raise ConfigError(f"model.entropy.momentum: must be in [0, 1), got {self.momentum}")


@dataclasses.dataclass(frozen=True)
class DeleteGateConfig:
  scale: float = -30.0  # k in G = k sigmoid(w LN(h) + b), k < 0
  alpha: float = -1.0  # regulariser weight; < 0 = PI controller to a deletion rate of 1 - 1/N
  two_sided: bool = True  # PI controller: alpha may go negative (push back to keeping); false = MrT5's alpha >= 0
  keep_all: bool = False  # keep every position (evaluate "no deletion")

  def __post_init__(self):
    if not self.scale < 0:
      raise ConfigError(f"model.delete_gate.scale: k must be negative (G in [k, 0]), got {self.scale}")


@dataclasses.dataclass(frozen=True)
class RouterKind:
  settings: type | None  # its section, the ModelConfig field named as the router; None = no settings
  reads_bytes: bool  # decides from the bytes themselves, so it only works at stage 0


# The router kinds: the option type of model.router (the loader checks it) and the registry, in the same order (tested).
RouterName = Literal["cosine", "stride", "whitespace", "gumbel", "entropy", "delete_gate"]
ROUTERS: dict[RouterName, RouterKind] = {
  "cosine": RouterKind(None, reads_bytes=False),  # H-Net: cosine dissimilarity of adjacent states
  "stride": RouterKind(None, reads_bytes=False),  # a boundary every target_ratio positions
  "whitespace": RouterKind(WhitespaceConfig, reads_bytes=True),  # word starts
  "gumbel": RouterKind(GumbelConfig, reads_bytes=False),  # Gumbel-sigmoid with a binomial prior
  "entropy": RouterKind(EntropyConfig, reads_bytes=True),  # BLT: a jointly trained byte LM's entropy
  "delete_gate": RouterKind(DeleteGateConfig, reads_bytes=False),  # MrT5 delete gate
}
BYTE_ROUTERS = tuple(name for name, kind in ROUTERS.items() if kind.reads_bytes)
