"""Layer strings and nested layouts: 'T1m4' is one attention+MLP layer then four Mamba2 layers; ('m4', ('T9',), 'm4')
is a 1-stage H-Net (encoder, inner layout, decoder)."""

from __future__ import annotations

import re
from typing import Any

from chunklm.errors import ConfigError

LAYER_RE = re.compile(r"([mMtT])(\d+)")


def parse_layer_string(spec: str, where: str = "model.layout") -> list[tuple[str, int]]:
  """'T1m4' -> [('T', 1), ('m', 4)]; raises ConfigError naming the bad part."""
  parts = LAYER_RE.findall(spec)
  if not spec or "".join(f"{k}{n}" for k, n in parts) != spec:
    raise ConfigError(
      f"{where}: cannot parse layer string {spec!r}; use letters m (Mamba2), M (Mamba2+MLP), "
      "t (attention), T (attention+MLP) each followed by a count, e.g. 'm4' or 'T1m4'"
    )
  out = [(k, int(n)) for k, n in parts]
  if any(n <= 0 for _, n in out):
    raise ConfigError(f"{where}: layer counts must be positive in {spec!r}")
  return out


def uses_mamba(spec: str) -> bool:
  """Whether a (valid) layer string has a Mamba2 layer."""
  return any(k in "mM" for k, _ in parse_layer_string(spec))


def layout_depth(layout: tuple) -> int:
  """Number of routing stages S of a nested layout: ('T4',) -> 0, ('m4', ('T9',), 'm4') -> 1."""
  if len(layout) == 1:
    return 0
  return 1 + layout_depth(layout[1])


def check_layout(layout: Any, where: str = "model.layout") -> None:
  """Raises ConfigError unless `layout` is (stack,) or (encoder, inner layout, decoder) of valid layer strings."""
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
  check_layout(inner, where + "[1]")


def level_layer_strings(level_layout: tuple) -> tuple[str, ...]:
  """The layer strings run at one level: the stack, or the encoder and the decoder."""
  return level_layout if len(level_layout) == 1 else (level_layout[0], level_layout[2])
