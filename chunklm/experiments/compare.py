"""`chunklm compare`: train several models on the same bytes with the same byte budget, evaluate them on the same
valid bytes, and report (table + plots).

A spec (YAML) names the models (a bundled config or a path, `--set`-style overrides, and optionally a model whose
training FLOPs per byte this one is resized to). Every model gets the spec's data settings, trains for
ceil(budget_bytes / bytes per step) steps in <out>/<model>/, and is evaluated along the way on the same leading valid
bytes and at the end on all of them. Re-running resumes unfinished runs and reuses finished ones, after checking
they were trained on the same data. A BPE model's tokenizer is trained once, on the training split, in <out>/.
A spec (or the command line) may sweep config fields and repeat every run over seeds (experiments/sweep.py); the
report then adds mean ± spread over seeds and each model's best point. Sweeping `budget_bytes` (the spec's own
field, e.g. --sweep budget_bytes=2500000,10000000) trains every model at each budget and reports budget curves.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path

import numpy as np

from chunklm.config import (CONFIG_DIR, Config, load_config, read_yaml, resolve_bundled, resolve_config_path,
                            to_dict)
from chunklm.data.corpus import load_splits
from chunklm.data.tokenizer import Tokenizer, tokenize, train_tokenizer
from chunklm.errors import ConfigError, UserError
from chunklm.experiments import compare_report, sweep as sweeps
from chunklm.model.describe import describe_config
from chunklm.model.flops import match_flops, train_flops_per_byte
from chunklm.run.metrics import read_jsonl
from chunklm.run.trained import read_config
from chunklm.train.trainer import TrainingDiverged, train

# The data settings that decide which bytes are trained and evaluated on: equal for every model of a comparison.
DATA_IDENTITY = ("sources", "valid_sources", "include", "exclude", "jsonl_field", "doc_separator", "valid_fraction",
                 "split_seed", "min_doc_bytes", "seed", "dna")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str  # row name and workdir name
  config: str  # bundled config name or path
  set: tuple[str, ...] = ()  # KEY=VALUE overrides, as with --set
  match_flops: str = ""  # resize this model's innermost stack to that model's training FLOPs per byte
  vary: tuple[str, ...] = ("layers", "width")  # what match_flops may change
  run_set: tuple[str, ...] = ()  # a run's own settings (sweep point, shifted seeds), applied after every other
  budget_bytes: int = 0  # a run's own training bytes (a point of a budget_bytes sweep); 0 = the spec's


@dataclasses.dataclass(frozen=True)
class CompareSpec:
  name: str
  models: tuple[ModelSpec, ...]
  budget_bytes: int = 2_500_000  # training bytes per model
  evals: int = 5  # valid evaluations during training (evenly spaced), plus the final one on all valid bytes
  eval_max_bytes: int = 65536  # leading valid bytes used by the evaluations during training
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
      raise ConfigError(f"compare spec {self.name}: efficiency_reference {self.efficiency_reference!r} is not one of "
                        f"its models {names}")
    if self.budget_bytes <= 0 or self.evals < 0 or self.eval_max_bytes < 0:
      raise ConfigError("compare spec: budget_bytes must be positive, evals and eval_max_bytes >= 0")
    if self.seeds < 1:
      raise ConfigError(f"compare spec {self.name}: seeds must be at least 1, got {self.seeds}")
    keys = [k for k, _ in self.sweep]
    if len(set(keys)) != len(keys):
      raise ConfigError(f"compare spec {self.name}: a sweep key appears twice: {keys}")
    for key, values in self.sweep:
      sweeps.check_values(key, values)


def load_spec(path: str | Path) -> CompareSpec:
  path = _resolve_spec(path)
  tree = read_yaml(path)
  known = {f.name for f in dataclasses.fields(CompareSpec)}
  unknown = set(tree) - known
  if unknown:
    raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; valid: {', '.join(sorted(known))}")
  models = []
  for i, m in enumerate(tree.get("models") or []):
    if not isinstance(m, dict) or "name" not in m or "config" not in m:
      raise ConfigError(f"{path}: models[{i}] needs at least a name and a config")
    extra = set(m) - {f.name for f in dataclasses.fields(ModelSpec)}
    if extra:
      raise ConfigError(f"{path}: models[{i}] has unknown key(s) {sorted(extra)}")
    models.append(ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in m.items()}))
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in tree.items() if k not in ("models", "sweep")}
  for key, value in fields.items():
    tp = typing.get_type_hints(CompareSpec)[key]
    if tp is int and not isinstance(value, int):
      raise ConfigError(f"{path}: {key} must be an integer, got {value!r}")
  if "sweep" in tree:
    sweep = tree["sweep"]
    if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
      raise ConfigError(f"{path}: sweep must map config keys to lists of values, e.g. sweep: {{train.lr: [1e-3, 2e-3]}}")
    fields["sweep"] = tuple((str(k), sweeps.check_values(str(k), v)) for k, v in sweep.items())
  return CompareSpec(models=tuple(models), **{"name": path.stem, **fields})


def _resolve_spec(path: str | Path) -> Path:
  return resolve_bundled(path, CONFIG_DIR / "compare", "spec")


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
      raise UserError(f"{where}models {ref_name} and {name} would train on different data ({'; '.join(diff)}); "
                      "a comparison needs the same bytes for every model")


def steps_for(cfg: Config, budget_bytes: int, bytes_per_token: float) -> int:
  per_step = cfg.train.batch_size * cfg.data.seq_len * (bytes_per_token if cfg.data.tokenizer else 1.0)
  return max(1, math.ceil(budget_bytes / per_step))


def spec_overrides(spec: CompareSpec, data_args: list[str]) -> list[str]:
  return list(spec.data) + data_args


def model_overrides(spec: CompareSpec, m: ModelSpec, data_args: list[str]) -> list[str]:
  """A model's settings in the order they apply: its own, the spec's data, the command line's, then the run's."""
  return list(m.set) + spec_overrides(spec, data_args) + list(m.run_set)


def _spec_model(spec: CompareSpec, name: str) -> ModelSpec:
  return next(m for m in spec.models if m.name == name)


def plain_configs(spec: CompareSpec, data_args: list[str]) -> dict[str, Config]:
  """Each model's config with the spec's data settings (before budget and FLOPs matching); validates them all."""
  out = {}
  for m in spec.models:
    resolve_config_path(m.config)  # a clear error naming the bundled configs
    try:
      out[m.name] = load_config(m.config, model_overrides(spec, m, data_args))
    except ConfigError as e:
      if "token model" in str(e):  # tokenizer comes later; validate the rest with a placeholder
        out[m.name] = load_config(m.config, model_overrides(spec, m, data_args)
                                  + ["data.tokenizer=<compare tokenizer>"])
      else:
        raise ConfigError(f"model {m.name}: {e}") from None
  return out


def resolve_configs(spec: CompareSpec, data_args: list[str], tokenizer: str | None, bytes_per_token: float,
                    runs: list[sweeps.Run] | None = None,
                    plain: dict[str, Config] | None = None) -> tuple[dict[str, Config], dict[str, float]]:
  """The final config of every model (data, budget, FLOPs matching applied) and each match's residual error;
  `plain`: plain_configs(spec, data_args) when the caller has them already."""
  base = {m.name: plain[m.name] for m in spec.models} if plain is not None else plain_configs(spec, data_args)
  for name, cfg in base.items():
    if cfg.model.vocab_size != 256:  # a token model reads the comparison's own tokenizer
      if tokenizer is None:
        raise ConfigError(f"model {name} is a token model but no tokenizer was given")
      m = _spec_model(spec, name)
      base[name] = load_config(m.config, model_overrides(spec, m, data_args)
                               + [f"data.tokenizer={tokenizer}", f"model.vocab_size={spec.tokenizer_vocab}"])

  def flops_of(cfg: Config) -> float:
    bpt = bytes_per_token if cfg.data.tokenizer else 1.0
    return train_flops_per_byte(cfg.model, cfg.data.seq_len, bytes_per_token=bpt)

  errors: dict[str, float] = {}
  final = dict(base)
  for m in spec.models:
    if m.match_flops:
      ref = base[m.match_flops]
      cfg = base[m.name]
      bpt = bytes_per_token if cfg.data.tokenizer else 1.0
      model, err = match_flops(flops_of(ref), cfg.model, cfg.data.seq_len, bytes_per_token=bpt, vary=m.vary)
      final[m.name] = dataclasses.replace(cfg, model=model)
      errors[m.name] = err
  for name, cfg in final.items():
    bpt = bytes_per_token if cfg.data.tokenizer else 1.0
    steps = steps_for(cfg, _spec_model(spec, name).budget_bytes or spec.budget_bytes, bpt)
    train_cfg = dataclasses.replace(cfg.train, steps=steps, warmup_steps=min(cfg.train.warmup_steps, steps // 10 or 1),
                                eval_every=max(1, steps // spec.evals) if spec.evals else 0,
                                checkpoint_every=max(1, min(cfg.train.checkpoint_every, steps)))
    ev = dataclasses.replace(cfg.eval, max_bytes=spec.eval_max_bytes, final_max_bytes=0)
    final[name] = dataclasses.replace(cfg, train=train_cfg, eval=ev)
  check_same_data(final, runs=runs)
  return final, errors


def expand_spec(spec: CompareSpec, plain: dict[str, Config]) -> tuple[CompareSpec, list[sweeps.Run]]:
  """The spec with one model per run of its sweep and seeds (`plain`: each model's config, for its base seeds);
  without a sweep and with one seed, the spec itself."""
  runs = sweeps.expand([m.name for m in spec.models], dict(spec.sweep), spec.seeds)
  models = []
  for r in runs:
    m = _spec_model(spec, r.model)
    extra = sweeps.overrides(r, plain[m.name].train.seed, plain[m.name].data.seed)
    ref = sweeps.run_name(m.match_flops, r.point, r.seed) if m.match_flops else ""
    budget = int(dict(r.point).get(sweeps.BUDGET_KEY, 0))
    models.append(dataclasses.replace(m, name=r.name, run_set=tuple(extra), match_flops=ref, budget_bytes=budget))
  return dataclasses.replace(spec, models=tuple(models)), runs


def finished(workdir: Path, cfg: Config) -> bool:
  """A run that reached its steps and has its final evaluation on disk."""
  records = read_jsonl(workdir / "metrics.jsonl")
  return any(r["split"] == "valid" and r["step"] == cfg.train.steps for r in records) and (workdir / "checkpoints").is_dir()


def check_sweep(spec: CompareSpec, data_args: list[str], budget_given: bool = False) -> None:
  """One clear line for a sweep that cannot work: a key also set elsewhere, a data key that decides which bytes are
  read, a seed swept while --seeds shifts it, or budgets that are not whole positive numbers of bytes."""
  sweeps.check_unset([k for k, _ in spec.sweep], list(spec.data) + data_args)
  for key, values in spec.sweep:
    if key == sweeps.BUDGET_KEY:
      sweeps.check_budgets(values, budget_given)
    if key.startswith("data.") and key[5:] in DATA_IDENTITY:
      raise UserError(f"--sweep {key}: every run of a comparison reads the same bytes; {key} decides which "
                      "(use --seeds N to vary the order of the training bytes)")
    if key == "train.seed" and spec.seeds > 1:
      raise UserError("--sweep train.seed with --seeds: the seeds already shift train.seed; use one of them")


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


def _tokenizer(out: Path, tok_path: Path, vocab: int, splits, log) -> float:
  """Trains the comparison's BPE tokenizer (or checks the one in `out`); returns its bytes per token on ~4 MB of
  the training split."""
  if tok_path.exists():
    tok = Tokenizer(tok_path)
    if tok.vocab_size != vocab:
      raise UserError(f"{tok_path} has {tok.vocab_size} pieces but the spec asks for {vocab}; "
                      "remove it or use another --out")
  else:
    tok = train_tokenizer(splits.train, vocab, tok_path, log=log)
  lengths = splits.train.lengths
  sample = splits.train.select(np.cumsum(lengths) - lengths < 4_000_000)  # whole leading documents, ~4 MB
  bpt = sample.num_bytes / max(tokenize(sample, tok).num_bytes, 1)
  log(f"tokenizer: {tok_path} ({tok.vocab_size} pieces, {bpt:.3f} bytes per token on the training split)")
  return bpt


def _finite(x: float) -> float | None:
  return x if math.isfinite(x) else None


def run_compare(spec_path: str | Path, out: str | Path | None = None, data_args: list[str] = (),
                progress: bool = True, budget_bytes: int | None = None, sweep: list[str] = (),
                seeds: int | None = None, only: list[str] = (), log=print) -> tuple[Path, list[compare_report.Row]]:
  """Trains (or reuses) every run of the spec, then writes <out>/report.md and report.html; returns report.md
  and the table's rows. `data_args` are KEY=VALUE overrides for every model (after the spec's own); `budget_bytes`
  replaces the spec's; `sweep` ("KEY=V1,V2", repeatable) and `seeds` replace the spec's; `only` trains just these
  models' runs (the report still shows every finished run of the spec)."""
  spec = load_spec(spec_path)
  if budget_bytes is not None:
    spec = dataclasses.replace(spec, budget_bytes=budget_bytes)  # checked again by CompareSpec
  if sweep:
    spec = dataclasses.replace(spec, sweep=tuple(sweeps.parse_sweeps(sweep).items()))
  if seeds is not None:
    spec = dataclasses.replace(spec, seeds=seeds)
  data_args = list(data_args)
  unknown = [n for n in only if n not in {m.name for m in spec.models}]
  if unknown:
    raise UserError(f"--models {','.join(unknown)}: not in spec {spec.name} (its models: "
                    f"{', '.join(m.name for m in spec.models)})")
  check_sweep(spec, data_args, budget_given=budget_bytes is not None)
  out = Path(out or Path("runs") / "compare" / spec.name)
  plain = plain_configs(spec, data_args)
  check_same_data(plain)
  spec, runs = expand_spec(spec, plain)
  plain = plain_configs(spec, data_args)  # each run's own settings validated before anything trains
  check_same_data(plain, runs=runs)
  splits = load_splits(next(iter(plain.values())).data, cache_dir=out / "cache")  # bad data fails before writing
  log(f"data: {splits.description}")
  selected = {r.name for r in runs if not only or r.model in only}
  tok_path, bpt = (out / "tokenizer.model").absolute(), 1.0
  token_runs = {n for n, c in plain.items() if c.model.vocab_size != 256}
  if token_runs and not tok_path.exists() and not token_runs & with_references(spec, selected):
    spec, runs = without(spec, runs, token_runs)  # no tokenizer to train for runs nobody asked for
    log("token models left out: none is selected and no tokenizer was trained in this --out yet")
    token_runs = set()
  if token_runs:
    bpt = _tokenizer(out, tok_path, spec.tokenizer_vocab, splits, log)
  configs, errors = resolve_configs(spec, data_args, str(tok_path) if token_runs else None, bpt, runs, plain)
  for name, cfg in configs.items():  # every saved run, trained now or not, must have read the same bytes
    if (out / name / "config.yaml").exists():
      check_same_data({f"{name} (saved run in {out / name})": read_config(out / name), name: cfg})
  todo = [r.name for r in runs if r.name in selected]
  diverged = []
  for i, name in enumerate(todo, 1):
    cfg, wd = configs[name], out / name
    if finished(wd, cfg):
      log(f"[{i}/{len(todo)}] {name}: finished run in {wd}, reused")
      continue
    log(f"[{i}/{len(todo)}] {name}: {cfg.train.steps} steps x {cfg.train.batch_size} x {cfg.data.seq_len} "
        f"{'tokens' if cfg.data.tokenizer else 'bytes'} in {wd}")
    try:
      train(cfg, wd, progress=progress, log=log, splits=splits)
    except TrainingDiverged as e:  # one bad point (a learning rate too high) does not end the comparison
      log(f"{name} diverged, left out of the report: {e}")
      diverged.append(name)
  done = {name: cfg for name, cfg in configs.items() if finished(out / name, cfg)}
  missing = [n for n in configs if n not in done and n not in diverged]
  if missing:
    log(f"not trained yet (left out of the report): {', '.join(missing)}")
  configs = done
  if not configs:
    raise UserError(f"no finished run to report in {out}" + (f" ({len(diverged)} diverged)" if diverged else ""))
  described = {name: describe_config(read_config(out / name)) for name in configs}  # with the run's documents cap
  rows = [compare_report.collect(name, out / name, cfg, described[name]["params"], bpt, errors.get(name),
                                 described[name]["executed_flops_per_byte"] if cfg.model.num_stages else None)
          for name, cfg in configs.items()]
  swept = dict(spec.sweep)
  budget = (f"training bytes per run: budget_bytes swept over {', '.join(f'{int(b):,}' for b in swept[sweeps.BUDGET_KEY])}"
            if sweeps.BUDGET_KEY in swept else f"budget {spec.budget_bytes:,} training bytes per model")
  notes = [f"spec: {spec.name}; {budget}; valid BPB on every byte of "
           f"{splits.valid.num_bytes:,} valid bytes ({len(splits.valid)} documents), identical for every model",
           f"data: {splits.description}"]
  if token_runs:
    notes.append(f"BPE tokenizer: {spec.tokenizer_vocab} pieces trained on the training split, {bpt:.3f} bytes/token")
  notes.append("train FLOPs/byte use the measured chunk ratio (H-Net) or bytes per token (BPE) on the valid split; "
               "models marked 'sized to match' were resized before training at the reference's target ratio")
  notes.append("executed FLOPs/byte: what an H-Net's static shapes compute (every chunk slot of every stage, with the "
               "run's documents-per-window cap), and its ratio to the FLOPs at the measured chunk ratio")
  if diverged:
    notes.append(f"diverged (training stopped on a non-finite loss; not in the tables): {', '.join(diverged)}")
  if missing:
    notes.append(f"{len(missing)} of {len(runs)} runs not trained yet: {', '.join(missing)}")
  reference = spec.efficiency_reference
  if reference and reference not in configs:
    notes.append(f"data efficiency against {reference} left out: no finished run of that name")
    reference = ""
  summary = []
  (out / "sweep.png").unlink(missing_ok=True)  # a plot from an earlier sweep must not stand for this one
  if spec.sweep or spec.seeds > 1:
    summaries, summary = sweeps.report(runs, {r.name: r.valid_bpb for r in rows},
                                       {r.name: r.flops_per_byte for r in rows}, swept, spec.seeds, out / "sweep.png")
    (out / "summary.json").write_text(json.dumps(
        [{"model": s.model, "point": dict(s.point), "valid_bpb": [_finite(v) for v in s.bpbs], "mean": _finite(s.mean),
          "std": _finite(s.std), "seeds": len(s.bpbs)} for s in summaries], indent=1, allow_nan=False) + "\n")
  md, page = compare_report.write(out, f"Comparison: {spec.name}", rows, notes, reference, summary)
  log(f"report: {md} and {page}")
  return md, rows

