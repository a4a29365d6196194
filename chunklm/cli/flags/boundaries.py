"""The flags of `chunklm boundaries`."""

from __future__ import annotations

from chunklm.cli import options


def add(sub) -> None:
  p = sub.add_parser(
    "boundaries",
    help="where an H-Net puts chunk boundaries: pictures and statistics",
    description="Show the chunk boundaries of a trained H-Net on a text (terminal, HTML with the "
    "router's p as a heat strip, PNG), and statistics over a corpus: bytes-per-chunk "
    "histogram per stage, precision/recall against whitespace, word starts and BPE "
    "token starts, the longest and shortest chunks.",
  )
  p.set_defaults(body="boundaries")
  options.add_workdir(p, "a trained H-Net run")
  src = p.add_mutually_exclusive_group()
  src.add_argument("--text", default=None, help="text to draw")
  src.add_argument("--file", default=None, help="file whose first window of bytes to draw")
  p.add_argument("--tokenizer", default="", help="a sentencepiece model to compare boundaries with BPE token starts")
  options.add_run_overrides(p)
  options.add_data(p, "corpus for the statistics (repeatable); default: the run's validation split", valid=False)
  options.add_max_bytes(p, 65536, "leading corpus bytes for the statistics (0 = all)")
  options.add_output(p, "output directory (default: <workdir>/boundaries)", "the statistics")
