"""One writer per workdir on object storage: a lease object, since a bucket has no locks.

The lease is the workdir's `.lock` object, created only if it does not exist (Cloud Storage's `ifGenerationMatch=0`)
and renewed every quarter of its term by a write conditioned on the generation its holder last wrote. Each lease
carries a token of its own, so a conditional write that succeeded but was retried (and then refused) is recognised
as ours. A second trainer finds the lease and is refused in one line naming the holder, unless the lease has lapsed
(not renewed for its term, measured by the server's clock) or was left by a process of this machine that is no
longer running (a kill -9 followed by the same command; "this machine" is the hostname, the boot and the pid
namespace, so a container sharing the hostname is not mistaken for it): then it takes the lease over, again by a
conditional write, so that of two trainers racing for it one wins.

A holder that finds another generation when it renews, or has not managed to renew for three quarters of the term
(a network cut: another trainer may take the lease a quarter-term later), has lost the lease: `check()` raises from
then on, and the trainers call it before each checkpoint so they stop instead of writing beside the new holder.

Term: `$CHUNKLM_LEASE_SECONDS` (default 60 s) bounds how long a run killed on another machine blocks its successor.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from etils import epath

from chunklm import logs
from chunklm.errors import UserError
from chunklm.storage.objects import delete_if, put_if, read_versioned


def lease_seconds() -> float:
  return float(os.environ.get("CHUNKLM_LEASE_SECONDS", "60"))


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


def machine() -> str | None:
  """This machine and pid namespace (Linux: hostname, boot id, pid namespace inode), within which a pid names one
  process; None where they cannot be read (then a lease is only taken over once it lapses)."""
  try:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    namespace = os.stat("/proc/self/ns/pid").st_ino
  except OSError:
    return None
  return f"{socket.gethostname()}/{boot}/{namespace}"


class Lease:
  """The lease on `path` (the workdir's `.lock` object), held from `acquire` to `release`."""

  def __init__(self, path: epath.Path, workdir: epath.Path, holder: str, seconds: float | None = None):
    self.path, self.workdir = path, workdir
    self.seconds = lease_seconds() if seconds is None else seconds
    stamp = {"holder": holder, "machine": machine(), "pid": os.getpid(), "seconds": self.seconds}
    self.stamp = json.dumps({**stamp, "token": uuid.uuid4().hex}).encode()
    self.generation = 0
    self.lost: str | None = None
    self._renewed = time.monotonic()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _put(self, generation: int) -> int | None:
    """Our stamp written if the lease is at `generation`; its new generation, or None if someone else's is there. A
    write that succeeded but was retried by the client (and refused the second time) is recognised by the token."""
    got = put_if(self.path, self.stamp, generation)
    if got is None:
      current = read_versioned(self.path)
      if current is not None and current[0] == self.stamp:
        return current[1]
    return got

  def acquire(self) -> None:
    for _ in range(3):  # a lease released or taken over between our two calls: look again
      got = self._put(0)
      if got is None:
        current = read_versioned(self.path)
        if current is None:
          continue
        got = self._take_over(*current)
      if got is not None:
        self.generation, self._renewed = got, time.monotonic()
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
    here = other.get("machine") is not None and other.get("machine") == machine()
    dead = here and isinstance(other.get("pid"), int) and not _alive(other["pid"])
    if age <= seconds and not dead:
      raise WorkdirBusy(
        f"{self.workdir} is in use by {holder}; its lease was renewed {age:.0f} s ago and lapses after "
        f"{seconds:.0f} s without renewal: wait for that run to finish (or its lease to lapse) or use another --workdir"
      )
    why = "whose process is gone" if dead else f"not renewed for {age:.0f} s"
    got = self._put(generation)
    if got is not None:
      logs.warning(f"took over the lease of {self.workdir} from {holder} ({why})")
    return got

  def _renew(self) -> None:
    while not self._stop.wait(self.seconds / 4):
      try:
        got = self._put(self.generation)
      except Exception as e:  # noqa: BLE001 - a transient failure: the next renewal tries again within the term
        logs.warning(f"could not renew the lease of {self.workdir} ({str(e).splitlines()[0][:120]}); retrying")
        continue
      if got is None:
        self.lost = "another process took it over after a renewal was missed"
        return
      self.generation, self._renewed = got, time.monotonic()

  def reason_lost(self) -> str | None:
    """Why the lease is no longer ours (None while it is): taken over, or not renewed for 3/4 of its term."""
    if self.lost is None and time.monotonic() - self._renewed > 0.75 * self.seconds:
      self.lost = f"it could not be renewed for {time.monotonic() - self._renewed:.1f} s of its {self.seconds:g} s term"
    return self.lost

  def check(self) -> None:
    """Raises WorkdirBusy once the lease has been lost (so the run stops before writing beside another)."""
    lost = self.reason_lost()
    if lost is not None:
      raise WorkdirBusy(f"lost the lease of {self.workdir}: {lost}; this run stops without writing more")

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self.lost is None and self.generation:
      delete_if(self.path, self.generation)
