"""What a directory holds, said once: every command that opens a run, or writes one, asks here first.

A directory given as a run is one of these kinds, told apart by the files each command writes (run/workdir.py):

  lm          `chunklm train`: config.yaml of a language model (sections model, data, train, ...)
  params      `chunklm import` / `convert from-hnet`: a language model's parameters only (origin.json beside it)
  classifier  `chunklm classify train`: classify.json (or a config.yaml that says it was written by classify)
  mrt5        `chunklm mrt5 train`: config.yaml with an `mrt5` section
  mergedna    `chunklm mergedna train`: config.yaml with a `mergedna` section
  comparison  `chunklm compare` / `mrt5 compare`: summary.json and report.md over one directory per model
  new         nothing there yet, or an empty directory
  other       a file, or a directory holding none of the above

`require` turns a kind a command cannot use into one line naming what the directory is, which command made it and
what the command wants instead; `check_output` refuses an output that would replace one of a run's own files, or
that cannot be written at all.
Both read a few small files and nothing else (no checkpoint, no jax).
"""

from __future__ import annotations

import os
from typing import Literal

from etils import epath

from chunklm.config import read_yaml
from chunklm.errors import CheckpointError, UserError
from chunklm.run import workdir as layout
from chunklm.run.workdir import RunDir
from chunklm.storage.objects import filesystem
from chunklm.storage.paths import is_remote, location

Kind = Literal["lm", "params", "classifier", "mrt5", "mergedna", "comparison", "new", "other"]

# what each kind is, in the messages
DESCRIBED: dict[str, str] = {
  "lm": "a language-model run (made by `chunklm train`)",
  "params": "a language model's parameters only (made by `chunklm import` or `convert from-hnet`)",
  "classifier": "a classifier (made by `chunklm classify train`)",
  "mrt5": "an MrT5 run (made by `chunklm mrt5 train`)",
  "mergedna": "a MergeDNA run (made by `chunklm mergedna train`)",
  "comparison": "a comparison of several runs (made by `chunklm compare`; pass one of its model directories)",
  "new": "empty",
  "other": "not a run",
}
CLASSIFIER_HEADER = "# written by chunklm classify train"
RUN_FILES = (
  layout.CONFIG,
  layout.CHECKPOINTS,
  layout.METRICS,
  layout.TENSORBOARD,
  layout.LOSS_PLOT,
  layout.CACHE,
  layout.TOKENIZER,
  layout.EVAL,
  layout.CLASSIFIER,
  layout.ORIGIN,
  layout.LOCK,
)


def kind_of(path: str | os.PathLike) -> Kind:
  """The kind of run `path` holds (see the module docstring)."""
  where = location(path)
  names = _entries(where)
  if names is None:
    return "other"  # a file
  run = RunDir(where)
  if layout.CLASSIFIER in names:
    return "classifier"
  if layout.CONFIG in names:
    return _config_kind(run)
  if {"summary.json", "report.md"} <= names:
    return "comparison"
  return "other" if names else "new"


def _entries(where: epath.Path) -> set[str] | None:
  """The names directly inside `where` (empty when nothing is there), or None for a file. In a bucket, one fresh
  listing of the prefix: folders are only prefixes there, and a cached listing may predate another process's
  writes."""
  if is_remote(where):
    fs, rest = filesystem(where)
    fs.invalidate_cache(rest)
    try:
      return {name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(rest, detail=False) if name.rstrip("/") != rest}
    except FileNotFoundError:
      return set()
  if not where.exists():
    return set()
  if not where.is_dir():
    return None
  return {p.name for p in where.iterdir()}


def _config_kind(run: RunDir) -> Kind:
  """The kind of a directory holding config.yaml; a config.yaml that cannot be read is its own one-line error
  (invalid YAML, over the size allowed: config/untrusted.py), not "not a run"."""
  with run.config.open("rb") as f:
    first = f.read(len(CLASSIFIER_HEADER))
  if first == CLASSIFIER_HEADER.encode():
    return "classifier"  # killed before it wrote classify.json
  sections = read_yaml(run.config)
  if "mrt5" in sections:
    return "mrt5"
  if "mergedna" in sections:
    return "mergedna"
  if "model" not in sections:
    return "other"
  return "params" if run.origin.exists() else "lm"


def require(path: str | os.PathLike, accepted: tuple[Kind, ...], flag: str, wants: str, *, hint: str = "") -> Kind:
  """The kind of `path`, which must be one of `accepted`; else a one-line CheckpointError: `flag path` is <what it
  is>; `wants` (what the command takes), then `hint`."""
  kind = kind_of(path)
  if kind in accepted:
    return kind
  where = location(path)
  local = not is_remote(where)
  if kind == "new":
    what = "is an empty directory" if local and where.exists() else "does not exist"
  elif kind == "other" and _entries(where) is None:
    what = "is a file, not a run directory"
  elif kind == "other":
    what = f"is not a run (no {layout.CONFIG} of a chunklm run)"
  else:
    what = f"is {DESCRIBED[kind]}"
  raise CheckpointError(f"{flag} {path} {what}; {wants}{'; ' + hint if hint else ''}")


LM_RUN: tuple[Kind, ...] = ("lm", "params")
WANTS_LM = "this takes a language-model run (from `chunklm train`, `import` or `convert from-hnet`)"


def require_lm(path: str | os.PathLike, flag: str = "--workdir") -> None:
  """A language-model run (trained, or parameters imported/converted), as eval, generate, export ... read."""
  require(path, LM_RUN, flag, WANTS_LM)


def require_new_or(path: str | os.PathLike, same: tuple[Kind, ...], flag: str, command: str) -> Kind:
  """A directory `command` may write a run into: new, empty, holding no run, or a run of its own kind `same`
  (resumed); a directory holding another kind of run is refused (nothing is written into it)."""
  return require(
    path,
    ("new", "other", *same),
    flag,
    f"{command} writes its own run there and never into another run's directory",
    hint="give another " + flag,
  )


def require_empty(path: str | os.PathLike, flag: str, what: str) -> None:
  """A directory that does not exist or is empty (import, convert and classify outputs)."""
  where = location(path)
  names = _entries(where)
  if names is None:
    raise UserError(f"{flag} {path} is a file; {what} needs a new or empty directory")
  if names:
    kind = kind_of(where)
    held = f"it holds {DESCRIBED[kind]}" if kind not in ("other", "new") else "it is not empty"
    raise UserError(f"{flag} {path}: {held}; {what} needs a new or empty directory, nothing was written")


def check_output(path: str | os.PathLike, flag: str) -> None:
  """An output file or folder must not replace one of a run's own files (e.g. --json RUN/metrics.jsonl, --out
  RUN/checkpoints/4): a one-line UserError naming the run."""
  where: epath.Path = location(path, flag)
  if not is_remote(where):  # a read-only mount or a folder without rights: said before the work, not after it
    existing = next(p for p in [where, *where.parents] if p.exists())
    if not os.access(existing if existing.is_dir() else existing.parent, os.W_OK):
      raise UserError(
        f"{flag} {path}: cannot write in {existing if existing.is_dir() else existing.parent} "
        "(a read-only file system, or no rights there)"
      )
  for parent in list(where.parents)[:4]:  # a run's deepest files: checkpoints/<step>/<item>/<file>
    if parent.name == "" or (is_remote(parent) and "/" not in os.fspath(parent).partition("://")[2]):
      break  # the root, or a bucket's
    if kind_of(parent) in ("lm", "params", "classifier", "mrt5"):
      inside = where.relative_to(parent).parts
      if inside and inside[0] in RUN_FILES:
        raise UserError(
          f"{flag} {path} would replace {inside[0]} of the run in {parent}; write it elsewhere (e.g. {parent}/"
          f"{where.stem or 'out'}-{flag.strip('-')}{where.suffix})"
        )
      return
