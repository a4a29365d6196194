"""`chunklm mrt5 compare`: MrT5 runs of one config at several settings (typically the deletion target δ), trained on
the same data, evaluated with hard deletion and timed, in one table.

Every run is `chunklm mrt5 train` in <out>/<run name> (re-running resumes unfinished runs and reuses finished ones,
whose eval.json holds the final evaluation), then `chunklm mrt5 bench` on its held-out windows. The report
(report.md, summary.json, sweep.png) gives per run: the target and the deletion rate reached (and whether it is within
±5 points of the target), bits per target byte with hard deletion (and soft), exact-match accuracy for seq2seq
tasks, encoder slots after the gate, and encoder bytes/s with hard deletion against the same encoder at full length;
then, as for `chunklm compare`, mean ± std over seeds and the best setting, and the hard-deletion encoder speed of the
highest target against δ = 0 when both are in the sweep.
"""

from __future__ import annotations

import json
from pathlib import Path

from chunklm.errors import UserError
from chunklm.experiments import sweep as sweeps
from chunklm.run.metrics import read_jsonl
from chunklm.run.workdir import RunDir
from chunklm.seq2seq.bench import bench_encoder
from chunklm.seq2seq.trainer import check_same_run, load_mrt5_config, train_mrt5
from chunklm.storage.paths import local_path

TARGET_KEY = "mrt5.target_deletion"
TRACK_POINTS = 0.05  # the acceptance: the deletion rate within ±5 points of its target
HEADER = (
  "run",
  "target δ",
  "deleted",
  "within ±5 pts",
  "bits/target byte (hard)",
  "(soft)",
  "exact match",
  "encoder slots",
  "hard enc. bytes/s",
  "full enc. bytes/s",
  "speed-up",
)


def _finished(workdir: Path, steps: int) -> bool:
  run = RunDir(workdir)
  return run.eval_json.exists() and any(r.get("step") == steps for r in read_jsonl(run.metrics))


def _cells(name: str, cfg, res: dict, bench: dict) -> list[str]:
  target, deleted = cfg.mrt5.target_deletion, res["deletion_rate"]
  em = f"{res['exact_match']:.3f}" if "exact_match" in res else "–"
  return [
    name,
    f"{target:.2f}",
    f"{deleted:.3f}",
    "yes" if abs(deleted - target) <= TRACK_POINTS else "no",
    f"{res['bits_per_target_byte']:.4f}",
    f"{res['bits_per_target_byte_soft']:.4f}",
    em,
    f"{res['encoder_slots_per_input']:.2f}",
    f"{bench['hard_bytes_per_s']:,.0f}",
    f"{bench['full_bytes_per_s']:,.0f}",
    f"{bench['hard_bytes_per_s'] / bench['full_bytes_per_s']:.2f}x",
  ]


def run_mrt5_compare(
  config: str,
  overrides: list[str],
  sweep: list[str],
  seeds: int,
  out: str | Path,
  *,
  bench_repeats: int = 3,
  progress: bool = True,
  log=print,
) -> tuple[Path, list[dict]]:
  """Trains (or reuses) a run per sweep point and seed, benches each, writes <out>/report.md; returns it and the
  rows (config settings, final evaluation, encoder timing)."""
  if not sweep:
    raise UserError("mrt5 compare: give at least one --sweep KEY=V1,V2,..., e.g. mrt5.target_deletion=0,0.5,0.7")
  if seeds < 1 or bench_repeats < 1:
    raise UserError(f"mrt5 compare: --seeds and --bench-repeats must be at least 1, got {seeds} and {bench_repeats}")
  swept = sweeps.parse_sweeps(sweep)
  sweeps.check_unset(swept, overrides)
  base = load_mrt5_config(config, overrides)
  model = Path(config).stem
  runs = sweeps.expand([model], swept, seeds)
  cfgs = {
    r.name: load_mrt5_config(config, list(overrides) + sweeps.overrides(r, base.train.seed, base.data.seed))
    for r in runs
  }  # every setting checked before anything trains
  out = local_path(out, "--out", "mrt5 compare")
  rows = []
  for i, r in enumerate(runs, 1):
    cfg, wd = cfgs[r.name], out / r.name
    check_same_run(wd, cfg, "give another --out")  # a finished run of other settings is not reused (nor resumed)
    if _finished(wd, cfg.train.steps):
      log(f"[{i}/{len(runs)}] {r.name}: finished run in {wd}, reused")
      res = json.loads(RunDir(wd).eval_json.read_text())
    else:
      log(f"[{i}/{len(runs)}] {r.name}: {cfg.train.steps} steps in {wd}")
      res = train_mrt5(cfg, wd, progress=progress, log=log)
    bench = bench_encoder(wd, repeats=bench_repeats)
    rows.append(
      {
        "name": r.name,
        "point": dict(r.point),
        "seed": r.seed,
        "target_deletion": cfg.mrt5.target_deletion,
        **res,
        "bench": bench,
        "cells": _cells(r.name, cfg, res, bench),
      }
    )
  summaries = sweeps.summarise(runs, {row["name"]: row["bits_per_target_byte"] for row in rows})
  md = _write(out, config, rows, summaries, swept, seeds)
  log(f"report: {md}")
  return md, rows


def _speedup_line(rows: list[dict]) -> str:
  """Hard-deletion encoder bytes/s of the highest target over δ = 0 within each group of runs that differ only in
  the target (same seed, so the same data order, and the same other swept settings), against the goal of 2x; ""
  without a δ = 0 run beside a higher target."""
  targets = {r["target_deletion"] for r in rows}
  if 0 not in targets or max(targets) == 0:
    return ""
  top = max(targets)
  groups: dict[tuple, dict] = {}
  for r in rows:
    if r["target_deletion"] in (0, top):
      others = tuple((k, v) for k, v in r["point"].items() if k != TARGET_KEY)
      groups.setdefault((others, r["seed"]), {})[r["target_deletion"]] = r
  parts, reached = [], 0
  for (others, seed), pair in groups.items():
    if len(pair) < 2:
      continue
    ratio = pair[top]["bench"]["hard_bytes_per_s"] / pair[0]["bench"]["hard_bytes_per_s"]
    reached += ratio >= 2
    label = ", ".join([*(f"{k}={v}" for k, v in others), f"seed {seed}"])
    parts.append(
      f"**{ratio:.2f}x** ({label}; deleted {pair[top]['deletion_rate']:.3f} vs {pair[0]['deletion_rate']:.3f})"
    )
  if not parts:
    return ""
  verdict = (
    "reached"
    if reached == len(parts)
    else "not reached"
    if not reached
    else f"reached in {reached} of {len(parts)} pairs"
  )
  return f"- encoder bytes/s with hard deletion, δ = {top:.2f} over δ = 0: {', '.join(parts)}; goal ≥ 2x: {verdict}"


def _write(out: Path, config: str, rows: list[dict], summaries, swept: dict, seeds: int) -> Path:
  out.mkdir(parents=True, exist_ok=True)
  lines = [
    f"# MrT5 comparison: {config}",
    "",
    "- every run: the same config and data but for the swept settings; evaluation on the held-out windows "
    "with hard deletion (each batch compacted into the smallest bucket that holds it)",
    "- encoder bytes/s: median of timed passes over those windows, hard deletion vs the same encoder at "
    "full length, on this machine",
    "",
    "| " + " | ".join(HEADER) + " |",
    "|" + "---|" * len(HEADER),
  ]
  lines += ["| " + " | ".join(r["cells"]) + " |" for r in rows]
  speed = _speedup_line(rows)
  lines += [
    "",
    *([speed] if speed else []),
    "",
    "## Over seeds and sweep points (bits per target byte, hard deletion)",
    "",
    *sweeps.lines(summaries, swept, seeds, metric="bits per target byte"),
  ]
  png = sweeps.plot(summaries, swept, out / "sweep.png", ylabel="bits per target byte (hard deletion)")
  if png:
    lines += ["", f"![bits per target byte vs the swept value]({Path(str(png)).name})"]
  md = out / "report.md"
  md.write_text("\n".join(lines) + "\n")
  (out / "summary.json").write_text(
    json.dumps([{k: v for k, v in r.items() if k != "cells"} for r in rows], indent=1, default=str) + "\n"
  )
  return md
