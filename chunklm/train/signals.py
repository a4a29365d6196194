"""SIGTERM (preemption) as a flag the training loops read at each step boundary: they checkpoint and exit cleanly."""

from __future__ import annotations

import signal

from chunklm.errors import UserError

EXIT_CODE = 143  # what a process killed by SIGTERM would return (128 + 15); the CLI returns it after saving


class StopFlag:
  """`with StopFlag() as stop:` ... `if stop.set:` checkpoint and leave. Outside the main thread signals cannot be
  caught, and the flag stays down. Flags nest: one entered inside another (a training loop inside `chunklm
  compare`) starts raised if the outer one already is (a SIGTERM while the run was being set up), and raises the
  outer one with itself."""

  def __init__(self):
    self.set = False
    self._old = None
    self._outer: StopFlag | None = None

  def __enter__(self) -> StopFlag:
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._old = None
    outer = getattr(self._old, "__self__", None)
    if isinstance(outer, StopFlag):
      self._outer, self.set = outer, outer.set
    return self

  def _handle(self, signum, frame) -> None:
    self.set = True
    if self._outer is not None:
      self._outer._handle(signum, frame)

  def __exit__(self, *exc) -> None:
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


class Preempted(UserError):
  """SIGTERM stopped a run after it saved a checkpoint; the same command resumes it. The CLI exits with 143."""

  exit_code = EXIT_CODE
