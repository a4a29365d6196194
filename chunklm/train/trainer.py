"""The training loop: plan (train/plan.py) -> state on the mesh -> steps, checkpoints, evaluations -> result.

Re-running `train` in a workdir that holds a checkpoint resumes exactly: parameters, optimizer, step, RNG and the
data iterator's position are restored, and metrics past the checkpoint are dropped, so N steps + kill + resume + N
steps equals 2N straight steps. What the run shows and keeps as it goes (progress, metrics, the NaN policy) is the
reporter's (train/reporter.py); the file names are the run directory's (run/workdir.py); docs/training_run.md walks
through the whole flow. Training ends with a checkpoint and an evaluation on the valid split, and returns the trained
run in memory; what is shown of it (a sample, a boundary picture) is the caller's to compose
(`chunklm.eval.summary`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from chunklm import logs
from chunklm.config import Config, to_dict
from chunklm.data.corpus import Documents, order0_entropy
from chunklm.data.lanes import taken_bytes
from chunklm.run.checkpoint import Checkpointer
from chunklm.run.imported import refuse_resume
from chunklm.run.kind import require_new_or
from chunklm.run.lock import WorkdirBusy, workdir_lock
from chunklm.run.metrics import plot_curves
from chunklm.run.trained import TrainedRun
from chunklm.run.workdir import RunDir
from chunklm.storage.paths import ensure_dir
from chunklm.train.init_from import InitSource, check_source, load_init
from chunklm.train.optim import lr_schedule
from chunklm.train.parts import frozen_mask
from chunklm.train.plan import RunPlan, announce, plan_run
from chunklm.train.reporter import NanPolicy, Reporter, TrainingDiverged
from chunklm.train.sharding import (
  batch_sharding,
  check_batch_size,
  check_state_fits,
  make_mesh,
  on_mesh,
  put_batch,
  state_shardings,
)
from chunklm.train.signals import StopFlag
from chunklm.train.state import setup_state
from chunklm.train.step import all_finite, make_train_step
from chunklm.train.validation import Validation, valid_record

__all__ = ["TrainResult", "TrainingDiverged", "setup_state", "train"]


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


def train(
  cfg: Config,
  workdir: str | Path,
  *,
  stop_after: int | None = None,
  progress: bool = True,
  log=logs.info,
  allow_data_change: bool = False,
) -> TrainResult:
  """Trains (or resumes) the run in `workdir`, holding its lock throughout (process 0 of a multi-host run)."""
  run = RunDir(workdir)
  if cfg.train.init_from and not run.has_checkpoints():  # a resume reads its own checkpoints, not the source
    check_source(cfg.train.init_from)
  if require_new_or(run.path, ("lm", "params"), "--workdir", "chunklm train") == "params":
    refuse_resume(run.path)  # parameters only: fine-tuned with --init-from (before the lock: nothing is written)
  with workdir_lock(run.path, enabled=jax.process_index() == 0) as lock:
    plan = plan_run(cfg, run, allow_data_change=allow_data_change)
    return _train(plan, stop_after=stop_after, progress=progress, log=log, lock=lock)


def _train(plan: RunPlan, *, stop_after: int | None, progress: bool, log, lock) -> TrainResult:
  cfg, run = plan.cfg, plan.run
  mesh = make_mesh(cfg.mesh)
  graphdef, tx, state, sharding, num_params = _placed_state(cfg, mesh)
  data_iter = plan.train_stream()
  state, init = (state, None) if plan.resuming else _initialised(plan, state, sharding)  # a bad source: nothing written
  ensure_dir(run.path)
  ckpt = Checkpointer(run.checkpoints, keep=cfg.train.keep_checkpoints, guard=lock.check)
  restored = ckpt.restore_latest(state, None if plan.new_stream else data_iter)
  start, state = (0, state) if restored is None else restored[:2]
  if restored is None and plan.resuming:  # no complete checkpoint (killed while writing the first): start over
    state, init = _initialised(plan, state, sharding)
  made_by = announce(plan, init, start if restored is not None else None, num_params, log)
  end = cfg.train.steps if stop_after is None else min(cfg.train.steps, start + stop_after)
  saver = _Saver(ckpt, run.checkpoints, {"config": to_dict(cfg)}, start if restored is not None else None)
  nan = NanPolicy(cfg.train.nan_policy, cfg.train.nan_skip_limit, saver.last_good)
  reporter = _reporter(plan, start, end, progress, nan, made_by, resumed=restored is not None)
  frozen = frozen_mask(state["params"], cfg.model, cfg.train.freeze) if cfg.train.freeze else None
  step_fn = on_mesh(
    make_train_step(graphdef, tx, sharding, batch_sharding(mesh), skip_nonfinite=nan.skip, frozen=frozen), mesh
  )
  validate = Validation(plan, graphdef, mesh)
  if start < end:  # silent for minutes on a big model; XLA's "Very slow compile?" banner is a notice, not an error
    log(f"compiling the training step (step {start + 1} of {cfg.train.steps} waits for it) ...")
  step, stop, lost = start, StopFlag(), False
  try:
    with stop:
      while step < end:
        state, m = step_fn(state, put_batch(next(data_iter), mesh))
        step += 1
        reporter.dispatched(step, m)
        if step % cfg.train.checkpoint_every == 0 or step == end or stop.set:
          reporter.flush()
          saver.save(step, state, data_iter, nan)  # refused by the lock's guard once a lease is lost
          reporter.sync()
          if len(plan.data.parts) > 1:
            mix = mixture_record(plan, data_iter)
            reporter.write(step, "mixture", mix)
            shares = ", ".join(f"{k} {v['share']:.1%} (weight {v['weight']:.1%})" for k, v in mix.items())
            reporter.note(f"step {step}: training bytes so far: {shares}")
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
          reporter.flush()
          res = validate(state["params"], cfg.eval.max_bytes)
          reporter.write(step, "valid", valid_record(res))
          reporter.note(f"step {step}: valid bpb {res['bpb']:.4f} ({int(res['bytes']):,} bytes){_by_source(res)}")
          reporter.sync()
        if stop.set:
          log(f"received SIGTERM: saved checkpoint at step {step}; re-run the same command to resume")
          break
      reporter.flush()
  except BaseException as e:
    lost = isinstance(e, WorkdirBusy)  # the lease went to another trainer: write nothing more into the workdir
    reporter.close(publish=not lost)
    raise
  finally:  # a crash or Ctrl-C still completes the checkpoints already started
    ckpt.close(record=not lost)
    data_iter.close()  # stops the prefetch thread
  lock.check()  # nor the final evaluation and plot
  return _finish(plan, reporter, validate, graphdef, state["params"], step, stop.set, num_params, progress)


def _by_source(res: dict) -> str:
  return "; " + ", ".join(f"{k} {v:.4f}" for k, v in res["sources"].items()) if "sources" in res else ""


def mixture_record(plan: RunPlan, data_iter) -> dict:
  """The shares of training bytes each source of a mixture has had so far (this process), beside its weight."""
  taken = taken_bytes(data_iter.get_state())
  total = max(sum(taken), 1)
  return {p.name: {"share": t / total, "weight": p.weight, "bytes": t} for p, t in zip(plan.data.parts, taken)}


def _reporter(
  plan: RunPlan, start: int, end: int, progress: bool, nan: NanPolicy, made_by: dict, resumed: bool
) -> Reporter:
  """The run's reporter, with the `run` record (provenance) and, on a resume that changed settings, a `resume` one."""
  cfg, changes = plan.cfg, plan.changes
  reporter = Reporter(
    plan.run,
    total=cfg.train.steps,
    start=start,
    end=end,
    log_every=cfg.train.log_every,
    progress=progress,
    lr=lr_schedule(cfg.train),
    nan=nan,
  )
  reporter.write(start, "run", made_by)
  if resumed and changes is not None and (changes.free or changes.data):
    reporter.write(start, "resume", changes.record())
  return reporter


def _finish(
  plan: RunPlan,
  reporter: Reporter,
  validate: Validation,
  graphdef,
  params,
  step: int,
  signalled: bool,
  num_params: int,
  progress: bool,
) -> TrainResult:
  """A finished run's final evaluation and loss plot; the result of any run."""
  cfg = plan.cfg
  reporter.close_progress()
  finished = step >= cfg.train.steps
  valid = validate(params, cfg.eval.final_max_bytes, progress=progress and reporter.is_main) if finished else {}
  if finished:
    reporter.write(step, "valid", valid_record(valid))
  reporter.close()
  if jax.process_index() == 0:
    plot_curves(plan.run.path, targets=cfg.model.target_ratio if cfg.model.num_stages else ())
  trained = TrainedRun(plan.run.path, cfg, graphdef, params, step, plan.tokenizer)
  return TrainResult(trained, finished, signalled, valid, order0_entropy(plan.data.valid), num_params, plan.data.valid)


def _placed_state(cfg: Config, mesh):
  """(graphdef, optimizer, train state on the mesh, its shardings, parameter count); refuses a state that cannot fit
  the devices before allocating any of it."""
  check_batch_size(cfg.train.batch_size, mesh)
  _, _, abstract, num_params = setup_state(cfg, abstract=True)
  check_state_fits(abstract, state_shardings(abstract, mesh), num_params)
  graphdef, tx, state, num_params = setup_state(cfg)
  sharding = state_shardings(state, mesh)
  return graphdef, tx, jax.device_put(state, sharding), sharding, num_params


def _initialised(plan: RunPlan, state: dict, sharding: dict) -> tuple[dict, InitSource | None]:
  """A fine-tuning run that has no complete checkpoint yet takes another run's parameters (`train.init_from`);
  resuming from a checkpoint never does."""
  cfg, tok = plan.cfg, plan.tokenizer
  if not cfg.train.init_from:
    return state, None
  params, init = load_init(
    cfg.train.init_from, cfg, state["params"], tok.path.read_bytes() if tok and tok.path else None
  )
  return {**state, "params": jax.device_put(params, sharding["params"])}, init


class _Saver:
  """Checkpoints after checking that what would be saved is finite (the loss is taken before the update), and
  remembers the last good step for the divergence messages."""

  def __init__(self, ckpt: Checkpointer, where: Path, meta: dict, good_step: int | None):
    self.ckpt, self.where, self.meta, self.good_step = ckpt, where, meta, good_step
    self.state_finite = jax.jit(all_finite)

  def last_good(self) -> str:
    if self.good_step is None:
      return f"no checkpoint was written yet in {self.where}"
    return f"the last good checkpoint is step {self.good_step} in {self.where}"

  def save(self, step: int, state: dict, data_iter, nan: NanPolicy) -> None:
    if not bool(self.state_finite(state)):
      raise nan.state_diverged(step)
    self.ckpt.save(step, state, data_iter, self.meta)
    self.good_step = step
