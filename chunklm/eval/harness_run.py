"""`chunklm lm-eval`: lm-evaluation-harness tasks on a trained run (the adapter: eval/harness.py), the harness's
results JSON written into the run (`lm_eval/results_<time>.json`) and its table printed.

Nothing downloads: the Hugging Face libraries the harness reads data with are kept offline (HF_DATASETS_OFFLINE,
HF_HUB_OFFLINE, unless the caller set them), so a task runs when its data is local: the bundled offline tasks
(`chunklm tasks make`), a task folder of the user's (`--include-path`), or a standard task whose dataset is already in
the Hugging Face cache. Each figure comes with the harness's standard error; `interval95` adds 95 % intervals. A noisy task
(`<base>_noisy_<perturbation>_s<strength>`, as `chunklm tasks make` names them) run beside its clean base gets its
accuracy drop on the same items, paired item by item, with a 95 % interval (`noise_drops`): much narrower than the
difference of two independent accuracies, since most items are answered alike with and without noise.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
from collections.abc import Callable

import numpy as np

from chunklm.errors import UserError
from chunklm.eval.harness import ChunkLM, require
from chunklm.run.trained import open_run
from chunklm.run.workdir import RunDir
from chunklm.storage.paths import ensure_dir

NOISY = re.compile(r"^(?P<base>.+?)_noisy_(?P<perturbation>[a-z_]+)_s(?P<strength>[0-9.]+)$")
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}


def task_manager(include_paths: tuple[str, ...] = ()):
  """The harness's TaskManager over its own tasks and `include_paths` (folders of task YAMLs; one line if not)."""
  for path in include_paths:
    if not os.path.isdir(path):
      raise UserError(f"--include-path {path}: not a folder of task YAML files")
  for key, value in OFFLINE.items():
    os.environ.setdefault(key, value)
  from lm_eval.tasks import TaskManager  # the optional extra chunklm[eval], which `require` checked

  return TaskManager(include_path=[os.path.abspath(p) for p in include_paths] or None)


def check_tasks(manager, tasks: list[str]) -> None:
  """One line naming any task or group the harness does not know."""
  if not tasks:
    raise UserError("--tasks: name at least one harness task or group")
  unknown = [t for t in tasks if t not in manager.all_tasks]
  if unknown:
    ours = [t for t in manager.all_tasks if t.startswith("chunklm_")][:6]
    hint = f" (e.g. {', '.join(ours)})" if ours else "; make offline tasks with `chunklm tasks make`"
    raise UserError(
      f"--tasks: the harness knows no task or group {', '.join(unknown)}; {len(manager.all_tasks):,} are known"
      f"{hint}; add --include-path DIR for a folder of your own task YAML files"
    )


def run_tasks(
  workdir,
  tasks: list[str],
  *,
  include_paths: tuple[str, ...] = (),
  limit: float | None = None,
  num_fewshot: int | None = None,
  batch_size: int = 32,
  stride: int | None = None,
  overrides: tuple[str, ...] = (),
  seed: int = 0,
  write: bool = True,
  progress: bool = True,
  log: Callable[[str], object] = print,
) -> dict:
  """The harness's results dict for `tasks` on the run at `workdir`; with `write`, also saved into the run."""
  require()
  if limit is not None and not limit > 0:
    raise UserError(f"--limit must be > 0 (a count, or a fraction below 1), got {limit}")
  manager = task_manager(include_paths)
  check_tasks(manager, tasks)
  run = open_run(workdir, tuple(overrides), log=lambda *a, **k: None)
  model = ChunkLM(run=run, batch_size=batch_size, stride=stride, progress=progress)
  from lm_eval import evaluator  # the optional extra chunklm[eval], which `require` checked

  results = evaluator.simple_evaluate(
    model=model,
    tasks=list(tasks),
    task_manager=manager,
    limit=limit,
    num_fewshot=num_fewshot,
    log_samples=True,  # per item, for the paired noise drops; not kept
    random_seed=seed,
    numpy_random_seed=seed,
    torch_random_seed=seed,
    fewshot_random_seed=seed,
    bootstrap_iters=1000,
  )
  samples = results.pop("samples", {}) if results else {}
  results = plain(results)
  results["chunklm"] = {
    "workdir": str(run.workdir),
    "step": run.step,
    "kind": run.kind,
    "overrides": list(overrides),
    "noise_drops": noise_drops(samples),
  }
  if write:
    where = save(run.workdir, results)
    log(f"wrote {where}")
  return results


def plain(results) -> dict:
  """The results as plain JSON values (the harness's own conversion of what JSON cannot hold)."""
  from lm_eval.utils import handle_non_serializable  # the optional extra chunklm[eval], which `require` checked

  return json.loads(json.dumps(dict(results), default=handle_non_serializable))


def save(workdir, results: dict):
  """`results` as RUN/lm_eval/results_<UTC time>.json; the path written."""
  folder = RunDir(workdir).lm_eval
  ensure_dir(folder)
  stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S_%f")  # two runs in a second: two files
  where = folder / f"results_{stamp}.json"
  where.write_text(json.dumps(results, indent=1) + "\n")
  return where


def noise_drops(samples: dict[str, list[dict]]) -> list[dict]:
  """For each noisy task whose clean base ran too: accuracy on the items both hold, clean and noisy, and the drop
  (noisy - clean) with its paired 95 % interval (mean ± 1.96 standard errors of the per-item differences)."""
  rows = []
  for task, items in sorted(samples.items()):
    match = NOISY.match(task)
    if not match or match["base"] not in samples:
      continue
    clean = {s["doc_id"]: float(s["acc"]) for s in samples[match["base"]] if "acc" in s}
    pairs = np.array([(float(s["acc"]), clean[s["doc_id"]]) for s in items if "acc" in s and s["doc_id"] in clean])
    if not len(pairs):
      continue
    diff = pairs[:, 0] - pairs[:, 1]
    half = 1.96 * float(diff.std(ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else None  # JSON has no NaN
    drop = float(diff.mean())
    rows.append(
      {
        "task": task,
        "base": match["base"],
        "perturbation": match["perturbation"],
        "strength": float(match["strength"]),
        "n": len(diff),
        "clean": float(pairs[:, 1].mean()),
        "noisy": float(pairs[:, 0].mean()),
        "drop": drop,
        "low": None if half is None else drop - half,
        "high": None if half is None else drop + half,
      }
    )
  return rows


def interval95(results: dict) -> list[dict]:
  """One row per task and metric: the value and its 95 % interval (value ± 1.96 standard errors)."""
  rows = []
  for task, figures in sorted(results.get("results", {}).items()):
    for key, value in figures.items():
      if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
        continue
      metric, filt = key.split(",", 1)
      err = figures.get(f"{metric}_stderr,{filt}")
      half = 1.96 * err if isinstance(err, (int, float)) else float("nan")
      rows.append({"task": task, "metric": metric, "value": value, "low": value - half, "high": value + half})
  return rows


def table(results: dict) -> str:
  """The harness's own results table (and its groups table, when a group ran)."""
  from lm_eval.utils import make_table  # the optional extra chunklm[eval], which `require` checked

  out = make_table(results)
  return out + ("\n" + make_table(results, "groups") if results.get("groups") else "")
