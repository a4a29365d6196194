"""Named parts of a model's parameters, for freezing and per-part learning rates (`train.freeze`, `train.lr_scale`).

A parameter is named by its dotted path, e.g. `backbone.main.blocks.0.mlp.w_in.kernel` (1-stage H-Net) or
`backbone.blocks.3.mixer.w_qkv.kernel` (byte Transformer). A selector is either one of the named parts below or a
glob over those paths (`*` crosses dots):
  embed, head                    the byte/token embedding and the LM head
  encoder.sK, decoder.sK         the encoder / decoder stack of routing stage K (0 = outermost, over bytes)
  router.sK, residual.sK         stage K's boundary predictor, and its residual projection (and padding)
  main                           the innermost main network (a plain model's whole stack)
"""

from __future__ import annotations

import fnmatch

import jax

from chunklm.config import ModelConfig
from chunklm.errors import ConfigError
from chunklm.model.functional import path_name  # re-exported: optim, cli


def named_parts(model: ModelConfig) -> dict[str, tuple[str, ...]]:
  """{part name: the globs it stands for} for this model."""
  parts: dict[str, tuple[str, ...]] = {"embed": ("embed.*",), "head": ("head.*",)}
  for s in range(model.num_stages):
    stage = "backbone." + "main." * s
    parts[f"encoder.s{s}"] = (stage + "encoder.*",)
    parts[f"decoder.s{s}"] = (stage + "decoder.*",)
    parts[f"router.s{s}"] = (stage + "router.*",)
    parts[f"residual.s{s}"] = (stage + "residual_proj.*", stage + "residual_bias", stage + "pad")
  parts["main"] = ("backbone." + "main." * model.num_stages + "*",)
  return parts


def matches(name: str, selector: str, parts: dict[str, tuple[str, ...]]) -> bool:
  return any(fnmatch.fnmatchcase(name, g) for g in parts.get(selector, (selector,)))


def names_of(params) -> list[str]:
  return [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def check_selectors(selectors, params, model: ModelConfig, setting: str) -> None:
  """A one-line ConfigError for a selector that matches no parameter (a typo would otherwise do nothing)."""
  parts, names = named_parts(model), names_of(params)
  for sel in selectors:
    if not any(matches(n, sel, parts) for n in names):
      raise ConfigError(
        f"{setting}: {sel!r} matches no parameter; named parts of this model: "
        f"{', '.join(parts)} (or a glob over parameter paths such as backbone.main.*)"
      )


def frozen_mask(params, model: ModelConfig, freeze: tuple[str, ...]):
  """True for each parameter that `freeze` selects."""
  parts = named_parts(model)
  return jax.tree_util.tree_map_with_path(lambda p, _: any(matches(path_name(p), s, parts) for s in freeze), params)


def count_frozen(params, model: ModelConfig, freeze: tuple[str, ...]) -> tuple[int, int]:
  """(trainable, frozen) parameter counts."""
  mask = frozen_mask(params, model, freeze)
  sizes = [(int(x.size), bool(m)) for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask))]
  return sum(n for n, f in sizes if not f), sum(n for n, f in sizes if f)
