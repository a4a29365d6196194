"""A training run's plan: everything decided before a step runs or a file is written.

`plan_run` opens the data (lists the files, reads the valid split and a sample of training documents: bad data fails
here, before the workdir is touched), checks the router against the sample, picks the tokenizer (token models), settles
the document cap (measured on the sample, or the one a resumed run saved), and
applies the resume rule (`train/resume.py`) to a workdir that holds checkpoints. What it decides is a frozen
`RunPlan`; `announce` writes it (config.yaml with its provenance header, the tokenizer's copy) and logs it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import grain
import jax

from chunklm import logs
from chunklm.config import Config, dump_yaml, to_dict
from chunklm.data.corpus import Documents, build
from chunklm.data.feed import TrainData, byte_units, open_train_data, train_batches
from chunklm.data.pipeline import BOS, DocCap, with_doc_cap
from chunklm.data.split import valid_budget
from chunklm.data.tokenizer import Tokenizer, tokenize, vocab_kwargs
from chunklm.errors import CheckpointError, UserError
from chunklm.model.rule_routers import check_router_data
from chunklm.run.imported import refuse_resume
from chunklm.run.provenance import header, header_value, provenance
from chunklm.run.trained import read_config, run_tokenizer
from chunklm.run.workdir import RunDir
from chunklm.train.init_from import InitSource
from chunklm.train.resume import ResumeChanges, check_resume
from chunklm.train.state import setup_state


@dataclasses.dataclass(frozen=True)
class RunPlan:
  cfg: Config  # resolved: data.max_docs_per_window filled in
  run: RunDir
  data: TrainData  # the files, the valid split and the sample of training documents (bytes)
  valid_units: tuple[Documents, ...]  # each part's valid split as the model reads it: bytes, or a token model's tokens
  tokenizer: Tokenizer | None  # token models only
  cap: DocCap | None  # the document cap measured on this corpus (None: configured or kept from the saved run)
  resuming: bool  # the workdir holds checkpoints
  changes: ResumeChanges | None  # what differs from the saved config, by the resume rule

  @property
  def new_stream(self) -> bool:
    """--allow-data-change with other data: the data stream starts from its beginning, not the checkpoint's."""
    return self.changes is not None and bool(self.changes.data)

  @property
  def vocab(self) -> dict:
    return vocab_kwargs(self.tokenizer)

  def train_stream(self) -> grain.DatasetIterator:
    """This process's training batches for every step of the run, from the beginning."""
    c, tok = self.cfg, self.tokenizer
    return train_batches(
      self.data,
      c.data,
      c.train.batch_size,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      max_docs=c.data.max_docs_per_window or None,
      units=byte_units if tok is None else tok.encode,
      bos=BOS if tok is None else tok.bos_id,
      piece_bytes=None if tok is None else tok.piece_bytes,
    )


def plan_run(cfg: Config, run: RunDir, *, allow_data_change: bool = False) -> RunPlan:
  refuse_resume(run.path)  # converted or imported weights: parameters only, fine-tuned with --init-from
  data = open_train_data(cfg.data, valid_budget(cfg))  # bad data fails before anything is written
  check_router_data(cfg.model, data.sample)  # e.g. whitespace routing on DNA
  tok = run_tokenizer(cfg)
  if tok is not None and cfg.data.dna.reverse_complement:
    raise UserError("data.dna.reverse_complement: a token model reads tokens, not bases; use it with byte models")
  sample = data.sample if tok is None else tokenize(data.sample, tok)
  valid = tuple(p.valid if tok is None else tokenize(p.valid, tok) for p in data.parts)
  resuming = run.has_checkpoints()
  saved = read_config(run.path) if resuming and run.config.exists() else None
  cfg, cap = _doc_cap(cfg, saved, sample)
  if saved is not None and saved.train.init_from and not cfg.train.init_from:  # resumed without --init-from
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=saved.train.init_from))
  changes = None
  if saved is not None:
    changes = check_resume(run.path, saved, cfg, lambda c: setup_state(c, abstract=True)[2], allow_data_change)
  if (
    tok is not None
    and tok.path is not None
    and run.tokenizer.exists()
    and run.tokenizer.read_bytes() != tok.path.read_bytes()
  ):
    raise CheckpointError(f"{run} was trained with another tokenizer than {tok.path}; use another --workdir")
  data = dataclasses.replace(data, sample=build(iter(())))  # measured: the plan lets it go
  return RunPlan(cfg, run, data, valid, tok, cap, resuming, changes)


def _doc_cap(cfg: Config, saved: Config | None, sample: Documents) -> tuple[Config, DocCap | None]:
  """The corpus decides how many documents a window may touch; a resumed run keeps its own cap, and a run of
  chunklm < 0.3 (saved 0) resumes uncapped, as it was trained."""
  kept = saved.data.max_docs_per_window if saved is not None else None
  if kept and not cfg.data.max_docs_per_window:
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_docs_per_window=kept)), None
  if kept != 0:
    return with_doc_cap(cfg, sample)
  return cfg, None


def announce(
  plan: RunPlan,
  init: InitSource | None,
  resumed_at: int | None,
  num_params: int,
  log: Callable[[str], None] = logs.info,
) -> dict:
  """Writes config.yaml (process 0) and the tokenizer's copy, logs what the run is, and returns its provenance."""
  cfg, run = plan.cfg, plan.run
  if init is not None:
    log(f"initialised from {init.describe()}")
  if resumed_at is not None:
    log(f"resumed from checkpoint at step {resumed_at} in {run.checkpoints}")
    if plan.changes is not None and (plan.changes.free or plan.changes.data):
      log(f"changed on resume: {'; '.join(plan.changes.free + plan.changes.data)}")
    if plan.new_stream:
      log("--allow-data-change: the new data stream starts from its beginning")
  made_by = provenance()
  if init is not None:
    made_by["init_from"] = init.describe()
  elif resumed_at is not None and cfg.train.init_from:  # a resumed fine-tuning run keeps saying where it started
    made_by["init_from"] = header_value(run.config, "init_from") or cfg.train.init_from
  if jax.process_index() == 0:
    run.config.write_text("# written by chunklm train\n" + header(made_by) + dump_yaml(cfg))
    if plan.tokenizer is not None and plan.tokenizer.path is not None and not run.tokenizer.exists():
      run.tokenizer.write_bytes(plan.tokenizer.path.read_bytes())  # the run stays usable if the original moves
  log(f"data: {plan.data.description}")
  if plan.cap is not None:
    sample = "" if plan.data.complete else f" (measured on the first {plan.data.sample_bytes:,} bytes)"
    log(f"windows: {plan.cap.describe()}{sample}")
  log(
    f"model: {num_params:,} parameters, layout {json.dumps(to_dict(cfg.model.layout))}, "
    f"d_model {list(cfg.model.d_model)}"
  )
  if cfg.model.ratio_warmup_steps > cfg.train.steps:
    logs.warning(
      f"model.ratio_warmup_steps {cfg.model.ratio_warmup_steps} > train.steps {cfg.train.steps}: the "
      "ratio curriculum ends before its target reaches model.target_ratio"
    )
  return made_by
