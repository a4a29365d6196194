"""A run directory: the one place that knows the file names inside a workdir.

Every command that reads or writes a run (`train`, `eval`, `mrt5`, `classify`, `compare`, reports, benches) asks a
`RunDir` for its paths instead of spelling them, so the layout can be read in one screen and moved in one place:

    <workdir>/
      config.yaml        the resolved config (train, mrt5 train, classify train)
      checkpoints/<step>/ orbax checkpoints with SHA-256 checksums (run/checkpoint.py)
      metrics.jsonl      one JSON record per line: {"step", "split", ...} (run/metrics.py)
      tb/                TensorBoard event files
      loss.png           the training curves
      cache/             memory-mapped corpora (data.mmap_min_mb)
      tokenizer.model    a token model's copy of its tokenizer
      eval.json          MrT5: the final evaluation
      classify.json      a classifier's settings, classes and start
      origin.json        where an imported or converted run's parameters came from (it cannot resume)
      .lock              held while a process writes the run (run/lock.py)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
LOSS_PLOT = "loss.png"
CACHE = "cache"
TOKENIZER = "tokenizer.model"
EVAL = "eval.json"
CLASSIFIER = "classify.json"
ORIGIN = "origin.json"
LOCK = ".lock"


@dataclasses.dataclass(frozen=True)
class RunDir:
  """The paths of one run's files; creating the object touches nothing on disk."""

  path: Path

  def __init__(self, path: str | Path | RunDir):
    object.__setattr__(self, "path", path.path if isinstance(path, RunDir) else Path(path))

  def __str__(self) -> str:
    return str(self.path)

  @property
  def name(self) -> str:
    return self.path.name

  @property
  def config(self) -> Path:
    return self.path / CONFIG

  @property
  def checkpoints(self) -> Path:
    return self.path / CHECKPOINTS

  @property
  def metrics(self) -> Path:
    return self.path / METRICS

  @property
  def tensorboard(self) -> Path:
    return self.path / TENSORBOARD

  @property
  def loss_plot(self) -> Path:
    return self.path / LOSS_PLOT

  @property
  def cache(self) -> Path:
    return self.path / CACHE

  @property
  def tokenizer(self) -> Path:
    return self.path / TOKENIZER

  @property
  def eval_json(self) -> Path:
    return self.path / EVAL

  @property
  def classifier(self) -> Path:
    return self.path / CLASSIFIER

  @property
  def origin(self) -> Path:
    return self.path / ORIGIN

  @property
  def lock(self) -> Path:
    return self.path / LOCK

  def has_checkpoints(self) -> bool:
    """Whether anything (a finished or an interrupted save) stands in checkpoints/."""
    return self.checkpoints.is_dir() and any(self.checkpoints.iterdir())


def is_checkpoint_dir(path: Path) -> bool:
  """Whether `path` names one step's checkpoint (`<run>/checkpoints/<step>`), as --init-from may."""
  return path.name.isdigit() and path.parent.name == CHECKPOINTS
