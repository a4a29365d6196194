"""What a training run shows and keeps as it goes: progress, metrics.jsonl, TensorBoard, and the NaN policy.

One writer per run: only process 0 of a multi-host run draws progress or writes metrics (each record once, in step
order); the other processes compute the same global metrics and keep quiet. Device metrics are pulled one step
behind the dispatched step (`dispatched`), so the host never waits for the device except at a checkpoint or an
evaluation (`flush`); the first step is recorded at once, and the throughput clock restarts after it, since it
includes compilation. On a terminal progress is a bar; in a log file (CI, nohup, SLURM) a plain line every
`progress.every()` seconds with an ETA.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Literal

import jax
import numpy as np
from tqdm import tqdm

from chunklm import progress as progress_lines
from chunklm.errors import UserError
from chunklm.run.metrics import MetricsWriter
from chunklm.run.workdir import RunDir

ADVICE = "lower train.lr or raise train.warmup_steps"


class TrainingDiverged(UserError):
  exit_code = 3


class NanPolicy:
  """`train.nan_policy`: `stop` raises at the first non-finite loss; `skip` lets the step skip the update (the train
  step does) and raises only after `limit` skipped steps in a row. `last_good()` names the checkpoint to go back to."""

  def __init__(self, policy: Literal["stop", "skip"], limit: int, last_good: Callable[[], str]):
    self.skip, self.limit, self.last_good = policy == "skip", limit, last_good
    self.in_a_row = self.total = 0

  def check(self, step: int, m: dict) -> None:
    """Raises TrainingDiverged when the policy says stop; `m` are the step's host metrics."""
    loss = float(m["loss"])
    if self.skip and float(m["skipped"]):
      self.in_a_row += 1
      self.total += 1
      if self.in_a_row >= self.limit:
        raise TrainingDiverged(
          f"training diverged at step {step}: {self.in_a_row} steps in a row had a non-finite loss or gradient and "
          f"were skipped (train.nan_skip_limit); {self.last_good()}; {ADVICE}"
        )
    elif self.skip:
      self.in_a_row = 0
    if not math.isfinite(loss) and not self.skip:
      grad = f" grad_norm={float(m['grad_norm']):.3g}" if "grad_norm" in m else ""
      raise TrainingDiverged(f"training diverged at step {step}: loss={loss}{grad}; {self.last_good()}; {ADVICE}")

  def state_diverged(self, step: int) -> TrainingDiverged:
    """The error for parameters or optimizer state that are not finite after an update (never saved)."""
    return TrainingDiverged(
      f"training diverged at step {step}: the parameters or optimizer state are not finite "
      f"after the update; {self.last_good()}; {ADVICE}"
    )


class Reporter:
  """Progress and metrics of one run from step `start` to `end` (of `total`).

  `show`: the metrics shown beside the progress (besides the throughput and bytes per chunk); `lr`: the learning-rate
  schedule, logged with each train record; `nan`: the NaN policy applied to every step's metrics.
  """

  def __init__(
    self,
    run: RunDir,
    *,
    total: int,
    start: int,
    end: int,
    log_every: int,
    progress: bool = True,
    show: tuple[str, ...] = ("loss", "bpb"),
    lr: Callable | None = None,
    nan: NanPolicy | None = None,
  ):
    self.total, self.start, self.end, self.log_every = total, start, end, log_every
    self.show_keys, self.lr, self.nan = show, lr, nan
    self.is_main = jax.process_index() == 0
    self.metrics = MetricsWriter(run.path, resume_step=start) if self.is_main else None
    on_terminal = progress_lines.on_terminal()
    self.bar = tqdm(
      total=total,
      initial=start,
      disable=not progress or not self.is_main or not on_terminal,
      unit="step",
      dynamic_ncols=True,
      file=sys.stderr,
      mininterval=0.2,
    )
    self.lines = progress and self.is_main and not on_terminal
    self.line_every, self.last_line = progress_lines.every(), time.perf_counter()
    self.clock, self.bytes = time.perf_counter(), 0.0
    self.t0: float | None = None  # the clock after the first (compiling) step, for the ETA
    self.pending: tuple[int, dict] | None = None

  def write(self, step: int, split: str, values: dict) -> None:
    """A record in metrics.jsonl (and TensorBoard), from process 0 only."""
    if self.metrics is not None:
      self.metrics.write(step, split, values)

  def sync(self) -> None:
    """Makes the records so far durable in the workdir (a rewrite of metrics.jsonl on object storage)."""
    if self.metrics is not None:
      self.metrics.sync()

  def note(self, text: str) -> None:
    """A line between progress redraws (process 0)."""
    if self.is_main:
      self.bar.write(text)

  def dispatched(self, step: int, m: dict) -> None:
    """The device metrics of the step just dispatched; recorded when the next one is (or at `flush`)."""
    if self.pending is None and step == self.start + 1:
      self._record(step, m)  # the first step includes compilation: restart the clock after it
      self.clock, self.bytes = time.perf_counter(), 0.0
      self.t0 = time.perf_counter()
      return
    self.flush()
    self.pending = (step, m)

  def flush(self) -> None:
    if self.pending is not None:
      step, m = self.pending
      self.pending = None
      self._record(step, m)

  def _record(self, step: int, m: dict) -> None:
    m = jax.device_get(m)
    if self.nan is not None:
      self.nan.check(step, m)
    stats = {k: float(np.asarray(v)) for k, v in m.items() if np.ndim(v) == 0}
    if self.nan is not None and self.nan.skip:
      stats["skipped_total"] = float(self.nan.total)  # every skipped step since this process started
    postfix = {k: f"{stats[k]:.3f}" for k in self.show_keys if k in stats}
    if "bytes" in stats:  # text bytes, for token models too
      self.bytes += stats["bytes"]
      stats["bytes_per_sec"] = self.bytes / max(time.perf_counter() - self.clock, 1e-9)
      postfix["B/s"] = f"{stats['bytes_per_sec']:,.0f}"
    postfix.update(
      {k.replace("bytes_per_chunk", "B/chunk"): f"{v:.2f}" for k, v in stats.items() if k.startswith("bytes_per_chunk")}
    )
    self.show(step, postfix)
    if step % self.log_every == 0 or step == self.end:
      rate = {"bytes_per_sec": stats.pop("bytes_per_sec")} if "bytes_per_sec" in stats else {}
      lr = {"lr": float(self.lr(step - 1))} if self.lr is not None else {}
      self.write(step, "train", {**stats, **rate, **lr})

  def show(self, step: int, postfix: dict) -> None:
    """Moves the progress to `step` with `postfix` beside it (for loops that record metrics themselves)."""
    self.bar.set_postfix(postfix, refresh=False)
    self.bar.update(step - self.bar.n)
    now = time.perf_counter()
    if self.lines and (now - self.last_line >= self.line_every or step == self.end):
      self.last_line = now
      eta = ""
      if self.t0 is not None and step > self.start + 1:
        per_step = (now - self.t0) / (step - self.start - 1)
        eta = " ETA " + time.strftime("%H:%M:%S", time.gmtime(per_step * (self.total - step)))
      print(
        f"step {step}/{self.total} " + " ".join(f"{k} {v}" for k, v in postfix.items()) + eta,
        file=sys.stderr,
        flush=True,
      )

  def close_progress(self) -> None:
    self.bar.close()

  def close(self, publish: bool = True) -> None:
    self.bar.close()
    if self.metrics is not None:
      self.metrics.close(publish)
      self.metrics = None
