"""The flags of `chunklm robustness`."""

from __future__ import annotations

from chunklm.cli import options
from chunklm.eval.perturb import PERTURBATIONS


def add(sub) -> None:
  p = sub.add_parser(
    "robustness",
    help="BPB of trained models on clean and character-perturbed text",
    description="Score one or more trained models on clean text and on perturbed copies of it "
    "(case flips, deletions, typos, AntSpeak, ...); every model sees the same bytes. "
    "Prints each model's clean BPB beside its mean increase, absolute and relative (a warning when the clean BPBs "
    "differ so widely that relative increases do not compare), and writes robustness.md, robustness.csv and "
    "robustness.png.",
  )
  p.set_defaults(body="robustness")
  options.add_workdir(p, "a trained run (repeatable)", repeatable=True)
  p.add_argument(
    "--perturbations", default="all", help="comma-separated subset of: " + ", ".join(PERTURBATIONS) + " (default: all)"
  )
  p.add_argument("--strength", type=float, default=0.1, help="probability of touching a character (default: 0.1)")
  options.add_seed(p, "perturbation")
  options.add_run_overrides(p)
  options.add_data(p, "text to evaluate (repeatable); default: the first run's validation split", valid=False)
  options.add_max_bytes(p, 65536, "leading bytes of the text to use (0 = all)")
  options.add_output(p, "output directory (default: the first workdir)", "the scores")
  options.add_progress(p)
