"""What may change when a run resumes: one rule, checked before any checkpoint is read.

Every config field is in one of three classes:
  - state: the model and what its checkpointed state means (every `model.*` field, `train.seed`), or any setting
    whose change gives the train state another structure or shapes (e.g. `train.grad_clip` 1.0 -> 0 drops the
    clipping state from the optimizer). The checkpoints cannot continue with them: refused.
  - data: what the data stream is (`data.*` except the two below, `train.batch_size`). Changing it mixes two streams
    in one run: refused unless the user allows it (`--allow-data-change`), which restarts the new stream from its
    beginning and records the change in metrics.jsonl.
  - free: everything else (steps, learning-rate schedule, cadences, evaluation, mesh, kernels, `data.prefetch`,
    `data.mmap_min_mb`): changed freely; the change is recorded in metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from chunklm.config import Config, differing_fields
from chunklm.errors import CheckpointError

STATE_SECTIONS = ("model",)
STATE_KEYS = ("train.seed",)
DATA_SECTIONS = ("data",)
DATA_KEYS = ("train.batch_size",)
FREE_KEYS = ("data.prefetch", "data.mmap_min_mb")
SECTIONS = ("model", "data", "train", "eval", "mesh", "kernels")


def field_class(key: str) -> str:
  """'state', 'data' or 'free' for a dotted config key."""
  if key in FREE_KEYS:
    return "free"
  if key.split(".")[0] in STATE_SECTIONS or key in STATE_KEYS:
    return "state"
  if key.split(".")[0] in DATA_SECTIONS or key in DATA_KEYS:
    return "data"
  return "free"


@dataclasses.dataclass
class ResumeChanges:
  free: list[str]  # 'key: old -> new'
  data: list[str]

  def record(self) -> dict:
    """What metrics.jsonl keeps about this resume."""
    return {"changed": self.free + self.data, "data_changed": bool(self.data)}


def check_resume(
  workdir: Path, old: Config, new: Config, state_structure, allow_data_change: bool = False
) -> ResumeChanges:
  """The changes from the run's saved config `old` to `new`, or a one-line CheckpointError when the rule refuses
  them. `state_structure(cfg)` gives a config's abstract train state (compared as tree structure, shapes, dtypes)."""
  diffs = differing_fields(old, new, SECTIONS)
  by_class: dict[str, list[str]] = {"state": [], "data": [], "free": []}
  for d in diffs:
    by_class[field_class(d.split(":")[0])].append(d)
  if not by_class["state"] and diffs:

    def layout(cfg):
      tree = state_structure(cfg)
      return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]

    reference = layout(old)
    if layout(new) != reference:  # name the settings that do it: each one applied alone
      by_class["state"] = [
        d for d in by_class["free"] + by_class["data"] if layout(_with(old, new, d.split(":")[0])) != reference
      ] or diffs
  if by_class["state"]:
    raise CheckpointError(
      f"{workdir} holds checkpoints of another model or optimizer state ({'; '.join(by_class['state'])}); they "
      "cannot continue with these settings: resume with the original ones, or train in another --workdir"
    )
  if by_class["data"] and not allow_data_change:
    raise CheckpointError(
      f"{workdir} was trained on another data stream ({'; '.join(by_class['data'])}); resuming would mix two "
      "streams in one run: pass --allow-data-change to continue on the new one (recorded in metrics.jsonl), or "
      "use another --workdir"
    )
  return ResumeChanges(by_class["free"], by_class["data"])


def _with(old: Config, new: Config, key: str) -> Config:
  """`old` with the one field `key` (section.name) taken from `new`."""
  section, _, name = key.partition(".")
  part = getattr(old, section)
  if "." in name or not hasattr(part, name):
    return new
  return dataclasses.replace(
    old, **{section: dataclasses.replace(part, **{name: getattr(getattr(new, section), name)})}
  )
