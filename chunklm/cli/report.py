"""`chunklm report`: an HTML page of one or more runs (`chunklm.eval.run_report.run_report`)."""

from __future__ import annotations

from chunklm.errors import UserError
from chunklm.eval.run_report import run_report
from chunklm.storage.paths import location


def run(args) -> int:
  if args.samples < 0:
    raise UserError("--samples must be >= 0")
  run_report(
    [location(w, "--workdir") for w in args.workdir],
    location(args.out, "--out") if args.out else None,
    args.samples,
    seed=args.seed,
  )
  return 0
