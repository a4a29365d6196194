#!/usr/bin/env python
"""Fine-tune several pretrained DNA models on classification tasks, from scratch and from their pretraining, over
seeds, and tabulate accuracy and macro F1 (what docs/benchmarks.md's genomic-task table reports).

Every cell is one `chunklm classify train` (pretrained: --init-from RUN; from scratch: --config RUN/config.yaml, the
same model freshly initialised) with the same steps, batch, record length and seed. Cells already done (their
result.json exists) are skipped, so an interrupted comparison continues where it stopped. --jobs runs cells side by
side (on 2 cores, 2 jobs finish the grid sooner than 1 although each cell runs slower).

  python scripts/genomic_compare.py --tasks runs/genomic_tasks runs/tasks \\
    --model hnet=runs/dna_tiny/hnet-1stage --model byte=runs/dna_tiny/byte-transformer \\
    --model mergedna=runs/mergedna_dna --seeds 0 1 --out runs/genomic_cls

report.md (a markdown table per figure) and summary.json go to --out.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import subprocess
import sys
import time
from pathlib import Path


def _tasks(folders: list[str]) -> dict[str, tuple[Path, Path]]:
  """{name: (train, test)} of every DNA task (dna_*_train.jsonl beside dna_*_test.jsonl) in `folders`."""
  out = {}
  for folder in folders:
    for train in sorted(Path(folder).glob("dna_*_train.jsonl")):
      test = train.with_name(train.name.replace("_train.jsonl", "_test.jsonl"))
      if test.is_file():
        out[train.name[: -len("_train.jsonl")]] = (train, test)
  if not out:
    sys.exit(f"--tasks {' '.join(folders)}: no dna_*_train.jsonl with its dna_*_test.jsonl")
  return out


def _cell(args, task: str, files: tuple[Path, Path], model: str, run: str, start: str, seed: int) -> dict:
  where = Path(args.out) / task / model / f"{start}-s{seed}"
  result = where / "result.json"
  if not result.is_file():
    backbone = ["--init-from", run] if start == "pretrained" else ["--config", str(Path(run) / "config.yaml")]
    if where.exists():  # an unfinished cell: trained again from the start
      subprocess.run(["rm", "-rf", str(where)], check=True)
    cmd = [
      sys.executable,
      "-m",
      "chunklm.cli",
      "classify",
      "train",
      *backbone,
      "--data",
      str(files[0]),
      "--test",
      str(files[1]),
      "--seq-len",
      str(args.seq_len),
      "--steps",
      str(args.steps),
      "--batch-size",
      str(args.batch_size),
      "--eval-every",
      str(args.steps),
      "--seed",
      str(seed),
      "--out",
      str(where / "classifier"),
      "--json",
      str(result),
      "--no-progress",
      "--quiet",
    ]
    began = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
      print(done.stderr[-2000:], file=sys.stderr)
      sys.exit(f"{task} {model} {start} seed {seed} failed (its error above)")
    print(f"{task} {model} {start} seed {seed}: {time.time() - began:.0f} s", flush=True)
  res = json.loads(result.read_text())
  return {
    "task": task,
    "model": model,
    "start": start,
    "seed": seed,
    "accuracy": res["accuracy"],
    "macro_f1": res["macro_f1"],
  }


def _report(rows: list[dict], seeds: list[int]) -> str:
  def cell(task, model, start, key):
    vals = [
      r[key] for s in seeds for r in rows if (r["task"], r["model"], r["start"], r["seed"]) == (task, model, start, s)
    ]
    if len(vals) < len(seeds):
      return "–", None
    mean, half = sum(vals) / len(vals), (max(vals) - min(vals)) / 2
    if len(vals) == 1:
      return f"{mean:.3f}", mean
    return " / ".join(f"{v:.3f}" for v in vals) + f" / {mean:.3f} ± {half:.3f}", mean

  lines = []
  for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro F1")):
    lines += [
      f"### {name} (seed {seeds[0]})"
      if len(seeds) == 1
      else f"### {name} (seeds {' / '.join(map(str, seeds))} / mean ± half-range)",
      "",
      "| task | model | from scratch | pretrained | pretrained − scratch |",
      "|---|---|---|---|---|",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
      for model in dict.fromkeys(r["model"] for r in rows):
        (a, ma), (b, mb) = cell(task, model, "scratch", key), cell(task, model, "pretrained", key)
        gain = f"{100 * (mb - ma):+.1f} pts" if ma is not None and mb is not None else "–"
        lines.append(f"| {task} | {model} | {a} | {b} | {gain} |")
    lines.append("")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--tasks", nargs="+", required=True, help="folders holding dna_<task>_train/test.jsonl")
  p.add_argument("--model", action="append", required=True, metavar="NAME=RUN", help="a pretrained run (repeatable)")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--seq-len", type=int, default=256)
  p.add_argument("--jobs", type=int, default=2)
  p.add_argument("--out", required=True)
  args = p.parse_args()
  models = dict(m.split("=", 1) for m in args.model)
  for name, run in models.items():
    if not (Path(run) / "config.yaml").is_file():
      sys.exit(f"--model {name}={run}: not a run (no config.yaml)")
  tasks = _tasks(args.tasks)
  cells = [
    (task, files, model, run, start, seed)
    for seed in args.seeds
    for task, files in tasks.items()
    for model, run in models.items()
    for start in ("pretrained", "scratch")
  ]
  print(
    f"{len(cells)} cells: {len(tasks)} tasks x {len(models)} models x 2 starts x {len(args.seeds)} seeds", flush=True
  )
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    rows = list(pool.map(lambda c: _cell(args, *c), cells))
  out = Path(args.out)
  (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
  (out / "report.md").write_text(_report(rows, args.seeds))
  print(_report(rows, args.seeds))


if __name__ == "__main__":
  main()
