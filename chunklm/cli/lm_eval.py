"""`chunklm lm-eval`: harness tasks on a trained run (`chunklm.eval.harness_run.run_tasks`), the harness's table
and 95 % intervals printed, and each noisy task's paired accuracy drop."""

from __future__ import annotations

from chunklm.cli.output import write_json
from chunklm.eval.harness_run import interval95, run_tasks, table
from chunklm.storage.paths import location


def run(args) -> int:
  results = run_tasks(
    location(args.workdir, "--workdir"),
    [t.strip() for t in args.tasks.split(",") if t.strip()],
    include_paths=tuple(args.include_path),
    limit=args.limit,
    num_fewshot=args.num_fewshot,
    batch_size=args.batch_size,
    stride=args.stride,
    overrides=tuple(args.overrides),
    seed=args.seed,
    write=not args.no_write,
    progress=not args.no_progress,
  )
  print(table(results))
  for row in interval95(results):
    print(f"{row['task']} {row['metric']}: {row['value']:.4f} (95 % interval {row['low']:.4f} to {row['high']:.4f})")
  for d in results["chunklm"]["noise_drops"]:
    interval = "" if d["low"] is None else f" (95 % interval {d['low']:+.4f} to {d['high']:+.4f})"
    print(
      f"{d['task']}: accuracy {d['noisy']:.4f} vs {d['clean']:.4f} clean on the same {d['n']:,} items, drop "
      f"{d['drop']:+.4f}{interval}"
    )
  write_json(args.json, results)
  return 0
