"""The flags of `chunklm info`."""

from __future__ import annotations

from chunklm.cli import options


def add(sub) -> None:
  p = sub.add_parser(
    "info",
    help="parameters, FLOPs per byte and chunk capacities of a config or a run",
    description="Describe a config (or a run's saved config) without training: parameter count, "
    "training FLOPs per byte (at the target chunk ratios), chunk capacities, per-level LR "
    "multipliers, and trained/frozen counts of a fine-tuning setup.",
  )
  p.set_defaults(body="info")
  options.add_config(p)
  p.add_argument("--workdir", default=None, help="describe this run's saved config instead of --config")
  p.add_argument(
    "--params",
    action="store_true",
    help="also list every parameter: path, shape, named part and whether train.freeze freezes it",
  )
