"""A run directory: the one place that knows the file names inside a workdir.

Every command that reads or writes a run (`train`, `eval`, `mrt5`, `classify`, `compare`, reports, benches) asks a
`RunDir` for its paths instead of spelling them, so the layout can be read in one screen and moved in one place:

    <workdir>/
      config.yaml        the resolved config (train, mrt5 train, classify train)
      checkpoints/<step>/ orbax checkpoints with checksums (run/checkpoint.py, run/integrity.py)
      metrics.jsonl      one JSON record per line: {"step", "split", ...} (run/metrics.py)
      tb/                TensorBoard event files
      loss.png           the training curves
      cache/             memory-mapped corpora of MrT5 and compare (for a gs:// workdir: a local folder,
                         ~/.cache/chunklm/<hash of the URL>)
      tokenizer.model    a token model's copy of its tokenizer
      eval.json          MrT5: the final evaluation
      classify.json      a classifier's settings, classes and start
      origin.json        where an imported or converted run's parameters came from (it cannot resume)
      .lock              held while a process writes the run (run/lock.py; a lease object on gs://)

The workdir may be a local path or a `gs://bucket/prefix` URL: every path below is an `etils.epath.Path`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from etils import epath

from chunklm.storage.paths import is_remote, location

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
LM_EVAL = "lm_eval"  # the harness's results JSON of each `chunklm lm-eval`


@dataclasses.dataclass(frozen=True)
class RunDir:
  """The paths of one run's files; creating the object touches nothing on disk."""

  path: epath.Path  # a local path or a gs:// URL (storage/paths.py)

  def __init__(self, path: str | os.PathLike | RunDir):
    object.__setattr__(self, "path", path.path if isinstance(path, RunDir) else location(path, "--workdir"))

  def __str__(self) -> str:
    return str(self.path)

  @property
  def name(self) -> str:
    return self.path.name

  @property
  def config(self) -> epath.Path:
    return self.path / CONFIG

  @property
  def checkpoints(self) -> epath.Path:
    return self.path / CHECKPOINTS

  @property
  def metrics(self) -> epath.Path:
    return self.path / METRICS

  @property
  def tensorboard(self) -> epath.Path:
    return self.path / TENSORBOARD

  @property
  def loss_plot(self) -> epath.Path:
    return self.path / LOSS_PLOT

  @property
  def cache(self) -> epath.Path:
    """Where corpora are memory-mapped: a local folder even for a workdir in object storage (no memory maps there)."""
    if not is_remote(self.path):
      return self.path / CACHE
    digest = hashlib.sha256(os.fspath(self.path).encode()).hexdigest()[:16]
    return epath.Path(os.path.expanduser("~/.cache/chunklm")) / digest

  @property
  def tokenizer(self) -> epath.Path:
    return self.path / TOKENIZER

  @property
  def eval_json(self) -> epath.Path:
    return self.path / EVAL

  @property
  def classifier(self) -> epath.Path:
    return self.path / CLASSIFIER

  @property
  def origin(self) -> epath.Path:
    return self.path / ORIGIN

  @property
  def lm_eval(self) -> epath.Path:
    return self.path / LM_EVAL

  @property
  def lock(self) -> epath.Path:
    return self.path / LOCK

  def has_checkpoints(self) -> bool:
    """Whether anything (a finished or an interrupted save) stands in checkpoints/."""
    return self.checkpoints.is_dir() and any(self.checkpoints.iterdir())


def is_checkpoint_dir(path: epath.Path) -> bool:
  """Whether `path` names one step's checkpoint (`<run>/checkpoints/<step>`), as --init-from may."""
  return path.name.isdigit() and path.parent.name == CHECKPOINTS
