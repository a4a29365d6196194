"""`chunklm compare`: train several models on the same bytes with the same byte budget, evaluate them on the same
valid bytes, and report (table + plots).

A spec (compare_spec.py) names the models, compare_configs.py makes their configs. Every model gets the spec's data settings, trains for
ceil(budget_bytes / bytes per step) steps in <out>/<model>/, and is evaluated along the way on the same leading valid
bytes and at the end on all of them. Re-running resumes unfinished runs and reuses finished ones, after checking
they were trained on the same data. A token model's BPE tokenizer is trained once, on the training split, in <out>/.
A spec (or the command line) may sweep config fields and repeat every run over seeds (experiments/sweep.py); the
report then adds mean ± spread over seeds and each model's best point. Sweeping `budget_bytes` (the spec's own
field, e.g. --sweep budget_bytes=2500000,10000000) trains every model at each budget and reports budget curves.

A run of the comparison: `prepare` (spec, runs, data, tokenizer, every run's final config, all checked before
anything trains), `train_runs`, then `report`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from chunklm.config import Config
from chunklm.data.corpus import Splits, load_splits
from chunklm.data.tokenizer import Tokenizer, tokenize, train_tokenizer
from chunklm.errors import UserError
from chunklm.experiments import compare_report
from chunklm.experiments import sweep as sweeps
from chunklm.experiments.compare_configs import check_same_data, check_sweep, plain_configs, resolve_configs
from chunklm.experiments.compare_spec import (
  CompareSpec,
  expand_spec,
  load_spec,
  with_cli,
  with_eval_bytes,
  with_references,
  without,
)
from chunklm.model.describe import describe_config
from chunklm.run.metrics import read_jsonl
from chunklm.run.trained import read_config
from chunklm.run.workdir import RunDir
from chunklm.storage.paths import local_path
from chunklm.train.signals import Preempted, StopFlag
from chunklm.train.trainer import TrainingDiverged, train


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A comparison ready to train: everything that can be refused is checked before the first run starts."""

  spec: CompareSpec  # one model per run (sweep points and seeds expanded)
  runs: list[sweeps.Run]
  out: Path
  splits: Splits  # the bytes every run trains and is evaluated on
  configs: dict[str, Config]  # each run's final config (data, budget, FLOPs matching applied)
  match_errors: dict[str, float]  # FLOPs matching's residual error per resized run
  todo: list[str]  # the runs to train now (--models), in order
  bytes_per_token: float  # of the comparison's tokenizer; 1.0 without token models
  tokenized: bool  # whether token models take part (and the tokenizer in <out>/ is theirs)


def finished(workdir: Path, cfg: Config) -> bool:
  """A run that reached its steps and has its final evaluation on disk."""
  run = RunDir(workdir)
  records = read_jsonl(run.metrics)
  return any(r["split"] == "valid" and r["step"] == cfg.train.steps for r in records) and run.checkpoints.is_dir()


def _tokenizer(tok_path: Path, vocab: int, splits: Splits, log) -> float:
  """Trains the comparison's BPE tokenizer (or checks the one in `out`); returns its bytes per token on ~4 MB of
  the training split."""
  if tok_path.exists():
    tok = Tokenizer(tok_path)
    if tok.vocab_size != vocab:
      raise UserError(
        f"{tok_path} has {tok.vocab_size} pieces but the spec asks for {vocab}; remove it or use another --out"
      )
  else:
    tok = train_tokenizer(splits.train, vocab, tok_path, log=log)
  lengths = splits.train.lengths
  sample = splits.train.select(np.cumsum(lengths) - lengths < 4_000_000)  # whole leading documents, ~4 MB
  bpt = sample.num_bytes / max(tokenize(sample, tok).num_bytes, 1)
  log(f"tokenizer: {tok_path} ({tok.vocab_size} pieces, {bpt:.3f} bytes per token on the training split)")
  return bpt


def _finite(x: float) -> float | None:
  return x if math.isfinite(x) else None


def prepare(
  spec: CompareSpec, out: Path, data_args: list[str], only: list[str], budget_given: bool, log=print
) -> Prepared:
  """Every run's final config, checked before anything trains: the same bytes for every run (saved runs
  included), the data readable, the tokenizer trained when a selected run (or its FLOPs reference) needs it."""
  check_sweep(spec, data_args, budget_given=budget_given)
  plain = plain_configs(spec, data_args)
  check_same_data(plain)
  spec, runs = expand_spec(spec, plain)
  plain = plain_configs(spec, data_args)  # each run's own settings validated before anything trains
  check_same_data(plain, runs=runs)
  splits = load_splits(next(iter(plain.values())).data, cache_dir=RunDir(out).cache)  # bad data fails before writing
  log(f"data: {splits.description}")
  selected = {r.name for r in runs if not only or r.model in only}
  tok_path, bpt = RunDir(out).tokenizer.absolute(), 1.0
  token_runs = {n for n, c in plain.items() if c.model.is_token_model}
  if token_runs and not tok_path.exists() and not token_runs & with_references(spec, selected):
    spec, runs = without(spec, runs, token_runs)  # no tokenizer to train for runs nobody asked for
    log("token models left out: none is selected and no tokenizer was trained in this --out yet")
    token_runs = set()
  if token_runs:
    bpt = _tokenizer(tok_path, spec.tokenizer_vocab, splits, log)
  configs, errors = resolve_configs(spec, data_args, str(tok_path) if token_runs else None, bpt, runs, plain)
  for name, cfg in configs.items():  # every saved run, trained now or not, must have read the same bytes
    if RunDir(out / name).config.exists():
      check_same_data({f"{name} (saved run in {out / name})": read_config(out / name), name: cfg})
  return Prepared(
    spec, runs, out, splits, configs, errors, [r.name for r in runs if r.name in selected], bpt, bool(token_runs)
  )


def train_runs(prep: Prepared, progress: bool = True, log=print) -> list[str]:
  """Trains the runs to do (a finished one is reused); returns those that diverged. SIGTERM stops the whole
  comparison: the run training then saves a checkpoint (as `chunklm train` does) and `Preempted` is raised (exit
  143) before the next run starts; the same command resumes it."""
  diverged = []
  with StopFlag() as stop:  # between runs (and while a run evaluates at its end) SIGTERM only raises this flag
    for i, name in enumerate(prep.todo, 1):
      cfg, wd = prep.configs[name], prep.out / name
      if finished(wd, cfg):
        log(f"[{i}/{len(prep.todo)}] {name}: finished run in {wd}, reused")
        continue
      if stop.set:
        raise Preempted(f"received SIGTERM: stopped before {name}; re-run the same command to resume the comparison")
      log(
        f"[{i}/{len(prep.todo)}] {name}: {cfg.train.steps} steps x {cfg.train.batch_size} x {cfg.data.seq_len} "
        f"{'tokens' if cfg.data.tokenizer else 'bytes'} in {wd}"
      )
      try:
        result = train(cfg, wd, progress=progress, log=log)
      except TrainingDiverged as e:  # one bad point (a learning rate too high) does not end the comparison
        log(f"{name} diverged, left out of the report: {e}")
        diverged.append(name)
        continue
      if result.signalled or stop.set:
        raise Preempted(
          f"received SIGTERM: {name} saved its checkpoint at step {result.run.step}; "
          "re-run the same command to resume the comparison"
        )
  return diverged


def report(prep: Prepared, diverged: list[str], log=print) -> tuple[Path, list[compare_report.Row]]:
  """report.md and report.html of every finished run of the spec (trained now or before); returns report.md and
  the table's rows."""
  spec, out = prep.spec, prep.out
  done = {name: cfg for name, cfg in prep.configs.items() if finished(out / name, cfg)}
  missing = [n for n in prep.configs if n not in done and n not in diverged]
  if missing:
    log(f"not trained yet (left out of the report): {', '.join(missing)}")
  if not done:
    raise UserError(f"no finished run to report in {out}" + (f" ({len(diverged)} diverged)" if diverged else ""))
  described = {name: describe_config(read_config(out / name)) for name in done}  # with the run's documents cap
  rows = [
    compare_report.collect(
      name,
      out / name,
      cfg,
      described[name]["params"],
      prep.bytes_per_token,
      prep.match_errors.get(name),
      described[name]["executed_flops_per_byte"] if cfg.model.num_stages else None,
    )
    for name, cfg in done.items()
  ]
  notes = _notes(prep, diverged, missing)
  reference = spec.efficiency_reference
  if reference and reference not in done:
    notes.append(f"data efficiency against {reference} left out: no finished run of that name")
    reference = ""
  md, page = compare_report.write(out, f"Comparison: {spec.name}", rows, notes, reference, _summary(prep, rows))
  log(f"report: {md} and {page}")
  return md, rows


def _notes(prep: Prepared, diverged: list[str], missing: list[str]) -> list[str]:
  """The report's notes: what was compared on which bytes, and what is left out."""
  spec, splits, swept = prep.spec, prep.splits, dict(prep.spec.sweep)
  if sweeps.BUDGET_KEY in swept:
    budgets = ", ".join(f"{int(b):,}" for b in swept[sweeps.BUDGET_KEY])
    budget = f"training bytes per run: budget_bytes swept over {budgets}"
  else:
    budget = f"budget {spec.budget_bytes:,} training bytes per model"
  valid = f"{splits.valid.num_bytes:,} valid bytes ({len(splits.valid)} documents)"
  if 0 < spec.final_eval_max_bytes < splits.valid.num_bytes:
    valid = f"the first {spec.final_eval_max_bytes:,} of {valid}"
  else:
    valid = f"every byte of {valid}"
  notes = [
    f"spec: {spec.name}; {budget}; valid BPB on {valid}, identical for every model",
    f"data: {splits.description}",
  ]
  if prep.tokenized:
    notes.append(
      f"BPE tokenizer: {spec.tokenizer_vocab} pieces trained on the training split, "
      f"{prep.bytes_per_token:.3f} bytes/token"
    )
  notes.append(
    "train FLOPs/byte use the measured chunk ratio (H-Net) or bytes per token (BPE) on the valid split; "
    "models marked 'sized to match' were resized before training at the reference's target ratio"
  )
  notes.append(
    "executed FLOPs/byte: what an H-Net's static shapes compute (every chunk slot of every stage, with the "
    "run's documents-per-window cap), and its ratio to the FLOPs at the measured chunk ratio"
  )
  if diverged:
    notes.append(f"diverged (training stopped on a non-finite loss; not in the tables): {', '.join(diverged)}")
  if missing:
    notes.append(f"{len(missing)} of {len(prep.runs)} runs not trained yet: {', '.join(missing)}")
  return notes


def _summary(prep: Prepared, rows: list[compare_report.Row]) -> list[str]:
  """With a sweep or several seeds: the summary's markdown lines, sweep.png and summary.json (mean and spread of
  each model and point over seeds); else nothing."""
  spec, out = prep.spec, prep.out
  (out / "sweep.png").unlink(missing_ok=True)  # a plot from an earlier sweep must not stand for this one
  if not spec.sweep and spec.seeds == 1:
    return []
  summaries, lines = sweeps.report(
    prep.runs,
    {r.name: r.valid_bpb for r in rows},
    {r.name: r.flops_per_byte for r in rows},
    dict(spec.sweep),
    spec.seeds,
    out / "sweep.png",
  )
  (out / "summary.json").write_text(
    json.dumps(
      [
        {
          "model": s.model,
          "point": dict(s.point),
          "valid_bpb": [_finite(v) for v in s.bpbs],
          "mean": _finite(s.mean),
          "std": _finite(s.std),
          "seeds": len(s.bpbs),
        }
        for s in summaries
      ],
      indent=1,
      allow_nan=False,
    )
    + "\n"
  )
  return lines


def run_compare(
  spec_path: str | Path,
  out: str | Path | None = None,
  data_args: Sequence[str] = (),
  progress: bool = True,
  budget_bytes: int | None = None,
  sweep: Sequence[str] = (),
  seeds: int | None = None,
  only: Sequence[str] = (),
  log=print,
  eval_max_bytes: int | None = None,
) -> tuple[Path, list[compare_report.Row]]:
  """Trains (or reuses) every run of the spec, then writes <out>/report.md and report.html; returns report.md
  and the table's rows. `data_args` are KEY=VALUE overrides for every model (after the spec's own); `budget_bytes`
  replaces the spec's; `sweep` ("KEY=V1,V2", repeatable) and `seeds` replace the spec's; `only` trains just these
  models' runs (the report still shows every finished run of the spec); `eval_max_bytes`: leading valid bytes of
  every evaluation (`with_eval_bytes`: a quick trial's default is bounded)."""
  spec = with_cli(load_spec(spec_path), budget_bytes, list(sweep), seeds, list(only))
  spec = with_eval_bytes(spec, eval_max_bytes, budget_bytes)
  out = local_path(out or Path("runs") / "compare" / spec.name, "--out", "compare")
  prep = prepare(spec, out, list(data_args), list(only), budget_given=budget_bytes is not None, log=log)
  diverged = train_runs(prep, progress, log)
  return report(prep, diverged, log)
