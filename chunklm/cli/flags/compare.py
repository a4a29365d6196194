"""The flags of `chunklm compare`: models of a spec on the same bytes, with sweeps and seeds."""

from __future__ import annotations

from chunklm.cli import options


def add(sub) -> None:
  p = sub.add_parser(
    "compare",
    help="train several models on the same bytes and compare them (report + plots)",
    description="Train (or reuse) every model of a comparison spec on the same training bytes with "
    "the same byte budget, evaluate all on the same valid bytes, and write report.md and "
    "report.html with a table and BPB curves vs training bytes and FLOPs. Re-running "
    "resumes where it stopped; SIGTERM stops it after the running model's checkpoint (exit 143).",
  )
  p.set_defaults(body="compare")
  p.add_argument("--spec", required=True, help="comparison spec: a path or a bundled name (configs/compare/)")
  p.add_argument(
    "--budget-bytes",
    type=int,
    default=None,
    metavar="N",
    help="training bytes per model instead of the spec's budget_bytes (e.g. a quick trial run); below "
    "1,000,000 every evaluation reads at most the first 65,536 valid bytes unless --eval-max-bytes says otherwise",
  )
  p.add_argument(
    "--eval-max-bytes",
    type=int,
    default=None,
    metavar="N",
    help="leading valid bytes read by every evaluation of every model, the final one included (eval.max_bytes "
    "and eval.final_max_bytes; 0 = all). Default: the spec's eval_max_bytes during training and the whole valid "
    "split at the end; a --budget-bytes trial below 1,000,000 bytes: 65,536 for all",
  )
  p.add_argument(
    "--sweep",
    action="append",
    default=[],
    metavar="KEY=V1,V2,...",
    help="train every model at each value of a config field, e.g. --sweep train.lr=1e-3,2e-3,4e-3,8e-3 "
    "(repeat for a grid; replaces the spec's sweep); the report adds each model's best value and "
    "sweep.png. --sweep budget_bytes=2500000,10000000 trains at each budget (instead of the spec's "
    "budget_bytes) and reports budget curves (BPB vs training bytes and FLOPs, the gap per "
    "doubling of the data)",
  )
  p.add_argument(
    "--seeds",
    type=int,
    default=None,
    metavar="N",
    help="train every model and sweep point N times (seed k adds k to train.seed and data.seed); the "
    "report adds mean ± std and min-max over seeds (default: the spec's seeds, else 1)",
  )
  p.add_argument(
    "--models",
    default="",
    metavar="NAME,...",
    help="train only these models of the spec (their FLOPs references are still sized); the report "
    "shows every run of the spec that has finished",
  )
  options.add_set(
    p,
    "override a config field of every model, after the spec's own settings (repeatable), e.g. "
    "--set train.lr=1e-3; data.* fields must leave every model on the same bytes",
  )
  options.add_data(
    p, "training data for every model (repeatable; as for train); default: the spec's data, else the built-in corpus"
  )
  options.add_output(p, "output directory (default: runs/compare/<spec name>)", "the result table")
  options.add_progress(p)
