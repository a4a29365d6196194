"""Checkpoints of a run (the only orbax import): train state, grain iterator position and the config, saved atomically.

orbax writes each step to a temporary directory and renames it when complete, so a crash never leaves a half-written
checkpoint that looks valid. Once a write has completed, the checksums of its files are recorded beside them
(`integrity.py`) and checked before a restore. If the newest checkpoint cannot be read (corrupted on disk, or bytes
that no longer match their checksums), `restore_latest` says so and falls back to the previous one. A readable
checkpoint whose top-level parts are not the ones asked for (written by another kind of run or version) is not
damage: `StateMismatch` is raised at once, with no fallback and nothing moved.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from chunklm import logs
from chunklm.errors import CheckpointError, UserError
from chunklm.run.integrity import verify, write_manifest
from chunklm.storage.objects import move_tree, storage_error
from chunklm.storage.paths import ensure_dir, is_remote, location

# orbax logs a failed background write (with tracebacks) from each of its threads; `save`/`close` raise it once,
# as one line, so those logs are silenced
logging.getLogger("absl").setLevel(logging.CRITICAL)
logging.getLogger("asyncio").setLevel(logging.CRITICAL)

# what a checkpoint write that fails for lack of room or rights says (orbax/tensorstore wrap the OS error in text)
_STORAGE_ERRORS = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied")


class StateMismatch(CheckpointError):
  """A readable checkpoint whose saved parts are not the ones asked for."""


class ProcessCountChange(StateMismatch):
  """A readable checkpoint whose data position was saved by another number of processes than this run has and
  cannot be moved to it."""


def _abstract(tree):
  """Shapes, dtypes and placements of `tree` (arrays, or ShapeDtypeStructs without a sharding: the default device)."""

  def spec(x):
    sharding = getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(spec, tree)


class _Vanished(Exception):
  """A checkpoint removed (pruned by the run's writer) between listing and reading it."""


_RELISTS = 6  # listings tried while a writer prunes checkpoints under a reader


def _shapes(tree) -> dict[str, tuple]:
  """{dotted path: shape} of the array leaves of `tree` (orbax metadata or arrays alike)."""

  def name(key) -> str:
    return str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key))))

  return {
    ".".join(name(k) for k in path): tuple(leaf.shape)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    if hasattr(leaf, "shape")
  }


class Checkpointer:
  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    keep: int = 3,
    read_only: bool = False,
    asynchronous: bool = True,
    guard: Callable[[], None] | None = None,
  ):
    """`guard` is called before each save and raises to prevent it (the workdir lock's `check`: a run whose lease
    on a bucket went to another trainer must not write a checkpoint beside it)."""
    self.guard = guard
    where = location(directory)
    self.directory: epath.Path = where if is_remote(where) else where.absolute()
    self.read_only = read_only
    if read_only and not self.directory.is_dir():
      raise CheckpointError(f"no checkpoints in {self.directory.parent} (train a model there first)")
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      create=not read_only,
      read_only=read_only,
      enable_async_checkpointing=asynchronous,
      # the unfinished write of a killed run (a tmp directory; in a bucket, a step without its commit file) is
      # removed when the next writer opens the run, so its files are not left beside the rewritten step
      cleanup_tmp_directories=not read_only,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._pending: int | None = None  # the step being written in the background

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: dict, data_iter: grain.DatasetIterator | None, meta: dict) -> None:
    """Starts writing `step` in the background, after the previous write has finished (its failure surfaces
    here, at once, not one save later)."""
    if self.guard is not None:
      self.guard()
    self._finish(self._pending)
    self._check_room(step, state)
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    try:
      self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # noqa: BLE001 - a full disk or a quota surfaces as many types; _storage_error says which
      self._reraise(e, step)
    self._pending = step

  def _finish(self, step: int | None, record: bool = True) -> None:
    """Waits for the write of `step` (if any) and records its checksums once it is complete (unless `record` is
    False: a run that lost its workdir's lease writes nothing more)."""
    try:
      self.manager.wait_until_finished()
      if record and step is not None and jax.process_index() == 0 and (self.directory / str(step)).is_dir():
        write_manifest(self.directory / str(step))
    except Exception as e:  # noqa: BLE001 - as in save
      self._reraise(e, step)
    self._pending = None

  def _reraise(self, e: Exception, step: int | None) -> None:
    """Raises the one-line storage error for `e` (out of space, read-only, ...), or `e` itself."""
    error = self._storage_error(e, step)
    if error is None:
      raise e
    raise error from e

  def _check_room(self, step: int, state: dict) -> None:
    """Refuses a write that cannot fit in the free space before it starts (so the disk is not filled and nothing
    half-written is left to clean up); a write that fails anyway is reported by `_storage_error`."""
    if is_remote(self.directory):
      return  # a bucket has no free space to check; a refused write is reported by _storage_error
    need = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state)) + (1 << 20)
    free = shutil.disk_usage(self._existing_dir()).free
    if free < need:
      raise CheckpointError(
        self._storage_message(step, "no space left on device", free, f"needs {need / 2**20:,.0f} MiB")
      )

  def _existing_dir(self):
    where = self.directory
    while not where.exists():
      where = where.parent
    return where

  def _storage_message(self, step: int | None, reason: str, free: int, need: str = "") -> str:
    done = [s for s in self.manager.all_steps(read=True) if s != step]
    return (
      f"cannot write the checkpoint of step {step} in {self.directory}: {reason} ({need + ', ' if need else ''}"
      f"{free / 2**20:,.0f} MiB free); the newest complete checkpoint is "
      f"{f'step {max(done)}' if done else 'none'}; free some space (or use another --workdir) and re-run to resume"
    )

  def _storage_error(self, e: Exception, step: int | None) -> UserError | None:
    """One line for a write that failed for lack of space or rights (None for anything else)."""
    if is_remote(self.directory):
      return storage_error(e, f"cannot write the checkpoint of step {step} in {self.directory}")
    reason = next((r for r in _STORAGE_ERRORS if r in str(e)), None)
    if reason is None:
      return None
    return CheckpointError(self._storage_message(step, reason.lower(), shutil.disk_usage(self._existing_dir()).free))

  def restore(
    self, step: int, like_state: dict, data_iter: grain.DatasetIterator | None = None, partial: bool = False
  ) -> tuple[dict, dict]:
    """(state, meta) at `step`; `like_state` gives structure, shapes and dtypes; `data_iter` is set in place.

    With `partial` only the parts `like_state` names are read, e.g. {"params": ...} without the optimizer state
    for inference or fine-tuning; without it `like_state` must name the whole saved state."""
    damage = verify(self.directory / str(step))
    if damage:
      raise CheckpointError(f"checksum mismatch: {damage}")
    self._check_parts(step, like_state, partial)
    if partial:
      item = _abstract(like_state)
      state_args = ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
      )
    else:
      state_args = ocp.args.StandardRestore(_abstract(like_state))
    items: dict[str, Any] = {"state": state_args, "meta": ocp.args.JsonRestore()}
    how, merged = self._data_restore(step, data_iter) if data_iter is not None else ("none", None)
    if how == "grain":
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if how == "merged" and data_iter is not None:
      data_iter.set_state(merged)
    return restored["state"], restored["meta"]

  def _data_restore(self, step: int, data_iter) -> tuple[str, dict | None]:
    """How to restore the data position of `step`: "grain" (saved by as many processes as this run has), "merged"
    (the merged states of another number of processes), or "none" (saved by chunklm's in-memory pipeline before the
    data was streamed: a position that means nothing to the streams, which start from their beginning, said in a
    warning)."""
    saved = sorted((self.directory / str(step) / "data").glob("process_*-of-*.json"))
    if not saved:
      return "grain", None
    states = [json.loads(f.read_text()) for f in saved]
    if "lanes" in data_iter.get_state() and not all("lanes" in s for s in states):
      logs.warning(
        f"the data position in the checkpoint at step {step} was saved by chunklm's in-memory pipeline (before "
        "0.4); the model and optimizer resume, the streamed data starts from its beginning"
      )
      return "none", None
    merged = self._data_of_other_processes(step, saved, states)
    return ("grain", None) if merged is None else ("merged", merged)

  def _data_of_other_processes(self, step: int, saved: list, states: list[dict]) -> dict | None:
    """None when the data position was saved by as many processes as this run has (grain restores it); else the
    states of every saving process merged, for a data stream whose batches do not depend on the process count
    (`data.lanes.GlobalLanes`: prepared, random-access data). Any other stream raises ProcessCountChange."""
    count = jax.process_count()
    if any(f.name.endswith(f"-of-{count}.json") for f in saved):
      return None
    before = saved[0].name.rsplit("-of-", 1)[1].removesuffix(".json")
    if not all("lanes" in s.get("source", {}) for s in states):
      raise ProcessCountChange(
        f"the checkpoint at step {step} in {self.directory} was written by {before} processes and this run has "
        f"{count}: a streamed corpus is dealt to processes by file, so its position cannot move to another count; "
        f"resume with {before} processes, or train on data made by `chunklm data prepare` (random access, one "
        "global shuffle), which resumes on any count at the same global batch"
      )
    lanes: dict = {}
    sources: dict = {}
    for s in states:
      lanes.update(s["lanes"])
      sources.update(s["source"]["lanes"])
    return {"lanes": lanes, "source": {"lanes": sources}, "step": states[0]["step"]}

  def _check_parts(self, step: int, like_state: dict, partial: bool) -> None:
    """The top-level parts asked for must be the checkpoint's (with `partial`, some of them): otherwise orbax fails
    deep inside and the checkpoint would read as damaged. Raises StateMismatch. Only top-level names are compared:
    a part of another shape inside still fails in orbax (and reads as unreadable)."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
      where = self.directory / str(step) / "state"
      tree = handler.metadata(where if is_remote(where) else where.resolve()).tree
      saved = set(tree)
    finally:
      handler.close()
    wanted = set(like_state)
    if wanted - saved if partial else wanted != saved:
      hint = " (to read only some parts, restore with partial=True)" if wanted < saved and not partial else ""
      raise StateMismatch(
        f"the checkpoint at step {step} in {self.directory} holds {sorted(saved)}, not "
        f"{sorted(wanted)}: it was written by another kind of run or version{hint}"
      )
    if "params" in like_state:
      self._check_shapes(step, tree["params"], like_state["params"])

  def _check_shapes(self, step: int, saved_params, wanted_params) -> None:
    """The parameters asked for must have the names and shapes of the saved ones: otherwise the model described
    (e.g. a config.yaml edited after training) is not the one saved, and orbax's failure would read as damage."""
    saved, wanted = _shapes(saved_params), _shapes(wanted_params)
    differ = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
    if differ:
      k = differ[0]
      raise StateMismatch(
        f"the checkpoint at step {step} in {self.directory} holds another model than the config describes "
        f"({len(differ)} parameters differ, e.g. {k}: saved {saved.get(k, 'none')}, config {wanted.get(k, 'none')})"
        "; was the run's config.yaml edited after training? Restore it, or pass only settings that keep the "
        "parameters"
      )

  def restore_latest(
    self, like_state: dict, data_iter=None, log=logs.warning, partial: bool = False
  ) -> tuple[int, dict, dict] | None:
    """The newest readable checkpoint as (step, state, meta), or None when there is none at all. Newer unreadable
    ones are moved aside (so training can write those steps again) only once an older one has been read: when none
    can be read, nothing is moved and the error says so. A newest checkpoint of other parts (StateMismatch) is
    raised at once: nothing is moved and no older one is tried. `log` takes the warning for each unreadable one."""
    for _ in range(_RELISTS):
      try:
        return self._restore_newest(like_state, data_iter, log, partial)
      except _Vanished:  # a writer pruned a checkpoint while it was read: list them again
        self.manager.reload()
    raise CheckpointError(
      f"the checkpoints in {self.directory} were removed while being read, {_RELISTS} times (a training run "
      "keeping only its newest ones?); try again"
    )

  def _restore_newest(self, like_state: dict, data_iter, log, partial: bool) -> tuple[int, dict, dict] | None:
    steps = self.steps()
    failed: list[tuple[int, str]] = []
    for step in reversed(steps):
      try:
        state, meta = self.restore(step, like_state, data_iter, partial)
      except StateMismatch:
        raise  # readable, of another shape: not damage, so nothing is moved aside
      except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged files; we only need to know it failed
        if not (self.directory / str(step)).exists():
          raise _Vanished from None  # removed since it was listed (keep_checkpoints): not damage
        failed.append((step, str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__))
        continue
      for bad, reason in failed:
        moved = ""
        if not self.read_only:
          aside = self.directory.with_name(self.directory.name + "-unreadable") / f"{bad}-{time.time_ns()}"
          ensure_dir(aside.parent)
          move_tree(self.directory / str(bad), aside)
          moved = f" (moved to {aside})"
        log(f"checkpoint at step {bad} is unreadable ({reason}){moved}; using step {step}")
      if failed and not self.read_only:
        self.manager.reload()
      return step, state, meta
    if steps:
      newest, reason = failed[0]
      raise CheckpointError(
        f"no checkpoint in {self.directory} can be read (newest, step {newest}: {reason}); "
        "nothing was moved: restore them from a copy, or move the directory away to start over"
      )
    return None

  def wait(self) -> None:
    self._finish(self._pending)

  def close(self, record: bool = True) -> None:
    self._finish(self._pending, record)  # after a failed write the manager is left as it is: the process is ending
    self.manager.close()
