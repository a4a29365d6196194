"""A `chunklm compare` spec: the models of a comparison (a bundled config or a path, `--set`-style overrides, and
optionally a model whose training FLOPs per byte this one is resized to), the byte budget, evaluations, sweep and
seeds; and the spec's expansions (one model per run of a sweep, references, the spec without some models).

A spec file is read by the config loader (config/loading.py), so its keys and values are checked as a config's are:
an unknown key lists the valid ones, a wrong type or a value outside a closed set of choices is one line naming the
key. The one form of its own is `sweep:`, a mapping of keys to lists of values normalised as run names (sweep.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from chunklm.config import CONFIG_DIR, Config, from_dict, read_yaml, resolve_bundled
from chunklm.errors import ConfigError, UserError
from chunklm.experiments import sweep as sweeps

SPEC_DIR = CONFIG_DIR / "compare"
FlopsLever = Literal["layers", "width"]  # what FLOPs matching may change (model.flops.match_flops)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str  # row name and workdir name
  config: str  # bundled config name or path
  set: tuple[str, ...] = ()  # KEY=VALUE overrides, as with --set
  match_flops: str = ""  # resize this model's innermost stack to that model's training FLOPs per byte
  vary: tuple[FlopsLever, ...] = ("layers", "width")  # what match_flops may change
  run_set: tuple[str, ...] = ()  # a run's own settings (sweep point, shifted seeds), applied after every other
  budget_bytes: int = 0  # a run's own training bytes (a point of a budget_bytes sweep); 0 = the spec's


@dataclasses.dataclass(frozen=True)
class CompareSpec:
  name: str  # the spec file's name
  models: tuple[ModelSpec, ...]
  budget_bytes: int = 2_500_000  # training bytes per model
  evals: int = 5  # valid evaluations during training (evenly spaced), plus the final one on all valid bytes
  eval_max_bytes: int = 65536  # leading valid bytes used by the evaluations during training
  final_eval_max_bytes: int = 0  # leading valid bytes of the final evaluation; 0 = all (--eval-max-bytes sets both)
  tokenizer_vocab: int = 4096  # pieces of the BPE tokenizer trained for token models
  data: tuple[str, ...] = ()  # data.* overrides for every model, as KEY=VALUE (e.g. data.seq_len is per model)
  efficiency_reference: str = ""  # report the bytes each model needs to reach this model's final valid BPB
  sweep: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (KEY, values): a run per model and grid point
  seeds: int = 1  # runs per model and point; seed k shifts train.seed and data.seed by k

  def __post_init__(self):
    names = [m.name for m in self.models]
    if not names:
      raise ConfigError(f"compare spec {self.name}: no models")
    if len(set(names)) != len(names):
      raise ConfigError(f"compare spec {self.name}: model names must be unique, got {names}")
    for m in self.models:
      if m.match_flops and m.match_flops not in names:
        raise ConfigError(f"compare spec {self.name}: model {m.name} matches FLOPs of unknown model {m.match_flops!r}")
      if m.match_flops == m.name:
        raise ConfigError(f"compare spec {self.name}: model {m.name} cannot match its own FLOPs")
    if self.efficiency_reference and self.efficiency_reference not in names:
      raise ConfigError(
        f"compare spec {self.name}: efficiency_reference {self.efficiency_reference!r} is not one of its models {names}"
      )
    if self.budget_bytes <= 0 or self.evals < 0 or self.eval_max_bytes < 0 or self.final_eval_max_bytes < 0:
      raise ConfigError(
        "compare spec: budget_bytes must be positive, evals, eval_max_bytes and final_eval_max_bytes >= 0"
      )
    if self.seeds < 1:
      raise ConfigError(f"compare spec {self.name}: seeds must be at least 1, got {self.seeds}")
    keys = [k for k, _ in self.sweep]
    if len(set(keys)) != len(keys):
      raise ConfigError(f"compare spec {self.name}: a sweep key appears twice: {keys}")
    for key, values in self.sweep:
      sweeps.check_values(key, values)

  def model(self, name: str) -> ModelSpec:
    return next(m for m in self.models if m.name == name)


def load_spec(path: str | Path) -> CompareSpec:
  """The spec in file `path`, or a bundled spec by name; its name is the file's."""
  path = resolve_bundled(path, SPEC_DIR, "spec")
  tree = read_yaml(path)
  if "sweep" in tree:
    tree["sweep"] = _sweep_pairs(tree["sweep"], path)
  try:
    return from_dict(CompareSpec, {"name": path.stem, **tree})
  except ConfigError as e:
    raise ConfigError(f"{path}: {e}") from None


def _sweep_pairs(sweep, path: Path) -> list[tuple[str, tuple[str, ...]]]:
  """`sweep: {KEY: [values]}` as (KEY, values) pairs, each value as its run name writes it (1.0e-3 -> 0.001)."""
  if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
    raise ConfigError(f"{path}: sweep must map config keys to lists of values, e.g. sweep: {{train.lr: [1e-3, 2e-3]}}")
  return [(str(k), sweeps.check_values(str(k), v)) for k, v in sweep.items()]


QUICK_BUDGET = 1_000_000  # a --budget-bytes below this is a quick trial: its evaluations read at most...
QUICK_EVAL_BYTES = 65536  # ... these leading valid bytes each, the final one included (unless --eval-max-bytes)


def with_eval_bytes(spec: CompareSpec, eval_max_bytes: int | None, budget_bytes: int | None) -> CompareSpec:
  """The spec with `eval_max_bytes` leading valid bytes for every evaluation, the final one included (each run's
  eval.max_bytes and eval.final_max_bytes); without it, a quick trial (--budget-bytes below QUICK_BUDGET) reads at
  most QUICK_EVAL_BYTES per evaluation instead of the whole valid split at the end."""
  if eval_max_bytes is None and budget_bytes is not None and budget_bytes < QUICK_BUDGET:
    eval_max_bytes = min(spec.eval_max_bytes or QUICK_EVAL_BYTES, QUICK_EVAL_BYTES)
  if eval_max_bytes is None:
    return spec
  return dataclasses.replace(spec, eval_max_bytes=eval_max_bytes, final_eval_max_bytes=eval_max_bytes)


def with_cli(
  spec: CompareSpec, budget_bytes: int | None, sweep: list[str], seeds: int | None, only: list[str]
) -> CompareSpec:
  """The spec with the command line's budget, sweep and seeds in place of its own (checked as the file's are);
  `only` must name models of the spec."""
  if budget_bytes is not None:
    spec = dataclasses.replace(spec, budget_bytes=budget_bytes)
  if sweep:
    spec = dataclasses.replace(spec, sweep=tuple(sweeps.parse_sweeps(sweep).items()))
  if seeds is not None:
    spec = dataclasses.replace(spec, seeds=seeds)
  unknown = [n for n in only if n not in {m.name for m in spec.models}]
  if unknown:
    raise UserError(
      f"--models {','.join(unknown)}: not in spec {spec.name} (its models: {', '.join(m.name for m in spec.models)})"
    )
  return spec


def expand_spec(spec: CompareSpec, plain: dict[str, Config]) -> tuple[CompareSpec, list[sweeps.Run]]:
  """The spec with one model per run of its sweep and seeds (`plain`: each model's config, for its base seeds);
  without a sweep and with one seed, the spec itself."""
  runs = sweeps.expand([m.name for m in spec.models], dict(spec.sweep), spec.seeds)
  models = []
  for r in runs:
    m = spec.model(r.model)
    extra = sweeps.overrides(r, plain[m.name].train.seed, plain[m.name].data.seed)
    ref = sweeps.run_name(m.match_flops, r.point, r.seed) if m.match_flops else ""
    budget = int(dict(r.point).get(sweeps.BUDGET_KEY, 0))
    models.append(dataclasses.replace(m, name=r.name, run_set=tuple(extra), match_flops=ref, budget_bytes=budget))
  return dataclasses.replace(spec, models=tuple(models)), runs


def with_references(spec: CompareSpec, names: set[str]) -> set[str]:
  """`names` and, transitively, the models whose FLOPs they are sized to."""
  refs = {m.name: m.match_flops for m in spec.models}
  out, todo = set(names), list(names)
  while todo:
    ref = refs[todo.pop()]
    if ref and ref not in out:
      out.add(ref)
      todo.append(ref)
  return out


def without(spec: CompareSpec, runs: list[sweeps.Run], drop: set[str]) -> tuple[CompareSpec, list[sweeps.Run]]:
  """The spec and runs without `drop` and without every model sized to one of them."""
  drop = set(drop)
  while True:
    more = {m.name for m in spec.models if m.match_flops in drop} - drop
    if not more:
      break
    drop |= more
  models = tuple(m for m in spec.models if m.name not in drop)
  if not models:
    raise UserError(f"compare spec {spec.name}: nothing left to run")
  return dataclasses.replace(spec, models=models), [r for r in runs if r.name not in drop]
