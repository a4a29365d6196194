"""What `chunklm info` reports of a config (or a run's saved config), without training or allocating anything:
parameters, FLOPs per byte, capacities, per-level LR multipliers, the trained/frozen split of a fine-tuning setup
and, on request, every parameter with its named part."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from chunklm.config import Config, load_config
from chunklm.model.describe import describe_config
from chunklm.model.functional import path_name
from chunklm.run.trained import abstract_params, read_config
from chunklm.train.optim import lr_multipliers
from chunklm.train.parts import check_selectors, count_frozen, frozen_mask, matches, named_parts


@dataclasses.dataclass(frozen=True)
class Parameter:
  name: str  # its path, as train.freeze / train.lr_scale globs match it
  shape: tuple[int, ...]
  part: str  # the named part it belongs to ("-" for none)
  frozen: bool  # whether train.freeze freezes it


@dataclasses.dataclass(frozen=True)
class SetupInfo:
  name: str  # the config or workdir described
  cfg: Config  # as configured; data.max_docs_per_window 0 = set from the corpus at the first training
  figures: dict  # describe_config's, with lr_multipliers, trainable and frozen (model variables)
  parameters: list[Parameter]  # empty unless asked for


def setup_info(
  config: str | None,
  overrides: list[str] | tuple[str, ...] = (),
  workdir: str | Path | None = None,
  *,
  list_params: bool = False,
) -> SetupInfo:
  """Describe `workdir`'s saved config (with `overrides` that keep its parameters), else the config `config`.

  Nothing reads a corpus: where data.max_docs_per_window is 0 (set from the corpus when training starts), the chunk
  capacities are those of its bound from data.min_doc_bytes, the most a training window can need."""
  if workdir:
    cfg, name = read_config(workdir, tuple(overrides)), str(workdir)
  else:
    cfg, name = load_config(config, list(overrides)), str(config)
  figures = describe_config(cfg)
  figures["lr_multipliers"] = lr_multipliers(cfg.model)
  params = abstract_params(cfg)[1]
  check_selectors(cfg.train.freeze, params, cfg.model, "train.freeze")
  figures["trainable"], figures["frozen"] = count_frozen(params, cfg.model, cfg.train.freeze)
  return SetupInfo(name, cfg, figures, _parameters(cfg, params) if list_params else [])


def _parameters(cfg: Config, params) -> list[Parameter]:
  parts, frozen = named_parts(cfg.model), jax.tree.leaves(frozen_mask(params, cfg.model, cfg.train.freeze))
  rows = []
  for (path, leaf), f in zip(jax.tree_util.tree_flatten_with_path(params)[0], frozen):
    name = path_name(path)
    rows.append(Parameter(name, tuple(leaf.shape), next((p for p in parts if matches(name, p, parts)), "-"), bool(f)))
  return rows
