"""SIGTERM (preemption) as a flag the training loops read at each step boundary: they checkpoint and exit cleanly."""

from __future__ import annotations

import signal

from chunklm.errors import UserError

EXIT_CODE = 143  # what a process killed by SIGTERM would return (128 + 15); the CLI returns it after saving


class StopFlag:
  """`with StopFlag() as stop:` ... `if stop.set:` checkpoint and leave. Outside the main thread signals cannot be
  caught, and the flag stays down."""

  def __init__(self):
    self.set = False
    self._old = None

  def __enter__(self) -> StopFlag:
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._old = None
    return self

  def _handle(self, signum, frame) -> None:
    self.set = True

  def __exit__(self, *exc) -> None:
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


class Preempted(UserError):
  """SIGTERM stopped a run after it saved a checkpoint; the same command resumes it. The CLI exits with 143."""

  exit_code = EXIT_CODE
