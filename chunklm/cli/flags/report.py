"""The flags of `chunklm report`."""

from __future__ import annotations

from chunklm.cli import options


def add(sub) -> None:
  p = sub.add_parser(
    "report",
    help="one HTML page per run, or one comparing several",
    description="Write an HTML report of one or more runs, led by its answer: what the run is (the chunklm that "
    "trained it, step, training time, data), the final valid BPB beside the order-0 byte entropy of the same "
    "bytes, train BPB and bytes per chunk per stage; then parameters, loss/BPB and chunk-ratio curves, the "
    "robustness table (if `chunklm robustness` was run there), a boundary picture, generated samples, every "
    "final valid figure and the config (folded).",
  )
  p.set_defaults(body="report")
  options.add_workdir(p, "a trained run (repeatable)", repeatable=True)
  p.add_argument("--samples", type=int, default=2, help="generated samples per run (default: %(default)s)")
  options.add_seed(p, "sampling")
  options.group(p, "output").add_argument(
    "--out",
    default=None,
    metavar="PATH",
    help="HTML file (default: <workdir>/report.html, or runs/report.html for several runs)",
  )
