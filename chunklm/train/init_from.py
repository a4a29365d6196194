"""Starting a run from another run's parameters (`chunklm train --init-from`, `train.init_from`): fine-tuning.

Only the parameters come over (every model variable, router statistics included): the optimizer, step, RNG and
data position start fresh, and the new run then trains and resumes like any other. The source is a run directory
(its newest readable checkpoint) or one checkpoint of it (`RUN/checkpoints/STEP`). The two models must be the same
model: every `model.*` field equal except those in FREE_MODEL_FIELDS (targets, loss weights, capacities and how it
computes), and the same tokenizer; anything else is a one-line error naming the field and both values.
"""

from __future__ import annotations

import dataclasses
import hashlib

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from chunklm.config import Config, differing_fields
from chunklm.errors import CheckpointError
from chunklm.run.checkpoint import Checkpointer
from chunklm.run.kind import require_lm
from chunklm.run.trained import read_config
from chunklm.run.workdir import RunDir, is_checkpoint_dir
from chunklm.storage.objects import check_access
from chunklm.storage.paths import location

# model fields a fine-tuning run may set differently from the run it starts from (they keep every parameter)
FREE_MODEL_FIELDS = (
  "model.target_ratio",
  "model.ratio_loss_weight",
  "model.ratio_loss",
  "model.ratio_start",
  "model.ratio_warmup_steps",
  "model.confidence_loss_weight",
  "model.capacity_factor",
  "model.capacity",
  "model.lr_multipliers",
  "model.init_std",
  "model.dtype",
  "model.remat",
  "model.attention_block",
  "model.gumbel.temperature",
  "model.gumbel.prior_weight",
  "model.gumbel.script_ratios",
  "model.delete_gate.alpha",
  "model.delete_gate.two_sided",
  "model.delete_gate.keep_all",
  "model.entropy.momentum",
)


@dataclasses.dataclass(frozen=True)
class InitSource:
  workdir: epath.Path  # the source run
  step: int  # its checkpoint the parameters come from
  sha256: str  # of the parameters (every leaf's bytes, in tree order)

  def describe(self) -> str:
    return f"{self.workdir} (step {self.step}, parameters sha256 {self.sha256[:16]})"


def params_sha256(params) -> str:
  """Of every leaf's bytes in tree order; leaves spread over several hosts are gathered first (same on every host)."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    h.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
  return h.hexdigest()


def _source(source: str) -> tuple[epath.Path, int | None]:
  """(run directory, checkpoint step or None for the newest) of an --init-from path (local or gs://)."""
  path = location(source, "--init-from")
  check_access(path, "--init-from")
  if is_checkpoint_dir(path):
    return path.parent.parent, int(path.name)
  return path, None


def check_source(source: str) -> None:
  """A one-line error, before any data is read, when --init-from names no language-model run (run/kind.py)."""
  require_lm(_source(source)[0], "--init-from")


def check_compatible(
  source: str, src: Config, cfg: Config, tokenizer_bytes: bytes | None, src_tokenizer_bytes: bytes | None
) -> None:
  """A one-line CheckpointError when the run of `cfg` cannot start from the run of `src`."""
  if (tokenizer_bytes is None) != (src_tokenizer_bytes is None) or tokenizer_bytes != src_tokenizer_bytes:
    what = lambda b: "bytes" if b is None else "another tokenizer"  # noqa: E731
    raise CheckpointError(
      f"--init-from {source}: it reads {what(src_tokenizer_bytes)}, this run "
      f"{'bytes' if tokenizer_bytes is None else 'its tokenizer ' + cfg.data.tokenizer}; a model "
      "can only be fine-tuned with the tokenizer it was trained with"
    )
  fixed = [d for d in differing_fields(src, cfg, ("model",)) if d.split(":")[0] not in FREE_MODEL_FIELDS]
  if fixed:
    field, _, values = fixed[0].partition(": ")
    old, _, new = values.partition(" -> ")
    more = f" (and {len(fixed) - 1} more)" if len(fixed) > 1 else ""
    raise CheckpointError(
      f"--init-from {source}: {field} is {old} there and {new} here{more}; a fine-tuning run "
      "keeps the model's fields except " + ", ".join(f.split(".", 1)[1] for f in FREE_MODEL_FIELDS)
    )


def load_init(source: str, cfg: Config, abstract_params, tokenizer_bytes: bytes | None) -> tuple[dict, InitSource]:
  """(parameters, where they came from) for the run of `cfg`; `abstract_params` gives their structure."""
  workdir, step = _source(source)
  if not workdir.is_dir():
    raise CheckpointError(f"--init-from {source}: no such run directory")
  src = read_config(workdir, flag="--init-from")  # a one-line error for a directory that is not an LM run
  copy = RunDir(workdir).tokenizer
  check_compatible(source, src, cfg, tokenizer_bytes, copy.read_bytes() if copy.exists() else None)
  ckpt = Checkpointer(RunDir(workdir).checkpoints, read_only=True)
  like = {"params": abstract_params}
  if step is None:
    restored = ckpt.restore_latest(like, log=lambda *a, **k: None, partial=True)
    if restored is None:
      raise CheckpointError(f"--init-from {source}: no checkpoint in {RunDir(workdir).checkpoints}")
    step, state, _ = restored
  else:
    if step not in ckpt.steps():
      raise CheckpointError(
        f"--init-from {source}: no checkpoint of step {step}; it has steps {ckpt.steps() or 'none'}"
      )
    try:
      state, _ = ckpt.restore(step, like, partial=True)
    except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged files
      raise CheckpointError(f"--init-from {source}: unreadable ({str(e).strip().splitlines()[0][:200]})") from None
  params = state["params"]
  return params, InitSource(workdir, step, params_sha256(params))
