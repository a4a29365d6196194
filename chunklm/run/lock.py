"""One writer per workdir: an OS-level lock held for the life of the process.

`fcntl.flock` on the workdir's lock file (`.lock`, run/workdir.py): the kernel releases it when the process ends in any way (kill -9 included), so a
lock left by a dead process never blocks the next run and needs no cleanup. The file names the holder (command,
pid, host, start time) for the error the second writer gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

from chunklm.errors import UserError
from chunklm.run.workdir import RunDir


class WorkdirBusy(UserError):
  """Another process is writing this workdir."""


@contextlib.contextmanager
def workdir_lock(workdir: Path, what: str = "chunklm train", enabled: bool = True):
  """Holds the workdir's lock inside the block (creating the directory); `enabled=False` is a no-op (processes
  other than 0 of a multi-host run, which share process 0's workdir). A workdir this call created and nothing else
  wrote into is removed again on the way out."""
  if not enabled:
    yield
    return
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"--workdir {workdir} is a file, not a directory")
  created = not workdir.exists()
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create --workdir {workdir}: {e.strerror}") from None
  path = RunDir(workdir).lock
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
      raise WorkdirBusy(f"{workdir} is in use by {holder}; wait for it to finish or use another --workdir") from None
    stamp = f"{what} (pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})"
    os.ftruncate(fd, 0)
    os.pwrite(fd, stamp.encode(), 0)
    try:
      yield
    finally:
      os.ftruncate(fd, 0)
      if created and list(workdir.iterdir()) == [path]:  # e.g. bad data: leave nothing behind
        path.unlink()
        workdir.rmdir()
  finally:
    os.close(fd)  # closing the descriptor releases the lock
