"""One writer per workdir on object storage: a lease object, since a bucket has no locks.

The lease is the workdir's `.lock` object, created only if it does not exist (Cloud Storage's `ifGenerationMatch=0`)
and renewed every quarter of its term by a write conditioned on the generation its holder last wrote. A second
trainer finds it and is refused in one line naming the holder, unless the lease has expired (not renewed for
`LEASE_SECONDS`, measured by the server's clock) or was left by a process of this host that is no longer running
(a kill -9 followed by the same command): then it takes the lease over, again by a conditional write, so that of two
trainers racing for it one wins. A holder whose renewal finds another generation has lost the lease; `check()`
says so before its next checkpoint, so it stops instead of writing beside the new holder.

Term: `CHUNKLM_LEASE_SECONDS` (default 60 s) bounds how long a run killed on another host blocks its successor.
"""

from __future__ import annotations

import json
import os
import socket
import threading

from etils import epath

from chunklm import logs
from chunklm.errors import UserError
from chunklm.storage.objects import delete_if, put_if, read_versioned

LEASE_SECONDS = float(os.environ.get("CHUNKLM_LEASE_SECONDS", "60"))


class WorkdirBusy(UserError):
  """Another process is writing this workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class Lease:
  """The lease on `path` (the workdir's `.lock` object), held from `acquire` to `release`."""

  def __init__(self, path: epath.Path, workdir: epath.Path, holder: str, seconds: float = LEASE_SECONDS):
    self.path, self.workdir, self.seconds = path, workdir, seconds
    self.stamp = json.dumps({"holder": holder, "host": socket.gethostname(), "pid": os.getpid(), "seconds": seconds})
    self.generation = 0
    self.lost: str | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def acquire(self) -> None:
    for _ in range(3):  # a lease released or taken over between our two calls: look again
      got = put_if(self.path, self.stamp.encode(), 0)
      if got is None:
        current = read_versioned(self.path)
        if current is None:
          continue
        got = self._take_over(*current)
      if got is not None:
        self.generation = got
        self._thread = threading.Thread(target=self._renew, name="chunklm-lease", daemon=True)
        self._thread.start()
        return
    raise WorkdirBusy(f"{self.workdir} is in use (its lease changed hands while this run tried to take it)")

  def _take_over(self, data: bytes, generation: int, age: float) -> int | None:
    try:
      other = json.loads(data)
      holder, seconds = str(other["holder"]), float(other["seconds"])
    except (ValueError, KeyError, TypeError):
      other, holder, seconds = {}, "an unreadable lease", 0.0
    here = other.get("host") == socket.gethostname()
    dead = here and isinstance(other.get("pid"), int) and not _alive(other["pid"])
    if age <= seconds and not dead:
      raise WorkdirBusy(
        f"{self.workdir} is in use by {holder}; its lease was renewed {age:.0f} s ago and lapses after "
        f"{seconds:.0f} s without renewal: wait for that run to finish (or its lease to lapse) or use another --workdir"
      )
    why = "whose process is gone" if dead else f"not renewed for {age:.0f} s"
    got = put_if(self.path, self.stamp.encode(), generation)
    if got is not None:
      logs.warning(f"took over the lease of {self.workdir} from {holder} ({why})")
    return got

  def _renew(self) -> None:
    while not self._stop.wait(self.seconds / 4):
      try:
        got = put_if(self.path, self.stamp.encode(), self.generation)
      except Exception as e:  # noqa: BLE001 - a transient failure: the next renewal tries again within the term
        logs.warning(f"could not renew the lease of {self.workdir} ({str(e).splitlines()[0][:120]}); retrying")
        continue
      if got is None:
        self.lost = "another process took it over after a renewal was missed"
        return
      self.generation = got

  def check(self) -> None:
    """Raises WorkdirBusy once the lease has been lost (so the run stops before writing beside another)."""
    if self.lost is not None:
      raise WorkdirBusy(f"lost the lease of {self.workdir}: {self.lost}; this run stops without writing more")

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self.lost is None and self.generation:
      delete_if(self.path, self.generation)
