"""The training loop: the one place with side effects (data, checkpoints, metrics, progress, signals).

Re-running `train` in a workdir that holds a checkpoint resumes exactly: parameters, optimizer, step, RNG and the
data iterator's position are restored, and metrics past the checkpoint are dropped, so N steps + kill + resume + N
steps equals 2N straight steps. Metrics are pulled one step behind the dispatched step; a non-finite loss stops
training with a clear message and leaves the last good checkpoint untouched. Training ends with a checkpoint and an
evaluation on the valid split, and returns the trained run in memory; what is shown of it (a sample, a boundary
picture) is the caller's to compose (`chunklm.eval.summary`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from chunklm import progress as progress_lines
from chunklm.config import Config, dump_yaml, to_dict
from chunklm.data.corpus import Documents, Splits, load_splits, order0_entropy
from chunklm.data.pipeline import leading_bytes, train_dataset, with_doc_cap
from chunklm.data.tokenizer import tokenize, tokenize_splits, vocab_kwargs
from chunklm.errors import CheckpointError, UserError
from chunklm.eval.bpb import evaluate, make_eval_step
from chunklm.model.functional import split_model
from chunklm.model.lm import build_model, count_params
from chunklm.model.rule_routers import check_router_data
from chunklm.run.checkpoint import Checkpointer
from chunklm.run.imported import refuse_resume
from chunklm.run.metrics import MetricsWriter, plot_curves
from chunklm.run.provenance import header, header_value, provenance
from chunklm.run.lock import workdir_lock
from chunklm.run.trained import CONFIG_FILE, TOKENIZER_FILE, TrainedRun, read_config, run_tokenizer
from chunklm.train.init_from import load_init
from chunklm.train.optim import lr_schedule, make_optimizer
from chunklm.train.parts import frozen_mask
from chunklm.train.sharding import (batch_sharding, batch_shards, check_batch_size, check_state_fits, local_rows,
                                    make_mesh, on_mesh, process_count, put_batch, state_shardings)
from chunklm.train.resume import check_resume
from chunklm.train.step import all_finite, init_train_state, make_train_step


class TrainingDiverged(UserError):
  exit_code = 3


@dataclasses.dataclass
class TrainResult:
  run: TrainedRun  # the trained model as it is at the last step (the same as its newest checkpoint)
  finished: bool  # reached train.steps (False after --stop-after or SIGTERM)
  signalled: bool  # stopped by SIGTERM (a checkpoint was written)
  valid: dict  # final evaluation ({} when not finished)
  order0_entropy: float  # of the valid split: a unigram byte model's bits per byte, for scale
  num_params: int
  valid_docs: Documents  # the valid split, for summaries

  @property
  def workdir(self) -> Path:
    return self.run.workdir

  @property
  def step(self) -> int:
    return self.run.step


def setup_state(cfg: Config, abstract: bool = False):
  """(graphdef, optimizer, train state, parameter count); `abstract`: the state's leaves are `jax.ShapeDtypeStruct`s
  and nothing is allocated (for compiling a step for devices that are not there)."""
  model = nnx.eval_shape(lambda: build_model(cfg)) if abstract else build_model(cfg)
  num_params = count_params(model)
  graphdef, params = split_model(model)
  tx = make_optimizer(cfg.train, cfg.model, params)
  init = functools.partial(init_train_state, tx=tx, seed=cfg.train.seed)
  return graphdef, tx, jax.eval_shape(init, params) if abstract else init(params), num_params


class _StopFlag:
  """Turns SIGTERM (preemption) into a checkpoint and a clean exit at the next step boundary."""

  def __init__(self):
    self.set = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._old = None
    return self

  def _handle(self, signum, frame):
    self.set = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def train(cfg: Config, workdir: str | Path, *, stop_after: int | None = None, progress: bool = True,
          log=print, splits: Splits | None = None, allow_data_change: bool = False) -> TrainResult:
  """Trains (or resumes) the run in `workdir`, holding its lock throughout (process 0 of a multi-host run)."""
  workdir = Path(workdir)
  with workdir_lock(workdir, enabled=jax.process_index() == 0):
    return _train(cfg, workdir, stop_after=stop_after, progress=progress, log=log, splits=splits,
                  allow_data_change=allow_data_change)


def _train(cfg: Config, workdir: Path, *, stop_after: int | None, progress: bool, log, splits: Splits | None,
           allow_data_change: bool) -> TrainResult:
  refuse_resume(workdir)  # converted or imported weights: parameters only, fine-tuned with --init-from
  splits = splits or load_splits(cfg.data, cache_dir=workdir / "cache")  # bad data fails before anything is written
  check_router_data(cfg.model, splits.train)  # e.g. whitespace routing on DNA
  tok = run_tokenizer(cfg)  # token models only (BPE baseline)
  if tok is not None and cfg.data.dna.reverse_complement:
    raise UserError("data.dna.reverse_complement: a token model reads tokens, not bases; use it with byte models")
  units = tokenize_splits(splits, tok) if tok is not None else splits  # what the model reads: bytes or tokens
  ckpt_dir = workdir / "checkpoints"
  resuming = ckpt_dir.is_dir() and any(ckpt_dir.iterdir())
  cap = None
  # the corpus decides how many documents a window may touch; a resumed run keeps its own cap, and a run of
  # chunklm < 0.3 (saved 0) resumes uncapped, as it was trained
  saved = read_config(workdir).data.max_docs_per_window if resuming and (workdir / CONFIG_FILE).exists() else None
  if saved and not cfg.data.max_docs_per_window:
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_docs_per_window=saved))
  elif saved != 0:
    cfg, cap = with_doc_cap(cfg, units.train)
  changes = None  # what differs from the run's saved config, by the resume rule (train/resume.py)
  if resuming and (workdir / CONFIG_FILE).exists():
    changes = check_resume(workdir, read_config(workdir), cfg, lambda c: setup_state(c, abstract=True)[2],
                           allow_data_change)
  if tok is not None and (workdir / TOKENIZER_FILE).exists() \
      and (workdir / TOKENIZER_FILE).read_bytes() != tok.path.read_bytes():
    raise CheckpointError(f"{workdir} was trained with another tokenizer than {tok.path}; use another --workdir")
  vocab = vocab_kwargs(tok)
  mesh = make_mesh(cfg.mesh)
  shards = batch_shards(mesh)
  check_batch_size(cfg.train.batch_size, mesh)
  _, _, abstract, num_params = setup_state(cfg, abstract=True)
  check_state_fits(abstract, state_shardings(abstract, mesh), num_params)  # before allocating any of it
  graphdef, tx, state, num_params = setup_state(cfg)
  state_sharding = state_shardings(state, mesh)
  state = jax.device_put(state, state_sharding)
  data_iter = iter(train_dataset(units.train, cfg.data.seq_len, cfg.train.batch_size, cfg.train.steps,
                                 cfg.data.seed, cfg.data.prefetch, max_docs=cfg.data.max_docs_per_window or None,
                                 reverse_complement=cfg.data.dna.reverse_complement, **vocab))
  init = None
  if not resuming and cfg.train.init_from:  # a fine-tuning run's first start: another run's parameters
    params, init = load_init(cfg.train.init_from, cfg, state["params"],
                             tok.path.read_bytes() if tok is not None else None)
    state = {**state, "params": jax.device_put(params, state_sharding["params"])}
  is_main = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  ckpt = Checkpointer(ckpt_dir, keep=cfg.train.keep_checkpoints)
  new_stream = changes is not None and bool(changes.data)
  restored = ckpt.restore_latest(state, None if new_stream else data_iter, log=log)
  start = 0
  if init is not None:
    log(f"initialised from {init.describe()}")
  if restored is not None:
    start, state, _ = restored
    log(f"resumed from checkpoint at step {start} in {ckpt_dir}")
    if changes is not None and (changes.free or changes.data):
      log(f"changed on resume: {'; '.join(changes.free + changes.data)}")
    if new_stream:
      log("--allow-data-change: the new data stream starts from its beginning")
  made_by = provenance()
  if init is not None:
    made_by["init_from"] = init.describe()
  elif restored is not None and cfg.train.init_from:  # a resumed fine-tuning run keeps saying where it started
    made_by["init_from"] = header_value(workdir / CONFIG_FILE, "init_from") or cfg.train.init_from
  if is_main:
    (workdir / CONFIG_FILE).write_text("# written by chunklm train\n" + header(made_by) + dump_yaml(cfg))
    if tok is not None and not (workdir / TOKENIZER_FILE).exists():
      shutil.copyfile(tok.path, workdir / TOKENIZER_FILE)  # the run stays usable if the original moves
  log(f"data: {splits.description}" + (f"; {splits.skipped_short} short docs skipped" if splits.skipped_short else ""))
  if cap is not None:
    log(f"windows: {cap.describe()}")
  log(f"model: {num_params:,} parameters, layout {json.dumps(to_dict(cfg.model.layout))}, "
      f"d_model {list(cfg.model.d_model)}")
  if cfg.model.ratio_warmup_steps > cfg.train.steps:
    log(f"warning: model.ratio_warmup_steps {cfg.model.ratio_warmup_steps} > train.steps {cfg.train.steps}: the "
        "ratio curriculum ends before its target reaches model.target_ratio")
  entropy = order0_entropy(splits.valid)
  metrics = MetricsWriter(workdir, resume_step=start, tensorboard=is_main)
  metrics.write(start, "run", made_by)
  if restored is not None and changes is not None and (changes.free or changes.data):
    metrics.write(start, "resume", changes.record())
  skip = cfg.train.nan_policy == "skip"
  frozen = frozen_mask(state["params"], cfg.model, cfg.train.freeze) if cfg.train.freeze else None
  step_fn = on_mesh(make_train_step(graphdef, tx, state_sharding, batch_sharding(mesh), skip_nonfinite=skip,
                                    frozen=frozen), mesh)
  eval_fn = on_mesh(make_eval_step(graphdef), mesh)
  unit = math.lcm(shards, process_count(mesh))
  eval_batch = -(-cfg.eval.batch_size // unit) * unit

  def put_eval(batch):
    return put_batch(local_rows(batch), mesh)

  eval_docs = {}  # max_bytes -> what the model reads: the first max_bytes valid bytes, or their tokens

  def run_eval(max_bytes: int, progress: bool = False) -> dict:
    """Exact BPB on the first `max_bytes` valid bytes (the same text for byte and token models)."""
    if max_bytes not in eval_docs:
      docs = leading_bytes(splits.valid, max_bytes)
      if docs.num_bytes == splits.valid.num_bytes:
        docs = units.valid
      elif tok is not None:
        docs = tokenize(docs, tok)
      eval_docs[max_bytes] = docs
    docs = eval_docs[max_bytes]
    return evaluate(eval_fn, state["params"], docs, cfg.data.seq_len, eval_batch, progress=progress, put=put_eval,
                    **vocab)
  end = cfg.train.steps if stop_after is None else min(cfg.train.steps, start + stop_after)
  schedule = lr_schedule(cfg.train)  # for the log: the base learning rate (before per-level multipliers)
  meta = {"config": to_dict(cfg)}
  step, pending, good_step = start, None, start if restored is not None else None
  state_finite = jax.jit(all_finite)
  skipped = {"in_a_row": 0, "total": 0}  # nan_policy=skip

  def last_good() -> str:
    if good_step is None:
      return f"no checkpoint was written yet in {ckpt_dir}"
    return f"the last good checkpoint is step {good_step} in {ckpt_dir}"
  timer = {"t": time.perf_counter(), "bytes": 0.0}
  # on a terminal a progress bar; in a log file (CI, nohup, SLURM) a plain line every progress.every() seconds
  on_terminal, line_every = progress_lines.on_terminal(), progress_lines.every()
  bar = tqdm(total=cfg.train.steps, initial=start, disable=not progress or not is_main or not on_terminal,
             unit="step", dynamic_ncols=True, file=sys.stderr, mininterval=0.2)
  lines = {"last": time.perf_counter(), "t0": None, "step0": start}  # t0: clock after the compiling first step

  def record(step_done: int, m: dict) -> None:
    m = jax.device_get(m)
    loss = float(m["loss"])
    if skip and float(m["skipped"]):
      skipped["in_a_row"] += 1
      skipped["total"] += 1
      if skipped["in_a_row"] >= cfg.train.nan_skip_limit:
        raise TrainingDiverged(
            f"training diverged at step {step_done}: {skipped['in_a_row']} steps in a row had a non-finite loss or "
            f"gradient and were skipped (train.nan_skip_limit); {last_good()}; lower train.lr or raise "
            "train.warmup_steps")
    elif skip:
      skipped["in_a_row"] = 0
    if not math.isfinite(loss) and not skip:
      raise TrainingDiverged(
          f"training diverged at step {step_done}: loss={loss} grad_norm={float(m['grad_norm']):.3g}; "
          f"{last_good()}; lower train.lr or raise train.warmup_steps")
    now = time.perf_counter()
    stats = {k: float(np.asarray(v)) for k, v in m.items() if np.ndim(v) == 0}
    if skip:
      stats["skipped_total"] = float(skipped["total"])  # every skipped step since this process started
    timer["bytes"] += stats["bytes"]  # text bytes, for token models too
    rate = timer["bytes"] / max(now - timer["t"], 1e-9)
    postfix = {"loss": f"{loss:.3f}", "bpb": f"{stats['bpb']:.3f}", "B/s": f"{rate:,.0f}"}
    postfix.update({k.replace("bytes_per_chunk", "B/chunk"): f"{v:.2f}" for k, v in stats.items()
                    if k.startswith("bytes_per_chunk")})
    bar.set_postfix(postfix, refresh=False)
    bar.update(step_done - bar.n)
    if progress and is_main and not on_terminal and (now - lines["last"] >= line_every or step_done == end):
      lines["last"] = now
      eta = ""
      if lines["t0"] is not None and step_done > lines["step0"]:
        per_step = (now - lines["t0"]) / (step_done - lines["step0"])
        eta = " ETA " + time.strftime("%H:%M:%S", time.gmtime(per_step * (cfg.train.steps - step_done)))
      print(f"step {step_done}/{cfg.train.steps} " + " ".join(f"{k} {v}" for k, v in postfix.items()) + eta,
            file=sys.stderr, flush=True)
    if step_done % cfg.train.log_every == 0 or step_done == end:
      metrics.write(step_done, "train", {**stats, "bytes_per_sec": rate, "lr": float(schedule(step_done - 1))})

  def flush() -> None:
    nonlocal pending
    if pending is not None:
      record(*pending)
      pending = None

  try:
    with _StopFlag() as stop:
      while step < end:
        batch = put_batch(next(data_iter), mesh)
        state, m = step_fn(state, batch)
        step += 1
        if pending is None and step == start + 1:
          record(step, m)  # the first step includes compilation: restart the clock after it
          timer.update(t=time.perf_counter(), bytes=0.0)
          lines.update(t0=time.perf_counter(), step0=step)
        else:
          flush()
          pending = (step, m)
        if step % cfg.train.checkpoint_every == 0 or step == end or stop.set:
          flush()
          if not bool(state_finite(state)):  # the loss is taken before the update: check what would be saved
            raise TrainingDiverged(f"training diverged at step {step}: the parameters or optimizer state are not "
                                   f"finite after the update; {last_good()}; lower train.lr or raise "
                                   "train.warmup_steps")
          ckpt.save(step, state, data_iter, meta)
          good_step = step
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
          flush()
          res = run_eval(cfg.eval.max_bytes)
          metrics.write(step, "valid", _valid_record(res))
          bar.write(f"step {step}: valid bpb {res['bpb']:.4f} ({int(res['bytes']):,} bytes)")
        if stop.set:
          log(f"received SIGTERM: saved checkpoint at step {step}; re-run the same command to resume")
          break
      flush()
  finally:  # a crash or Ctrl-C still completes the checkpoints already started
    bar.close()
    ckpt.close()
    if sys.exc_info()[0] is not None:
      metrics.close()
  finished = step >= cfg.train.steps
  valid = {}
  if finished:
    valid = run_eval(cfg.eval.final_max_bytes, progress=progress and is_main)
    metrics.write(step, "valid", _valid_record(valid))
  metrics.close()
  if is_main:
    plot_curves(workdir, targets=cfg.model.target_ratio if cfg.model.num_stages else ())
  run = TrainedRun(workdir, cfg, graphdef, state["params"], step, tok)
  return TrainResult(run, finished, stop.set, valid, entropy, num_params, splits.valid)


def _valid_record(res: dict) -> dict:
  out = {"bpb": res["bpb"], "bytes": res["bytes"], "predicted": res["predicted"]}
  out.update({k: v for k, v in res.items() if k.startswith(("bytes_per_chunk", "bytes_per_position"))})
  return out

