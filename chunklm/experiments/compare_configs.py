"""The configs of a comparison: each model's config from the spec and the command line's data settings, the same
data for every model (checked), a token model's tokenizer and steps from the byte budget, and the FLOPs-matched
lever where a spec asks for one."""

from __future__ import annotations

import dataclasses
import math

from chunklm.config import Config, ModelConfig, config_tree, from_dict, load_config, merge_trees, to_dict
from chunklm.errors import ConfigError, UserError
from chunklm.experiments import sweep as sweeps
from chunklm.experiments.compare_spec import (
  CompareSpec,
  ModelSpec,
)
from chunklm.model.flops import match_flops, train_flops_per_byte

# The data settings that decide which bytes are trained and evaluated on: equal for every model of a comparison.
DATA_IDENTITY = (
  "sources",
  "valid_sources",
  "include",
  "exclude",
  "jsonl_field",
  "doc_separator",
  "valid_fraction",
  "split_seed",
  "min_doc_bytes",
  "seed",
  "dna",
)


# A token model's tokenizer until the comparison has trained its own: its config is checked before any training.
TOKENIZER_PENDING = "<compare tokenizer>"


def data_identity(cfg: Config) -> dict:
  d = to_dict(cfg.data)
  return {k: d[k] for k in DATA_IDENTITY}


def check_same_data(configs: dict[str, Config], where: str = "", runs: list[sweeps.Run] | None = None) -> None:
  """Refuses models whose training/valid bytes would differ, naming the models and the settings; with `runs`, only
  the runs of the same seed must agree (another seed reads the same documents in another order)."""
  if runs is not None:
    for seed in sorted({r.seed for r in runs}):
      check_same_data({r.name: configs[r.name] for r in runs if r.seed == seed and r.name in configs}, where)
    return
  items = list(configs.items())
  ref_name, ref = items[0]
  ref_id = data_identity(ref)
  for name, cfg in items[1:]:
    other = data_identity(cfg)
    diff = [f"data.{k}: {ref_id[k]!r} ({ref_name}) vs {other[k]!r} ({name})" for k in ref_id if ref_id[k] != other[k]]
    if diff:
      raise UserError(
        f"{where}models {ref_name} and {name} would train on different data ({'; '.join(diff)}); "
        "a comparison needs the same bytes for every model"
      )


def steps_for(cfg: Config, budget_bytes: int, bytes_per_token: float) -> int:
  per_step = cfg.train.batch_size * cfg.data.seq_len * (bytes_per_token if cfg.data.tokenizer else 1.0)
  return max(1, math.ceil(budget_bytes / per_step))


def spec_overrides(spec: CompareSpec, data_args: list[str]) -> list[str]:
  return list(spec.data) + data_args


def model_overrides(spec: CompareSpec, m: ModelSpec, data_args: list[str]) -> list[str]:
  """A model's settings in the order they apply: its own, the spec's data, the command line's, then the run's."""
  return list(m.set) + spec_overrides(spec, data_args) + list(m.run_set)


def plain_config(spec: CompareSpec, m: ModelSpec, data_args: list[str]) -> Config:
  """Model `m`'s config with the spec's data settings (before budget and FLOPs matching); a token model reads the
  comparison's tokenizer, which is trained later (TOKENIZER_PENDING until then)."""
  try:
    tree = config_tree(m.config, model_overrides(spec, m, data_args))
    if _is_token_model(tree):
      tree = merge_trees(tree, {"data": {"tokenizer": TOKENIZER_PENDING}})
    return from_dict(Config, tree)
  except ConfigError as e:
    raise ConfigError(f"model {m.name}: {e}") from None


def _is_token_model(tree: dict) -> bool:
  model = tree.get("model", {})
  return isinstance(model, dict) and from_dict(ModelConfig, model, "model").is_token_model


def plain_configs(spec: CompareSpec, data_args: list[str]) -> dict[str, Config]:
  """Each model's plain_config; validates them all."""
  return {m.name: plain_config(spec, m, data_args) for m in spec.models}


def resolve_configs(
  spec: CompareSpec,
  data_args: list[str],
  tokenizer: str | None,
  bytes_per_token: float,
  runs: list[sweeps.Run] | None = None,
  plain: dict[str, Config] | None = None,
) -> tuple[dict[str, Config], dict[str, float]]:
  """The final config of every model (data, budget, FLOPs matching applied) and each match's residual error;
  `plain`: plain_configs(spec, data_args) when the caller has them already."""
  base = {m.name: plain[m.name] for m in spec.models} if plain is not None else plain_configs(spec, data_args)
  for name, cfg in base.items():
    if cfg.model.is_token_model:
      if tokenizer is None:
        raise ConfigError(f"model {name} is a token model but no tokenizer was given")
      m = spec.model(name)
      base[name] = load_config(
        m.config,
        model_overrides(spec, m, data_args)
        + [f"data.tokenizer={tokenizer}", f"model.vocab_size={spec.tokenizer_vocab}"],
      )
  final, errors = _flops_matched(spec, base, bytes_per_token)
  for name, cfg in final.items():
    final[name] = _budgeted(cfg, spec.model(name).budget_bytes or spec.budget_bytes, spec, bytes_per_token)
  check_same_data(final, runs=runs)
  return final, errors


def _bytes_per_position(cfg: Config, bytes_per_token: float) -> float:
  return bytes_per_token if cfg.data.tokenizer else 1.0


def _flops_matched(
  spec: CompareSpec, base: dict[str, Config], bytes_per_token: float
) -> tuple[dict[str, Config], dict[str, float]]:
  """The configs with each `match_flops` model resized to its reference's training FLOPs per byte, and the residual
  error of each resized one."""
  final, errors = dict(base), {}
  for m in spec.models:
    if m.match_flops:
      ref, cfg = base[m.match_flops], base[m.name]
      target = train_flops_per_byte(
        ref.model, ref.data.seq_len, bytes_per_token=_bytes_per_position(ref, bytes_per_token)
      )
      model, errors[m.name] = match_flops(
        target, cfg.model, cfg.data.seq_len, bytes_per_token=_bytes_per_position(cfg, bytes_per_token), vary=m.vary
      )
      final[m.name] = dataclasses.replace(cfg, model=model)
  return final, errors


def _budgeted(cfg: Config, budget_bytes: int, spec: CompareSpec, bytes_per_token: float) -> Config:
  """`cfg` trained on `budget_bytes`, evaluated `spec.evals` times on the spec's leading valid bytes and at the end
  on all of them (or the spec's final_eval_max_bytes leading ones)."""
  steps = steps_for(cfg, budget_bytes, bytes_per_token)
  train_cfg = dataclasses.replace(
    cfg.train,
    steps=steps,
    warmup_steps=min(cfg.train.warmup_steps, steps // 10 or 1),
    eval_every=max(1, steps // spec.evals) if spec.evals else 0,
    checkpoint_every=max(1, min(cfg.train.checkpoint_every, steps)),
  )
  ev = dataclasses.replace(cfg.eval, max_bytes=spec.eval_max_bytes, final_max_bytes=spec.final_eval_max_bytes)
  return dataclasses.replace(cfg, train=train_cfg, eval=ev)


def check_sweep(spec: CompareSpec, data_args: list[str], budget_given: bool = False) -> None:
  """One clear line for a sweep that cannot work: a key also set elsewhere, a data key that decides which bytes are
  read, a seed swept while --seeds shifts it, or budgets that are not whole positive numbers of bytes."""
  sweeps.check_unset([k for k, _ in spec.sweep], list(spec.data) + data_args)
  for key, values in spec.sweep:
    if key == sweeps.BUDGET_KEY:
      sweeps.check_budgets(values, budget_given)
    if key.startswith("data.") and key[5:] in DATA_IDENTITY:
      raise UserError(
        f"--sweep {key}: every run of a comparison reads the same bytes; {key} decides which "
        "(use --seeds N to vary the order of the training bytes)"
      )
    if key == "train.seed" and spec.seeds > 1:
      raise UserError("--sweep train.seed with --seeds: the seeds already shift train.seed; use one of them")
