"""Metric sinks: a JSONL file (what tests and plots read), TensorBoard event files, and a loss-curve PNG.

On resume, records past the resumed step (and evaluations at it, which are redone) are dropped from the JSONL first,
so a killed-and-resumed run has exactly the records of a straight run.

In object storage (a `gs://` workdir), where objects cannot be appended to, the records are kept in memory and
metrics.jsonl is rewritten whole at each `sync` (the trainer's checkpoints and evaluations, and `close`); TensorBoard
writes its events to a local staging folder whose files are copied into `tb/` at the same moments. A crash loses at
most the records since the last checkpoint, and the resume from that checkpoint writes them again.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
from etils import epath
from tensorboardX import SummaryWriter

from chunklm.plots import figure, save
from chunklm.run.workdir import RunDir
from chunklm.storage.paths import is_remote, location


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  where = location(path)
  if not where.exists():
    return []
  return [json.loads(line) for line in where.read_text().splitlines() if line.strip()]


class MetricsWriter:
  def __init__(self, workdir: str | os.PathLike, resume_step: int = 0, tensorboard: bool = True):
    self.run = RunDir(workdir)
    self.path = self.run.metrics
    self.remote = is_remote(self.path)
    kept = [
      json.dumps(r) + "\n"
      for r in read_jsonl(self.path)
      if r.get("step", 0) < resume_step or (r.get("step", 0) == resume_step and r.get("split") == "train")
    ]
    self._lines = kept  # what metrics.jsonl holds (written whole on object storage)
    self._file = None
    self._tb = None
    self._staging: tempfile.TemporaryDirectory | None = None
    self.path.write_text("".join(kept))
    if not self.remote:
      self._file = open(self.path, "a")
    if tensorboard:
      if self.remote:
        self._staging = tempfile.TemporaryDirectory(prefix="chunklm-tb-")
      tb_dir = self._staging.name if self._staging else os.fspath(self.run.tensorboard)
      self._tb = SummaryWriter(tb_dir, purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, split: str, values: dict) -> None:
    record = {"step": int(step), "split": split}
    record.update({k: _plain(v) for k, v in values.items()})
    line = json.dumps(record) + "\n"
    if self._file is not None:
      self._file.write(line)
      self._file.flush()
    else:
      self._lines.append(line)
    if self._tb is not None:
      for k, v in record.items():
        if k not in ("step", "split") and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(f"{split}/{k}", v, step)

  def sync(self) -> None:
    """Makes what was written so far durable in the workdir (on a local disk every record already is)."""
    if not self.remote:
      return
    if self._tb is not None:
      self._tb.flush()
    self._publish()

  def _publish(self) -> None:
    self.path.write_text("".join(self._lines))
    if self._staging is not None:
      for f in sorted(Path(self._staging.name).iterdir()):
        (self.run.tensorboard / f.name).write_bytes(f.read_bytes())

  def close(self, publish: bool = True) -> None:
    """Closes the sinks; `publish=False` (a run that lost its workdir's lease) leaves the workdir in a bucket as the
    last `sync` left it."""
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
    if self.remote and publish:
      self._publish()
    if self._staging is not None:
      self._staging.cleanup()


def _plain(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


def _smooth(values: list[float], alpha: float = 0.1) -> list[float]:
  """Exponential moving average (with bias correction), for readable noisy curves."""
  out, avg = [], 0.0
  for i, v in enumerate(values, 1):
    avg = (1 - alpha) * avg + alpha * v
    out.append(avg / (1 - (1 - alpha) ** i))
  return out


def plot_curves(
  workdir: str | os.PathLike, out: str | os.PathLike | None = None, targets: tuple[float, ...] = ()
) -> epath.Path | None:
  """loss.png: training and valid BPB, and H-Net bytes per chunk per stage (dashed: the targets N, compounded)."""
  run = RunDir(workdir)
  records = read_jsonl(run.metrics)
  train = [r for r in records if r["split"] == "train"]
  valid = [r for r in records if r["split"] == "valid"]
  if not train:
    return None

  chunk_keys = sorted({k for r in train for k in r if k.startswith("bytes_per_chunk")})
  fig, axes = figure(1, 2 if chunk_keys else 1, figsize=(11 if chunk_keys else 6, 4), squeeze=False)
  ax = axes[0, 0]
  steps = [r["step"] for r in train]
  ax.plot(steps, [r["bpb"] for r in train], lw=0.8, alpha=0.35, color="C0")
  ax.plot(steps, _smooth([r["bpb"] for r in train]), lw=1.5, color="C0", label="train BPB (smoothed)")
  if valid:
    ax.plot([r["step"] for r in valid], [r["bpb"] for r in valid], "o-", label="valid BPB")
  ax.set_xlabel("step")
  ax.set_ylabel("bits per byte")
  ax.set_title(run.name)
  ax.grid(alpha=0.3)
  ax.legend()
  if chunk_keys:
    ax = axes[0, 1]
    target = 1.0
    for i, k in enumerate(chunk_keys):
      values = [r[k] for r in train if k in r]
      (line,) = ax.plot([r["step"] for r in train if k in r], _smooth(values), label=f"{k} (smoothed)")
      if i < len(targets):
        target *= targets[i]
        ax.axhline(target, ls="--", lw=1, color=line.get_color(), label=f"target {target:g}")
    if targets:
      ax.set_ylim(0, 2.5 * target)
    ax.set_xlabel("step")
    ax.set_ylabel("bytes per chunk")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  out = location(out or run.loss_plot)
  save(fig, out, dpi=100)
  return out
