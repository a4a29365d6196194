"""`chunklm compare`: train and compare the models of a spec (`chunklm.experiments.compare.run_compare`)."""

from __future__ import annotations

import dataclasses

from chunklm.cli.options import config_overrides
from chunklm.cli.output import write_json
from chunklm.errors import UserError
from chunklm.experiments.compare import run_compare


def run(args) -> int:
  if args.budget_bytes is not None and args.budget_bytes <= 0:
    raise UserError(f"--budget-bytes must be positive, got {args.budget_bytes}")
  if args.eval_max_bytes is not None and args.eval_max_bytes < 0:
    raise UserError(f"--eval-max-bytes must be >= 0 (0 = the whole valid split), got {args.eval_max_bytes}")
  if args.seeds is not None and args.seeds < 1:
    raise UserError(f"--seeds must be at least 1, got {args.seeds}")
  _, rows = run_compare(
    args.spec,
    args.out,
    config_overrides(args),
    progress=not args.no_progress,
    budget_bytes=args.budget_bytes,
    sweep=args.sweep,
    seeds=args.seeds,
    only=[m.strip() for m in args.models.split(",") if m.strip()],
    eval_max_bytes=args.eval_max_bytes,
  )
  write_json(args.json, [dataclasses.asdict(r) for r in rows])
  return 0
