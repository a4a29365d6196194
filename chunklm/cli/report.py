"""`chunklm report`: an HTML page of one or more runs (`chunklm.eval.run_report.run_report`)."""

from __future__ import annotations

from pathlib import Path

from chunklm.errors import UserError
from chunklm.eval.run_report import run_report


def run(args) -> int:
  if args.samples < 0:
    raise UserError("--samples must be >= 0")
  run_report([Path(w) for w in args.workdir], Path(args.out) if args.out else None, args.samples, seed=args.seed)
  return 0
