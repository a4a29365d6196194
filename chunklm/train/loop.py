"""The training loop of the runs whose objective has its own step (`chunklm mrt5 train`, `chunklm mergedna
train`): steps `start` to train.steps over batches that are a function of the step, with checkpoints every
train.checkpoint_every steps and at the end, metrics.jsonl and the progress line (train/reporter.py), a stop on the
first non-finite loss, and a checkpoint then `Preempted` on SIGTERM. Re-running the same command resumes exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from chunklm.config.schema import TrainConfig
from chunklm.run.checkpoint import Checkpointer
from chunklm.run.lock import WorkdirBusy
from chunklm.run.workdir import RunDir
from chunklm.train.reporter import NanPolicy, Reporter
from chunklm.train.signals import Preempted, StopFlag

State = Any  # a pytree of arrays (parameters, optimizer state, ...), what the checkpoints hold
Step = Callable[[State, dict, jax.Array], tuple[State, dict]]  # (state, batch, step index) -> (state, metrics)


def run_steps(
  run: RunDir,
  ckpt: Checkpointer,
  train: TrainConfig,
  state: State,
  start: int,
  step_fn: Step,
  batch_fn: Callable[[int], dict],
  *,
  show: tuple[str, ...],
  progress: bool,
) -> State:
  """Steps `start` to train.steps (module docstring); the final state."""
  good = [start] if start else []
  nan = NanPolicy(
    "stop", 1, lambda: f"the last good checkpoint is step {good[-1]}" if good else "no checkpoint was written yet"
  )
  reporter = Reporter(
    run,
    total=train.steps,
    start=start,
    end=train.steps,
    log_every=train.log_every,
    progress=progress,
    show=show,
    nan=nan,
  )
  try:
    with StopFlag() as stop:
      for k in range(start, train.steps):
        batch = jax.tree.map(jnp.asarray, batch_fn(k))
        state, out = step_fn(state, batch, jnp.int32(k))
        done = k + 1
        reporter.dispatched(done, out)
        if done % train.checkpoint_every == 0 or done == train.steps or stop.set:
          reporter.flush()
          ckpt.save(done, state, None, {"step": done})
          reporter.sync()  # metrics.jsonl in a bucket is rewritten here
          good.append(done)
        if stop.set:
          raise Preempted(f"received SIGTERM: saved checkpoint at step {done}; re-run the same command to resume")
      reporter.flush()
  except BaseException as e:
    reporter.close(publish=not isinstance(e, WorkdirBusy))  # a lost lease: nothing more into the workdir
    raise
  reporter.close()
  return state
