"""`chunklm robustness`: BPB of runs on clean and perturbed text (`chunklm.eval.robustness.run_robustness`)."""

from __future__ import annotations

from chunklm.cli.output import write_json
from chunklm.eval.perturb import PERTURBATIONS
from chunklm.eval.robustness import run_robustness
from chunklm.storage.paths import location


def run(args) -> int:
  names = list(PERTURBATIONS) if args.perturbations == "all" else [p.strip() for p in args.perturbations.split(",")]
  workdirs = [location(w, "--workdir") for w in args.workdir]
  results = run_robustness(
    workdirs,
    tuple(args.data),
    names,
    args.strength,
    args.seed,
    args.max_bytes,
    location(args.out, "--out") if args.out else workdirs[0],
    tuple(args.overrides),
    progress=not args.no_progress,
  )
  write_json(args.json, {"strength": args.strength, "seed": args.seed, "results": results})
  return 0
