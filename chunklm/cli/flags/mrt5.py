"""The flags of `chunklm mrt5`: the MrT5 byte encoder-decoder (train, eval, encoder benchmark)."""

from __future__ import annotations

from chunklm.cli import options


def add(sub) -> None:
  """Adds `mrt5` to the subcommand action `sub`."""
  p = sub.add_parser(
    "mrt5",
    help="MrT5: a byte encoder-decoder whose encoder learns to delete positions",
    description="Train and evaluate MrT5 (Kallini et al.): the delete gate after mrt5.gate_layer "
    "encoder blocks removes positions (soft in training, hard at evaluation), a PI "
    "controller holds the deletion rate at mrt5.target_deletion. Objectives: ByT5 "
    'span corruption of a corpus (data.*), or JSONL {"input", "target"} tasks '
    "(seq2seq.objective=seq2seq, e.g. from scripts/make_mrt5_tasks.py).",
  )
  msub = p.add_subparsers(dest="mrt5", required=True, metavar="WHAT")
  for add_one in (_add_train, _add_eval, _add_bench, _add_compare):
    add_one(msub)


def _add_train(msub) -> None:
  m = msub.add_parser(
    "train",
    help="train (or resume) an MrT5 run, then evaluate it",
    description="Train an MrT5 run in --workdir (re-running resumes exactly), then report bits "
    "per target byte, the deletion rate with hard deletion and, for seq2seq tasks, "
    "exact-match accuracy.",
  )
  m.set_defaults(body="mrt5 train")
  m.add_argument(
    "--config", default="mrt5_tiny", help="a config file or bundled name (mrt5_tiny, mrt5_S; default: %(default)s)"
  )
  m.add_argument("--workdir", required=True, help="the run's directory")
  options.add_set(m, "config override, e.g. mrt5.target_deletion=0.7 (repeatable)")
  options.add_output(m, json_what="the final evaluation")
  options.add_progress(m)


def _add_eval(msub) -> None:
  m = msub.add_parser("eval", help="bits per target byte, deletion rate and accuracy of a trained MrT5 run")
  m.set_defaults(body="mrt5 eval")
  m.add_argument("--workdir", required=True, help="the run")
  m.add_argument("--batch-size", type=int, default=16, help="default: %(default)s")
  options.add_output(m, json_what="the figures")
  options.add_progress(m)


def _add_bench(msub) -> None:
  m = msub.add_parser(
    "bench",
    help="encoder bytes/s with hard deletion vs no deletion, per run",
    description="Encoder throughput of each run on its held-out windows: hard deletion (later "
    "blocks on the kept positions, bucketed) against the same encoder at full length; "
    "with several runs, the last run's hard-deletion bytes/s over the first's.",
  )
  m.set_defaults(body="mrt5 bench")
  m.add_argument("--workdir", action="append", required=True, help="an MrT5 run (repeatable)")
  m.add_argument("--batch-size", type=int, default=16, help="default: %(default)s")
  m.add_argument("--repeats", type=int, default=5, help="timed passes (median; default: %(default)s)")
  options.add_output(m, json_what="the rows")


def _add_compare(msub) -> None:
  m = msub.add_parser(
    "compare",
    help="train, evaluate and time MrT5 runs at several settings (e.g. deletion targets)",
    description="Train (or reuse) one MrT5 run per value of each --sweep key (a grid) and seed in "
    "--out, on the same data; evaluate each with hard deletion and time its encoder; "
    "write report.md (deletion reached vs target, bits per target byte, exact match, "
    "encoder bytes/s hard vs full), summary.json and sweep.png. Re-running resumes.",
  )
  m.set_defaults(body="mrt5 compare")
  m.add_argument("--config", default="mrt5_tiny", help="a config file or bundled name (default: %(default)s)")
  m.add_argument(
    "--sweep",
    action="append",
    default=[],
    metavar="KEY=V1,V2,...",
    help="values to train at, e.g. mrt5.target_deletion=0,0.5,0.7 (repeatable: a grid; required)",
  )
  m.add_argument(
    "--seeds",
    type=int,
    default=1,
    metavar="N",
    help="runs per value; seed k adds k to train.seed and data.seed (default: %(default)s)",
  )
  m.add_argument(
    "--set",
    dest="overrides",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="config override for every run (repeatable)",
  )
  m.add_argument(
    "--bench-repeats", type=int, default=3, help="timed encoder passes per run (median; default: %(default)s)"
  )
  options.add_output(
    m, "the comparison's directory (required): one run directory per value and seed", json_what="the rows"
  )
  options.add_progress(m)
