"""Any multiple-choice harness task under character noise (`chunklm tasks noisy`): the papers' "accuracy under
noise" protocol (noised HellaSwag in H-Net and BLT) for a task whose data is local.

The harness itself builds the task's requests (its prompt template, description, few-shot examples drawn with the
seed, `--limit` documents), so each document becomes one record exactly as the harness would score it: `query` the
context, `choices` the continuations after the task's target delimiter (which the copies keep), `gold` the true
one. Those records are written as a clean task `chunklm_<task>`, which scores what the original task scores (acc and
acc_norm), and as noisy copies with the context (and
with --noisy-choices the choices) perturbed per perturbation and strength: `chunklm_<task>_noisy_<perturbation>_s<strength>`,
grouped per strength. `chunklm lm-eval` run on the clean task and its noisy copies together gives each copy's accuracy
drop on the same items, paired. The whole context is perturbed, few-shot examples included. Tasks whose choices sit
in the context (`multiple_input`, e.g. WinoGrande) are refused: their noise would fall on the choices.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chunklm.errors import UserError
from chunklm.eval.harness import require
from chunklm.eval.harness_run import check_tasks, task_manager
from chunklm.eval.perturb import PERTURBATIONS
from chunklm.eval.task_cloze import noisy_records
from chunklm.eval.task_files import MARKER, Folder, earlier_files, write_folder


def harness_records(
  name: str, include_paths: tuple[str, ...] = (), limit: int | None = None, seed: int = 0
) -> tuple[list[dict[str, Any]], str]:
  """(one record per document of multiple-choice harness task `name`: the requests the harness builds for it, with
  few-shot examples drawn by `seed`; the task's target delimiter)."""
  require()
  manager = task_manager(include_paths)
  check_tasks(manager, [name])
  tasks = manager.load([name])["tasks"]
  if name not in tasks:
    raise UserError(f"tasks noisy: --task {name} is a group; name one of its tasks ({', '.join(sorted(tasks))})")
  task = tasks[name]
  if task.OUTPUT_TYPE != "multiple_choice" or getattr(task, "multiple_input", False):
    raise UserError(
      f"tasks noisy: --task {name} is a {task.OUTPUT_TYPE} task"
      f"{' with its choices in the context' if getattr(task, 'multiple_input', False) else ''}; "
      "noise applies to multiple-choice tasks whose choices follow the context"
    )
  task.set_fewshot_seed(seed)
  task.build_all_requests(limit=limit)
  delimiter = task.config.target_delimiter
  by_doc: dict[int, list] = {}
  for inst in task.instances:
    by_doc.setdefault(inst.doc_id, []).append(inst)
  records = []
  for doc_id, insts in sorted(by_doc.items()):
    doc = insts[0].doc
    n_choices = len(task.doc_to_choice(doc))
    args = [i.arguments for i in sorted(insts, key=lambda i: i.idx)[:n_choices]]  # not acc_mutual_info's extra ones
    choices = [cont.removeprefix(delimiter) for _, cont in args]
    gold = _gold(name, task.doc_to_target(doc), task.doc_to_choice(doc))
    records.append({"id": doc_id, "query": args[0][0], "choices": choices, "gold": gold, "answer": choices[gold]})
  if not records:
    raise UserError(f"tasks noisy: --task {name} has no documents to evaluate")
  return records, delimiter


def _gold(name: str, target, choices: list[str]) -> int:
  """The index of the one true choice; one line for targets this copy cannot hold (several, or none of the choices)."""
  if isinstance(target, int) and 0 <= target < len(choices):
    return target
  if isinstance(target, str) and target in choices:
    return choices.index(target)
  raise UserError(f"tasks noisy: --task {name} has a target ({target!r}) that is not one of its choices")


def _noisy(records: list[dict[str, Any]], name: str, strength: float, seed: int, choices: bool) -> list[dict]:
  """`noisy_records`, whose choices carry a leading space that stays clean: given one here, then taken off."""
  spaced = [dict(r, choices=[" " + c for c in r["choices"]]) for r in records]
  out = noisy_records(spaced, name, strength, seed, choices=choices)
  unspaced = [[c[1:] for c in r["choices"]] for r in out]
  return [dict(r, choices=cs, answer=cs[r["gold"]]) for r, cs in zip(out, unspaced)]


def noisy_tasks(
  name: str,
  out_dir: str | Path,
  *,
  include_paths: tuple[str, ...] = (),
  limit: int | None = None,
  strengths: Sequence[float] = (0.05, 0.15),
  perturbations: Sequence[str] = (),
  noisy_choices: bool = False,
  seed: int = 0,
) -> dict[str, Any]:
  """Write the clean copy of harness task `name` and its noisy copies into `out_dir`; the summary (as `make_tasks`)."""
  if limit is not None and limit < 1:
    raise UserError(f"tasks noisy: --limit must be at least 1, got {limit}")
  if not strengths or any(not 0 <= s <= 1 for s in strengths):
    raise UserError(f"tasks noisy: --strength must be in [0, 1], got {list(strengths)}")
  unknown = [p for p in perturbations if p not in PERTURBATIONS] or ([] if perturbations else ["(none)"])
  if unknown:
    raise UserError(f"tasks noisy: unknown perturbation {unknown[0]!r}; available: all, {', '.join(PERTURBATIONS)}")
  out = Path(out_dir).absolute()
  old = earlier_files(out)
  records, delimiter = harness_records(name, include_paths, limit, seed)
  folder = Folder(out)
  base = f"chunklm_{name}"
  folder.task("noisy", base, records, delimiter=delimiter)
  for s in strengths:
    names = [f"{base}_noisy_{p}_s{s:g}" for p in perturbations]
    for p, task in zip(perturbations, names):
      folder.task("noisy", task, _noisy(records, p, s, seed, noisy_choices), delimiter=delimiter)
    folder.group("noisy", f"{base}_noisy_s{s:g}", names)
  digest = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()
  summary = {
    "made_by": "chunklm tasks noisy",
    "source": f"harness task {name}",
    "sha256": digest,
    "settings": {"limit": limit, "seed": seed, "strengths": list(strengths), "perturbations": list(perturbations)},
    "folder": str(out),
    "tasks": folder.tasks,
    "groups": folder.groups,
    "run": [base, *folder.groups],
  }
  folder.files["README.md"] = (
    f"# {base} and its noisy copies\n\nMade by `chunklm tasks noisy` from harness task `{name}` ({len(records):,} "
    f"documents; records sha256 `{digest}`), seed {seed}, strengths {', '.join(f'{s:g}' for s in strengths)}, "
    f"perturbations {', '.join(perturbations)}{' (choices too)' if noisy_choices else ' (contexts only)'}.\n\n"
    f"    chunklm lm-eval --workdir RUN --include-path {out} --tasks {','.join(summary['run'])}\n\n"
    f"prints each noisy task's accuracy drop against `{base}` on the same items. `{MARKER}` marks this folder.\n"
  )
  write_folder(out, old, folder.files, summary)
  return summary
