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

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from chunklm.errors import UserError
from chunklm.run.lease import Lease, WorkdirBusy
from chunklm.run.workdir import RunDir
from chunklm.storage.objects import check_access
from chunklm.storage.paths import is_remote, location

__all__ = ["WorkdirBusy", "workdir_lock"]


class _Held:
  """What `workdir_lock` yields: `check()` raises WorkdirBusy once a lease has been lost (a flock cannot be)."""

  def __init__(self, lease: Lease | None = None):
    self.lease = lease

  def check(self) -> None:
    """Raises WorkdirBusy when the lease is lost, on every process of a multi-process run (process 0 holds it and
    tells the others: a collective, so every process calls it at the same points, e.g. before each checkpoint)."""
    lost = self.lease.reason_lost() if self.lease is not None else None
    if jax.process_count() > 1:
      if int(multihost_utils.broadcast_one_to_all(np.int32(lost is not None))) and lost is None:
        lost = "process 0 lost it"
    if lost is not None:
      where = self.lease.workdir if self.lease is not None else "the workdir"
      raise WorkdirBusy(f"lost the lease of {where}: {lost}; this run stops without writing more")


def _stamp(what: str) -> str:
  return f"{what} (pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})"


@contextlib.contextmanager
def workdir_lock(
  workdir: str | os.PathLike, what: str = "chunklm train", enabled: bool = True, flag: str = "--workdir"
):
  """Holds the workdir's lock inside the block (creating the directory); `enabled=False` is a no-op (processes
  other than 0 of a multi-host run, which share process 0's workdir). A workdir this call created and nothing else
  wrote into is removed again on the way out. `flag` names the directory in errors."""
  if not enabled:
    yield _Held()
    return
  where = location(workdir, flag)
  if is_remote(where):
    with _leased(where, what) as held:
      yield held
  else:
    with _flocked(Path(os.fspath(where)), what, flag) as held:
      yield held


@contextlib.contextmanager
def _leased(workdir: epath.Path, what: str):
  check_access(workdir, "--workdir")
  lease = Lease(RunDir(workdir).lock, workdir, _stamp(what))
  lease.acquire()
  try:
    yield _Held(lease)
  finally:
    lease.release()


@contextlib.contextmanager
def _flocked(workdir: Path, what: str, flag: str):
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"{flag} {workdir} is a file, not a directory")
  created = not workdir.exists()
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create {flag} {workdir}: {e.strerror}") from None
  path = Path(os.fspath(RunDir(workdir).lock))
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:  # e.g. a read-only mount: the run can be read (eval, generate), not written
    raise UserError(f"cannot write into {flag} {workdir} ({path.name}: {e.strerror}); use another {flag}") from None
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
