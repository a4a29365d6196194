"""What may change when a run resumes: one rule, checked before any checkpoint is read.

Every config field is in one of three classes:
  - state: the model and what its checkpointed state means (every `model.*` field, `train.seed`, `train.init_from`:
    the run a fine-tune started from; a resume without it keeps the saved one), or any setting
    whose change gives the train state another structure or shapes (e.g. `train.grad_clip` 1.0 -> 0 drops the
    clipping state from the optimizer). The checkpoints cannot continue with them: refused.
  - data: what the data stream is (`data.*` except the two below, `train.batch_size`). Changing it mixes two streams
    in one run: refused unless the user allows it (`--allow-data-change`), which restarts the new stream from its
    beginning and records the change in metrics.jsonl.
  - free: everything else (steps, learning-rate schedule, cadences, evaluation, mesh, kernels, `data.prefetch`,
    `data.mmap_min_mb`): changed freely; the change is recorded in metrics.jsonl.
An MrT5 run (`MRT5_RULE`) has the same three classes: `mrt5.*` is state, `data.*` and `seq2seq.*` are data; so
does a MergeDNA run (`MERGEDNA_RULE`): `mergedna.*` is state, `data.*` and `objective.*` are data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from chunklm.config import differing_fields
from chunklm.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class ResumeRule:
  """Which config fields are state, data or free for one kind of run (the rest of each section is free)."""

  sections: tuple[str, ...]  # the sections compared
  state_sections: tuple[str, ...]
  state_keys: tuple[str, ...]
  data_sections: tuple[str, ...]
  data_keys: tuple[str, ...]
  free_keys: tuple[str, ...] = ("data.prefetch", "data.mmap_min_mb")
  data_change_flag: str = "--allow-data-change"  # how the command allows a new data stream ("" if it cannot)

  def field_class(self, key: str) -> str:
    """'state', 'data' or 'free' for a dotted config key."""
    if key in self.free_keys:
      return "free"
    if key.split(".")[0] in self.state_sections or key in self.state_keys:
      return "state"
    if key.split(".")[0] in self.data_sections or key in self.data_keys:
      return "data"
    return "free"


# a language model (`chunklm train`); train.init_from is the start of a fine-tune: another start is another run
LM_RULE = ResumeRule(
  sections=("model", "data", "train", "eval", "mesh", "kernels"),
  state_sections=("model",),
  state_keys=("train.seed", "train.init_from"),
  data_sections=("data",),
  data_keys=("train.batch_size",),
)
# an MrT5 run (`chunklm mrt5 train`): the objective and its records are part of the data stream
MRT5_RULE = ResumeRule(
  sections=("mrt5", "data", "seq2seq", "train"),
  state_sections=("mrt5",),
  state_keys=("train.seed", "train.init_from"),
  data_sections=("data", "seq2seq"),
  data_keys=("train.batch_size",),
  data_change_flag="",
)
# a MergeDNA run (`chunklm mergedna train`): the objective decides what each batch trains on, as the data does
MERGEDNA_RULE = ResumeRule(
  sections=("mergedna", "objective", "data", "train"),
  state_sections=("mergedna",),
  state_keys=("train.seed", "train.init_from"),
  data_sections=("data", "objective"),
  data_keys=("train.batch_size",),
  data_change_flag="",
)


def field_class(key: str) -> str:
  """'state', 'data' or 'free' for a dotted key of a language model's config."""
  return LM_RULE.field_class(key)


@dataclasses.dataclass
class ResumeChanges:
  free: list[str]  # 'key: old -> new'
  data: list[str]

  def record(self) -> dict:
    """What metrics.jsonl keeps about this resume."""
    return {"changed": self.free + self.data, "data_changed": bool(self.data)}


def check_resume(
  workdir: Path,
  old: Any,
  new: Any,
  state_structure,
  allow_data_change: bool = False,
  rule: ResumeRule = LM_RULE,
) -> ResumeChanges:
  """The changes from the run's saved config `old` to `new` (a Config, or another run's config such as MrT5Run), or
  a one-line CheckpointError when `rule` refuses them. `state_structure(cfg)` gives a config's abstract train state
  (compared as tree structure, shapes, dtypes)."""
  diffs = differing_fields(old, new, rule.sections)
  by_class: dict[str, list[str]] = {"state": [], "data": [], "free": []}
  for d in diffs:
    by_class[rule.field_class(d.split(":")[0])].append(d)
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
    allow = rule.data_change_flag
    raise CheckpointError(
      f"{workdir} was trained on another data stream ({'; '.join(by_class['data'])}); resuming would mix two "
      "streams in one run: "
      + (
        f"pass {allow} to continue on the new one (recorded in metrics.jsonl), or "
        if allow
        else "resume with the original settings, or "
      )
      + "use another --workdir"
    )
  return ResumeChanges(by_class["free"], by_class["data"])


def _with(old: Any, new: Any, key: str) -> Any:
  """`old` with the one field `key` (section.name) taken from `new`."""
  section, _, name = key.partition(".")
  part = getattr(old, section)
  if "." in name or not hasattr(part, name):
    return new
  return dataclasses.replace(
    old, **{section: dataclasses.replace(part, **{name: getattr(getattr(new, section), name)})}
  )
