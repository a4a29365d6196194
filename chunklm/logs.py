"""Log lines through Python `logging`: the `chunklm` logger, printed as plain lines (warnings on stderr).

Levels: `--quiet` shows warnings and errors only, the default adds what a run is doing (data, model, resume,
checkpoints), `--verbose` adds debug lines. On a multi-host run each line is tagged `[p<i>/<n>]`, and by default
only process 0 prints info and debug lines (so a run's log reads once); warnings, errors and lines logged with
`ALL_PROCESSES` print on every process. The library logs the same way: silence it with
`logging.getLogger("chunklm").setLevel(logging.WARNING)`.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

LOGGER = logging.getLogger("chunklm")
ALL_PROCESSES = {"all_processes": True}  # extra= for a line every process prints (e.g. its own start-up)
Verbosity = Literal["quiet", "normal", "verbose"]
LEVELS: dict[str, int] = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}


class _Console(logging.Handler):
  """Prints info and debug lines on the stdout of the moment, warnings and errors on its stderr (so a redirected or
  captured stream gets them)."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      print(self.format(record), file=sys.stdout if record.levelno < logging.WARNING else sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - logging must never raise into the caller
      self.handleError(record)


class _Processes(logging.Filter):
  """Tags lines with the process on multi-host runs and keeps other processes' info lines quiet by default."""

  def __init__(self):
    super().__init__()
    self.index, self.count, self.every_process = 0, 1, False

  def filter(self, record: logging.LogRecord) -> bool:
    record.process_tag = f"[p{self.index}/{self.count}] " if self.count > 1 else ""
    return (
      self.count == 1
      or self.index == 0
      or self.every_process
      or record.levelno >= logging.WARNING
      or getattr(record, "all_processes", False)
    )


class _Plain(logging.Formatter):
  """The message after the process tag (multi-host runs); warnings and errors name their level (`warning: ...`)."""

  def format(self, record: logging.LogRecord) -> str:
    level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
    return f"{getattr(record, 'process_tag', '')}{level}{super().format(record)}"


_handler = _Console()
_handler.setFormatter(_Plain("%(message)s"))
_processes = _Processes()
_handler.addFilter(_processes)
LOGGER.addHandler(_handler)
LOGGER.setLevel(logging.INFO)
LOGGER.propagate = False


def set_verbosity(verbosity: Verbosity) -> None:
  """The level of the `chunklm` logger: quiet (warnings), normal (info) or verbose (debug, every process)."""
  LOGGER.setLevel(LEVELS[verbosity])
  _processes.every_process = verbosity == "verbose"


def set_process(index: int, count: int) -> None:
  """Which process of how many this is (after `jax.distributed.initialize`), for the tags and the filter."""
  _processes.index, _processes.count = index, count


def info(message: str) -> None:
  """The default `log` callable of the library's long-running functions."""
  LOGGER.info(message)


def warning(message: str) -> None:
  LOGGER.warning(message)


def debug(message: str) -> None:
  LOGGER.debug(message)
