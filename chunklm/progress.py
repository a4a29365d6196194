"""Progress that reads well on a terminal and in a log file.

On a terminal a bar redraws in place; off one (CI logs, nohup, SLURM) carriage returns would make one endless line,
so every long job writes a plain line every `every()` seconds instead: 15 by default, `$CHUNKLM_PROGRESS_EVERY` or
`--progress-every` to change it.
"""

from __future__ import annotations

import math
import os
import sys

from tqdm import tqdm

from chunklm.errors import UserError

DEFAULT_EVERY = 15.0
_every: float | None = None  # set by --progress-every; else the environment, else the default


def set_every(seconds: float | None) -> None:
  global _every
  if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
    raise UserError(f"--progress-every must be a positive number of seconds, got {seconds}")
  _every = seconds


def every() -> float:
  """Seconds between progress lines when stderr is not a terminal."""
  if _every is not None:
    return _every
  raw = os.environ.get("CHUNKLM_PROGRESS_EVERY", "")
  if not raw:
    return DEFAULT_EVERY
  try:
    seconds = float(raw)
  except ValueError:
    seconds = float("nan")
  if not (math.isfinite(seconds) and seconds > 0):
    raise UserError(f"CHUNKLM_PROGRESS_EVERY={raw!r}: expected a positive number of seconds")
  return seconds


def on_terminal() -> bool:
  return sys.stderr.isatty()


class _Lines:
  """A file for tqdm off a terminal: each redraw becomes one plain line (no carriage returns, no blank redraws)."""

  def __init__(self, stream):
    self.stream = stream

  def write(self, text: str) -> None:
    for piece in text.replace("\r", "\n").split("\n"):
      if piece.strip():
        self.stream.write(piece.rstrip() + "\n")

  def flush(self) -> None:
    self.stream.flush()


def bar(
  iterable=None, *, enabled: bool, desc: str, total: int | None = None, unit: str = "it", leave: bool = False
) -> tqdm:
  """A tqdm bar on stderr: redrawn on a terminal, one line per `every()` seconds elsewhere."""
  term = on_terminal()
  return tqdm(
    iterable,
    total=total,
    disable=not enabled,
    desc=desc,
    unit=unit,
    leave=leave and term,
    file=sys.stderr if term else _Lines(sys.stderr),
    dynamic_ncols=term,
    ncols=None if term else 100,
    mininterval=0.2 if term else every(),
  )
