"""`chunklm tasks make | noisy`: offline lm-evaluation-harness task folders from a text (`chunklm.eval.task_files`),
or a harness task's clean and noisy copies (`chunklm.eval.task_noisy`)."""

from __future__ import annotations

from chunklm.eval.perturb import PERTURBATIONS
from chunklm.eval.task_files import DEFAULT_STRENGTHS, make_tasks
from chunklm.eval.task_noisy import noisy_tasks


def _names(value: str) -> list[str]:
  return [v.strip() for v in value.split(",") if v.strip()]


def _noise(args) -> dict:
  """The noise flags, alike for `tasks make` and `tasks noisy`."""
  return {
    "strengths": args.strength or list(DEFAULT_STRENGTHS),
    "perturbations": list(PERTURBATIONS) if args.perturbations == "all" else _names(args.perturbations),
    "noisy_choices": args.noisy_choices,
  }


def make(args) -> int:
  summary = make_tasks(
    args.text,
    args.out,
    families=_names(args.families),
    n=args.n,
    seed=args.seed,
    **_noise(args),
    noisy_on=_names(args.noisy_on),
    context_bytes=args.context_bytes,
    continuation_bytes=args.continuation_bytes,
    progress=not args.no_progress,
  )
  _print(summary)
  return 0


def noisy(args) -> int:
  summary = noisy_tasks(
    args.task,
    args.out,
    include_paths=tuple(args.include_path),
    limit=args.limit,
    **_noise(args),
    seed=args.seed,
  )
  _print(summary)
  return 0


def _print(summary: dict) -> None:
  tasks = summary["tasks"]
  print(f"wrote {len(tasks)} tasks ({sum(tasks.values()):,} items) to {summary['folder']}")
  for group, members in summary["groups"].items():
    print(f"  {group}: {len(members)} tasks, {sum(tasks[t] for t in members):,} items")
  for task in summary["run"]:
    if task in tasks:
      print(f"  {task}: {tasks[task]:,} items")
  print(f"run: chunklm lm-eval --workdir RUN --include-path {summary['folder']} --tasks {','.join(summary['run'])}")
