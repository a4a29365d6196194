"""A trained run: a workdir's resolved config, its tokenizer and vocabulary, and the newest readable checkpoint's
parameters restored for inference (no optimizer state is read).

`open_run("runs/x")` is the one way eval, bench, experiments and the CLI load a model; training builds the same
`TrainedRun` in memory when it ends. A byte model reads bytes; a token model (BPE baseline) reads the pieces of the
tokenizer the run keeps a copy of (the workdir's `tokenizer.model`), and `units()` turns documents into what the model reads.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
from etils import epath
from flax import nnx

from chunklm import logs
from chunklm.config import CONFIG_FORMAT, Config, load_config, read_config_format
from chunklm.data.corpus import Documents
from chunklm.data.split import run_valid_split
from chunklm.data.tokenizer import Tokenizer, check_vocab, tokenize, vocab_kwargs
from chunklm.errors import CheckpointError, UserError
from chunklm.model.functional import merge_model, split_model
from chunklm.model.lm import build_model
from chunklm.run.checkpoint import Checkpointer
from chunklm.run.kind import require_lm
from chunklm.run.workdir import RunDir
from chunklm.storage.objects import check_access
from chunklm.storage.paths import location

# Settings that may change after training (they keep every parameter); named in the refusal of the others.
INFERENCE_SETTINGS = "model.delete_gate.keep_all, model.capacity_factor, kernels.impl, kernels.attention"


@dataclasses.dataclass
class TrainedRun:
  workdir: epath.Path  # local or gs://
  cfg: Config
  graphdef: Any
  params: Any  # every model variable (nnx.Param and router statistics) as one pytree
  step: int
  tokenizer: Tokenizer | None  # None for byte models

  @property
  def name(self) -> str:
    return self.workdir.name

  @property
  def kind(self) -> str:
    return "H-Net" if self.cfg.model.num_stages else ("BPE" if self.tokenizer is not None else "bytes")

  @property
  def vocab(self) -> dict:
    """The keyword arguments that describe a token model's vocabulary to data pipelines ({} for bytes)."""
    return vocab_kwargs(self.tokenizer)

  def units(self, docs: Documents) -> Documents:
    """What the model reads of `docs`: the bytes, or their tokens."""
    return docs if self.tokenizer is None else tokenize(docs, self.tokenizer)

  def valid_split(self) -> Documents:
    """The run's validation documents, as its config splits its data."""
    return run_valid_split(self.cfg)

  def model(self) -> nnx.Module:
    return merge_model(self.graphdef, self.params)


def read_config(workdir: str | os.PathLike, overrides: tuple[str, ...] = (), flag: str = "--workdir") -> Config:
  """The resolved config of a language-model run, with `overrides` (KEY=VALUE) applied; anything else given as
  `flag` (another kind of run, a file, nothing), or a run written by a chunklm whose config format differs, is a
  one-line error."""
  require_lm(workdir, flag)
  run = RunDir(workdir)
  fmt = read_config_format(run.config)
  if fmt != CONFIG_FORMAT:
    written = "chunklm < 0.2.0 (config format 1)" if fmt is None else f"config format {fmt}"
    raise CheckpointError(
      f"{workdir} was written by {written}; this chunklm reads config format {CONFIG_FORMAT}: "
      "train the run again, or read it with the chunklm version that wrote it"
    )
  return load_config(run.config, list(overrides))


def open_run(
  workdir: str | os.PathLike, overrides: tuple[str, ...] = (), log=logs.warning, flag: str = "--workdir"
) -> TrainedRun:
  """The newest readable checkpoint of `workdir`, ready for inference.

  `overrides` change the saved config before the model is built, for settings that keep the parameters (e.g.
  model.delete_gate.keep_all, model.capacity_factor, kernels.impl, kernels.attention); one that changes them is a
  UserError naming the parameters it would change. `log` takes the warnings about unreadable checkpoints; `flag`
  names the run in errors.
  """
  workdir = location(workdir, flag)
  check_access(workdir, flag)
  cfg = read_config(workdir, overrides, flag)
  graphdef, abstract = abstract_params(cfg)
  if overrides:
    _check_same_parameters(abstract_params(read_config(workdir))[1], abstract, overrides)
  ckpt = Checkpointer(RunDir(workdir).checkpoints, read_only=True)
  restored = ckpt.restore_latest({"params": abstract}, log=log, partial=True)
  if restored is None:
    raise CheckpointError(f"no checkpoints in {RunDir(workdir).checkpoints}")
  step, state, _ = restored
  return TrainedRun(workdir, cfg, graphdef, state["params"], step, run_tokenizer(cfg, workdir))


def abstract_params(cfg: Config):
  """(graphdef, params as ShapeDtypeStructs) of the model of `cfg`, without allocating it."""
  return split_model(nnx.eval_shape(lambda: build_model(cfg)))


def _check_same_parameters(before, after, overrides) -> None:
  def shapes(params):
    return {
      jax.tree_util.keystr(path): (leaf.shape, str(leaf.dtype))
      for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }

  a, b = shapes(before), shapes(after)
  differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
  if differ:
    raise UserError(
      f"--set {' '.join(overrides)} changes the trained model's parameters ({len(differ)} differ, "
      f"e.g. {differ[0]}); only settings that keep them can change after training, e.g. "
      f"{INFERENCE_SETTINGS}"
    )


def run_tokenizer(cfg: Config, workdir: epath.Path | None = None) -> Tokenizer | None:
  """The run's tokenizer (None for byte models): the workdir's copy if it has one, else `data.tokenizer`.

  Raises DataError for a missing/unreadable file and ConfigError when its vocabulary does not fit the model.
  """
  if not cfg.data.tokenizer:
    return None
  copy = RunDir(workdir).tokenizer if workdir is not None else None
  tok = Tokenizer(copy if copy is not None and copy.exists() else cfg.data.tokenizer)
  check_vocab(tok, cfg.model.vocab_size)
  return tok
