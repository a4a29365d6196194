"""`chunklm mrt5 train | eval | bench | compare`: the MrT5 encoder-decoder (`chunklm.seq2seq`,
`chunklm.experiments.mrt5_compare`)."""

from __future__ import annotations

from pathlib import Path

from chunklm.cli.output import write_json
from chunklm.errors import UserError
from chunklm.experiments.mrt5_compare import run_mrt5_compare
from chunklm.run.workdir import RunDir
from chunklm.seq2seq.bench import bench_encoder
from chunklm.seq2seq.trainer import eval_mrt5_run, load_mrt5_config, train_mrt5


def _print_eval(res: dict) -> None:
  print(
    f"bits per target byte : {res['bits_per_target_byte']:.4f} with hard deletion "
    f"({res['bits_per_target_byte_soft']:.4f} soft)"
  )
  print(
    f"deletion rate        : {res['deletion_rate']:.3f} of the input positions "
    f"(encoder slots after the gate: {res['encoder_slots_per_input']:.2f} of the input length)"
  )
  if "exact_match" in res:
    print(f"exact match          : {res['exact_match']:.3f}")
  if res.get("deleted_by_class"):
    print(
      "deleted by byte class: "
      + ", ".join(
        f"{name} {c['deletion_rate']:.3f} ({c['share_of_deleted']:.0%} of deleted)"
        for name, c in res["deleted_by_class"].items()
      )
    )


def train(args) -> int:
  cfg = load_mrt5_config(args.config, args.overrides)
  res = train_mrt5(cfg, args.workdir, progress=not args.no_progress)
  _print_eval(res)
  run = RunDir(args.workdir)
  print(f"run: {run} ({run.metrics.name}, {run.eval_json.name}, {run.checkpoints.name}/)")
  write_json(args.json, res)
  return 0


def compare(args) -> int:
  if not args.out:
    raise UserError("mrt5 compare: --out DIR is required (the runs and report.md go there)")
  _, rows = run_mrt5_compare(
    args.config,
    args.overrides,
    args.sweep,
    args.seeds,
    args.out,
    bench_repeats=args.bench_repeats,
    progress=not args.no_progress,
  )
  write_json(args.json, [{k: v for k, v in r.items() if k != "cells"} for r in rows])
  return 0


def evaluate(args) -> int:
  res = eval_mrt5_run(args.workdir, args.batch_size, progress=not args.no_progress)
  _print_eval(res)
  write_json(args.json, res)
  return 0


def bench(args) -> int:
  rows = [bench_encoder(w, args.batch_size, args.repeats) for w in args.workdir]
  print(f"{'run':<28} {'delta':>5} {'deleted':>7} {'slots':>5} {'hard B/s':>10} {'full B/s':>10} {'speed-up':>8}")
  for r in rows:
    print(
      f"{Path(r['workdir']).name:<28} {r['target_deletion']:>5.2f} {r['deletion_rate']:>7.3f} "
      f"{r['slots_per_input']:>5.2f} {r['hard_bytes_per_s']:>10,.0f} {r['full_bytes_per_s']:>10,.0f} "
      f"{r['hard_bytes_per_s'] / r['full_bytes_per_s']:>7.2f}x"
    )
  if len(rows) > 1:
    print(
      f"hard-deletion encoder bytes/s, last / first run: "
      f"{rows[-1]['hard_bytes_per_s'] / rows[0]['hard_bytes_per_s']:.2f}x"
    )
  write_json(args.json, rows)
  return 0
