"""One writer per workdir, held for the life of the process: an OS lock on a local disk, a lease on object storage.

Local: `fcntl.flock` on the workdir's lock file (`.lock`, run/workdir.py): the kernel releases it when the process
ends in any way (kill -9 included), so a lock left by a dead process never blocks the next run and needs no cleanup.
The file names the holder (command, pid, host, start time) for the error the second writer gets.

Object storage (`gs://`): the same `.lock` name holds a lease object (run/lease.py), created only if absent, renewed
while the process runs and taken over once it lapses.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

from chunklm.errors import UserError
from chunklm.run.lease import Lease, WorkdirBusy
from chunklm.run.workdir import RunDir
from chunklm.storage.objects import check_access
from chunklm.storage.paths import Location, is_remote, location

__all__ = ["WorkdirBusy", "workdir_lock"]


class _Held:
  """What `workdir_lock` yields: `check()` raises WorkdirBusy once a lease has been lost (a no-op for a flock,
  which cannot be lost)."""

  def __init__(self, lease: Lease | None = None):
    self.lease = lease

  def check(self) -> None:
    if self.lease is not None:
      self.lease.check()


def _stamp(what: str) -> str:
  return f"{what} (pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})"


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike, what: str = "chunklm train", enabled: bool = True):
  """Holds the workdir's lock inside the block (creating the directory); `enabled=False` is a no-op (processes
  other than 0 of a multi-host run, which share process 0's workdir). A workdir this call created and nothing else
  wrote into is removed again on the way out."""
  if not enabled:
    yield _Held()
    return
  where = location(workdir, "--workdir")
  if is_remote(where):
    with _leased(where, what) as held:
      yield held
  else:
    with _flocked(Path(os.fspath(where)), what) as held:
      yield held


@contextlib.contextmanager
def _leased(workdir: Location, what: str):
  check_access(workdir, "--workdir")
  lease = Lease(RunDir(workdir).lock, workdir, _stamp(what))
  lease.acquire()
  try:
    yield _Held(lease)
  finally:
    lease.release()


@contextlib.contextmanager
def _flocked(workdir: Path, what: str):
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"--workdir {workdir} is a file, not a directory")
  created = not workdir.exists()
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create --workdir {workdir}: {e.strerror}") from None
  path = Path(os.fspath(RunDir(workdir).lock))
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
      raise WorkdirBusy(f"{workdir} is in use by {holder}; wait for it to finish or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, _stamp(what).encode(), 0)
    try:
      yield _Held()
    finally:
      os.ftruncate(fd, 0)
      if created and list(workdir.iterdir()) == [path]:  # e.g. bad data: leave nothing behind
        path.unlink()
        workdir.rmdir()
  finally:
    os.close(fd)  # closing the descriptor releases the lock
