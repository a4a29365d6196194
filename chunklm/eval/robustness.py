"""`chunklm robustness`: bits per byte of several trained models on clean and perturbed text.

Each perturbation is applied once to the evaluation documents; every model (byte, H-Net or BPE) is scored on those
same bytes (a token model tokenizes them), so degradations are comparable. Outputs robustness.md, robustness.csv
and robustness.png (grouped bars: degradation per perturbation, one bar per model). The last row is the mean over
the perturbations (of BPB, of the increase and of the relative increase), and with several models the report says
how each model's mean relative increase compares with the first model's.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from chunklm.config import load_config
from chunklm.data.corpus import Documents, load_documents
from chunklm.data.pipeline import leading_bytes
from chunklm.data.split import run_valid_split
from chunklm.errors import DataError, UserError
from chunklm.eval.bpb import evaluate, make_eval_step
from chunklm.eval.perturb import PERTURBATIONS, perturb_documents
from chunklm.plots import figure, save
from chunklm.run.trained import open_run, read_config
from chunklm.storage.paths import ensure_dir, location


def score(
  workdir: Path,
  texts: dict[str, Documents],
  batch_size: int | None = None,
  overrides: tuple[str, ...] = (),
  progress: bool = False,
) -> dict[str, dict]:
  """{text name: evaluate() result} for the model in `workdir` (with `overrides`, settings that keep its
  parameters)."""
  run = open_run(workdir, tuple(overrides), log=lambda *a, **k: None)
  step = make_eval_step(run.graphdef)
  return {
    name: evaluate(
      step,
      run.params,
      run.units(docs),
      run.cfg.data.seq_len,
      batch_size or run.cfg.eval.batch_size,
      progress=progress,
      desc=f"{workdir.name}: {name}",
      **run.vocab,
    )
    for name, docs in texts.items()
  }


def run_robustness(
  workdirs: list[Path],
  data: tuple[str, ...],
  perturbations: list[str],
  strength: float,
  seed: int,
  max_bytes: int,
  out: Path,
  overrides: tuple[str, ...] = (),
  progress: bool = False,
  log=print,
) -> dict[str, dict[str, dict]]:
  if not workdirs:
    raise UserError("robustness: give at least one --workdir")
  unknown = [p for p in perturbations if p not in PERTURBATIONS]
  if unknown:
    raise UserError(f"robustness: unknown perturbation(s) {unknown}; available: {', '.join(PERTURBATIONS)}")
  if not 0 <= strength <= 1:
    raise UserError(f"robustness: --strength must be in [0, 1], got {strength}")
  names = _names(workdirs)
  if data:
    docs = load_documents(tuple(data), load_config(None).data)
    docs = docs.select(docs.lengths > 0)
  else:
    docs = run_valid_split(read_config(workdirs[0]))
  docs = leading_bytes(docs, max_bytes)
  if docs.num_bytes == 0:
    raise DataError("robustness: no bytes to evaluate")
  texts = {"clean": docs, **{p: perturb_documents(docs, p, strength, seed) for p in perturbations}}
  log(
    f"robustness: {len(docs)} documents, {docs.num_bytes:,} clean bytes; {len(perturbations)} perturbations at "
    f"strength {strength} (seed {seed})"
  )
  results = {}
  for name, wd in zip(names, workdirs):
    log(f"scoring {name} ({wd})...")
    results[name] = score(wd, texts, overrides=overrides, progress=progress)
  out = location(out, "--out")
  ensure_dir(out)
  _write(out, results, texts, strength, seed)
  log(f"wrote {out / 'robustness.md'}, robustness.csv and robustness.png")
  return results


def _names(workdirs: list[Path]) -> list[str]:
  names = [wd.name for wd in workdirs]
  return [n if names.count(n) == 1 else str(wd) for n, wd in zip(names, workdirs)]


def _write(out: Path, results: dict, texts: dict, strength: float, seed: int) -> None:
  models = list(results)
  rows = []
  for text in texts:
    row = {"perturbation": text, "bytes": texts[text].num_bytes}
    for m in models:
      clean, bpb = results[m]["clean"]["bpb"], results[m][text]["bpb"]
      row[f"{m} BPB"] = bpb
      row[f"{m} delta"] = bpb - clean
      row[f"{m} delta %"] = 100 * (bpb / clean - 1)
    rows.append(row)
  perturbed = rows[1:]
  if perturbed:
    mean = {"perturbation": "mean", "bytes": round(float(np.mean([r["bytes"] for r in perturbed])))}
    mean.update({k: float(np.mean([r[k] for r in perturbed])) for k in rows[0] if k not in mean})
    rows.append(mean)
  table = io.StringIO(newline="")
  writer = csv.DictWriter(table, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  (out / "robustness.csv").write_text(table.getvalue())
  head = ["perturbation", "bytes"] + [f"{m}: BPB (Δ, Δ%)" for m in models]
  lines = [
    f"# Robustness (strength {strength}, seed {seed})",
    "",
    "| " + " | ".join(head) + " |",
    "|" + "---|" * len(head),
  ]
  for r in rows:
    cells = [r["perturbation"], f"{r['bytes']:,}"]
    cells += [f"{r[f'{m} BPB']:.4f} ({r[f'{m} delta']:+.4f}, {r[f'{m} delta %']:+.1f}%)" for m in models]
    lines.append("| " + " | ".join(cells) + " |")
  if perturbed and len(models) > 1:
    ref = models[0]
    lines += [""] + [
      f"- {m}: mean relative increase {rows[-1][f'{m} delta %']:+.1f}% vs {ref}'s "
      f"{rows[-1][f'{ref} delta %']:+.1f}% ({_ratio(rows[-1][f'{m} delta %'], rows[-1][f'{ref} delta %'])})"
      for m in models[1:]
    ]
  lines += ["", "![degradation per perturbation](robustness.png)", ""]
  (out / "robustness.md").write_text("\n".join(lines))
  _plot(out / "robustness.png", perturbed, models)


def _ratio(value: float, ref: float) -> str:
  return f"{value / ref:.2f}x of it" if ref > 0 else "the reference did not degrade"


def _plot(path: Path, rows: list[dict], models: list[str]) -> None:
  fig, ax = figure(figsize=(max(6, 1.2 * len(rows) + 2), 4))
  x = np.arange(len(rows))
  width = 0.8 / max(len(models), 1)
  for i, m in enumerate(models):
    ax.bar(x + (i - (len(models) - 1) / 2) * width, [r[f"{m} delta %"] for r in rows], width, label=m)
  ax.set_xticks(x, [r["perturbation"] for r in rows], rotation=30, ha="right")
  ax.set_ylabel("BPB increase over clean text (%)")
  ax.axhline(0, color="black", lw=0.8)
  ax.grid(axis="y", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  save(fig, path, dpi=100)
