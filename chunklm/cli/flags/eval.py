"""The flags of `chunklm eval`."""

from __future__ import annotations

from chunklm.cli import options


def add(sub) -> None:
  p = sub.add_parser(
    "eval",
    help="bits per byte of a trained model on some data",
    description="Evaluate the latest checkpoint of a workdir: exact bits per byte over every byte "
    "of the given data (default: the run's validation split).",
  )
  p.set_defaults(body="eval")
  options.add_workdir(p)
  p.add_argument("--batch-size", type=int, default=None, help="windows per batch (default: eval.batch_size)")
  options.add_run_overrides(p)
  options.add_data(
    p,
    "text to evaluate (repeatable; files, directories, .jsonl, FASTA, .gz as for train); default: "
    "the run's validation split",
  )
  options.add_max_bytes(p, 0, "evaluate only the first N bytes (the last document cut at a character; 0 = all)")
  options.add_output(p, json_what="the result (bpb, bytes, routing statistics)")
  options.add_progress(p)
