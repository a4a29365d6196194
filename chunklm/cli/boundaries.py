"""`chunklm boundaries`: an H-Net's chunk boundaries on a text and over a corpus (`run_boundaries`)."""

from __future__ import annotations

import os

import numpy as np

from chunklm.cli.output import write_json
from chunklm.errors import UserError
from chunklm.eval.boundary_stats import run_boundaries
from chunklm.storage.objects import reason
from chunklm.storage.paths import location


def run(args) -> int:
  text = os.fsencode(args.text) if args.text is not None else None
  if args.file is not None:
    try:
      text = location(args.file, "--file").read_bytes()
    except OSError as e:
      raise UserError(f"--file {args.file}: {reason(e)}") from None
  result = run_boundaries(
    location(args.workdir, "--workdir"),
    text,
    tuple(args.data),
    args.max_bytes,
    args.tokenizer,
    location(args.out, "--out") if args.out else None,
    tuple(args.overrides),
  )
  write_json(
    args.json,
    {
      f"stage {s}": {
        "chunks": st["chunks"],
        "bytes_per_chunk": st["bytes_per_chunk"],
        "precision": st["precision"],
        "recall": st["recall"],
        "chunks_by_length": np.bincount(st["lengths"]).tolist(),
        "longest": [c.decode("utf-8", "replace") for c in st["longest"]],
        "shortest": [c.decode("utf-8", "replace") for c in st["shortest"]],
      }
      for s, st in result["stats"].items()
    },
  )
  return 0
