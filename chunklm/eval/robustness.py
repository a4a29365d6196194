"""`chunklm robustness`: bits per byte of several trained models on clean and perturbed text.

Each perturbation is applied once to the evaluation documents; every model (byte, H-Net or BPE) is scored on those
same bytes (a token model tokenizes them), so degradations are comparable. Outputs robustness.md, robustness.csv
and robustness.png (grouped bars per perturbation, one bar per model, absolute and relative increase, the strength
in the title). The last row is the mean over the perturbations (of BPB, of the increase and of the relative
increase). Each model's clean BPB is printed and plotted beside its increases, with the order-0 byte entropy of the
clean text as a reference: a model near that entropy has little left to lose, so its relative increase looks small.
With several models the report compares each model's mean increases, absolute and relative, with the first
model's, and a warning says when their clean BPBs differ so widely (more than CLEAN_SPREAD times) that relative
increases are not comparable.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from chunklm import logs
from chunklm.config import load_config
from chunklm.data.corpus import Documents, load_documents, order0_entropy
from chunklm.data.pipeline import leading_bytes
from chunklm.data.split import run_valid_split
from chunklm.errors import DataError, UserError
from chunklm.eval.bpb import evaluate, make_eval_step
from chunklm.eval.perturb import PERTURBATIONS, perturb_documents
from chunklm.plots import figure, save
from chunklm.run.trained import open_run, read_config
from chunklm.storage.paths import ensure_dir, location

CLEAN_SPREAD = 1.25  # models' clean BPBs further apart than this ratio: their relative increases are not comparable


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
      model=run.cfg.model,  # a batch that cannot fit is one line, before anything is allocated
      flag="--batch-size",
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
  warn=logs.warning,
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
    docs = run_valid_split(read_config(workdirs[0]), max_bytes)  # a scan that stops at the bytes scored
  docs = leading_bytes(docs, max_bytes)
  if docs.num_bytes == 0:
    raise DataError("robustness: no bytes to evaluate")
  texts = {"clean": docs, **{p: perturb_documents(docs, p, strength, seed) for p in perturbations}}
  entropy = order0_entropy(docs)
  log(
    f"robustness: {len(docs)} documents, {docs.num_bytes:,} clean bytes (order-0 byte entropy {entropy:.4f} bits "
    f"per byte); {len(perturbations)} perturbations at strength {strength} (seed {seed})"
  )
  results = {}
  for name, wd in zip(names, workdirs):
    log(f"scoring {name} ({wd})...")
    results[name] = score(wd, texts, overrides=overrides, progress=progress)
  out = location(out, "--out")
  ensure_dir(out)
  lines, warning = _write(out, results, texts, strength, seed, entropy)
  log(f"robustness at strength {strength} (seed {seed}), mean over {len(perturbations)} perturbations:")
  for line in lines:
    log(line)
  if warning:
    warn(warning)
  log(f"wrote {out / 'robustness.md'}, robustness.csv and robustness.png")
  return results


def _names(workdirs: list[Path]) -> list[str]:
  names = [wd.name for wd in workdirs]
  return [n if names.count(n) == 1 else str(wd) for n, wd in zip(names, workdirs)]


def _write(
  out: Path, results: dict, texts: dict, strength: float, seed: int, entropy: float | None = None
) -> tuple[list[str], str]:
  """Writes robustness.csv, .md and .png; returns the per-model summary lines to print and the warning about
  clean BPBs too far apart ("" if none)."""
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
  warning = clean_spread({m: rows[0][f"{m} BPB"] for m in models})
  (out / "robustness.md").write_text(_markdown(rows, models, strength, seed, entropy, warning))
  _plot(out / "robustness.png", rows, models, f"strength {strength} (seed {seed})", bool(warning))
  return summary_lines(rows, models), warning


def clean_spread(clean: dict[str, float], limit: float = CLEAN_SPREAD) -> str:
  """The warning when the models' clean BPBs differ by more than `limit` times ("" when they do not): a model far
  worse on clean text (e.g. barely trained, near the order-0 entropy) has little left to lose, so its relative
  increase looks small."""
  if len(clean) < 2:
    return ""
  lo, hi = min(clean, key=clean.__getitem__), max(clean, key=clean.__getitem__)
  if clean[hi] <= limit * clean[lo]:
    return ""
  return (
    f"clean BPB differs widely between models ({lo} {clean[lo]:.4f}, {hi} {clean[hi]:.4f}: "
    f"{clean[hi] / clean[lo]:.2f}x): relative increases are not comparable; compare absolute increases, or models "
    "of similar clean BPB"
  )


def summary_lines(rows: list[dict], models: list[str]) -> list[str]:
  """Each model's clean BPB beside its mean increase over the perturbations, absolute and relative, as aligned
  lines."""
  mean = rows[-1] if len(rows) > 1 else None
  cells = [["model", "clean BPB", "mean BPB", "mean increase", "relative increase"]]
  for m in models:
    if mean is None:
      cells.append([m, f"{rows[0][f'{m} BPB']:.4f}", "", "", ""])
    else:
      cells.append(
        [
          m,
          f"{rows[0][f'{m} BPB']:.4f}",
          f"{mean[f'{m} BPB']:.4f}",
          f"{mean[f'{m} delta']:+.4f}",
          f"{mean[f'{m} delta %']:+.1f}%",
        ]
      )
  width = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
  return [
    "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, width))).rstrip() for r in cells
  ]


def _markdown(
  rows: list[dict], models: list[str], strength: float, seed: int, entropy: float | None, warning: str
) -> str:
  clean = f"Clean text: {rows[0]['bytes']:,} bytes"
  clean += f", order-0 byte entropy {entropy:.4f} bits per byte." if entropy is not None else "."
  lines = [
    f"# Robustness (strength {strength}, seed {seed})",
    "",
    clean,
    "",
    "```",
    *summary_lines(rows, models),
    "```",
  ]
  if warning:
    lines += ["", f"**Warning**: {warning}."]
  head = ["perturbation", "bytes"] + [f"{m}: BPB (Δ, Δ%)" for m in models]
  lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["perturbation"], f"{r['bytes']:,}"]
    cells += [f"{r[f'{m} BPB']:.4f} ({r[f'{m} delta']:+.4f}, {r[f'{m} delta %']:+.1f}%)" for m in models]
    lines.append("| " + " | ".join(cells) + " |")
  if len(rows) > 1 and len(models) > 1:
    lines += [""] + [_versus(rows[0], rows[-1], m, models[0]) for m in models[1:]]
  lines += ["", "![BPB increase per perturbation, absolute and relative](robustness.png)", ""]
  return "\n".join(lines)


def _versus(clean: dict, mean: dict, m: str, ref: str) -> str:
  """A model's mean increases, absolute and relative, against the reference model's, each with its clean BPB."""
  a, b = (mean[f"{m} delta"], mean[f"{ref} delta"]), (mean[f"{m} delta %"], mean[f"{ref} delta %"])
  return (
    f"- {m} (clean {clean[f'{m} BPB']:.4f}) vs {ref} (clean {clean[f'{ref} BPB']:.4f}): mean increase {a[0]:+.4f} "
    f"vs {a[1]:+.4f} BPB ({_ratio(*a)}), relative {b[0]:+.1f}% vs {b[1]:+.1f}% ({_ratio(*b)})"
  )


def _ratio(value: float, ref: float) -> str:
  return f"{value / ref:.2f}x" if ref > 0 else "the reference did not degrade"


def _plot(path: Path, rows: list[dict], models: list[str], setting: str, not_comparable: bool) -> None:
  """Two panels, absolute and relative increase per perturbation (and their mean), one bar per model (its clean BPB
  in the legend); the relative panel says when the clean BPBs are too far apart to compare it."""
  perturbed = rows[1:]
  fig, axes = figure(1, 2, figsize=(max(9, 2 * len(perturbed) + 3), 4.5))
  x = np.arange(len(perturbed))
  width = 0.8 / max(len(models), 1)
  caveat = ":\nnot comparable, the clean BPBs differ widely" if not_comparable else ""
  titles = ("absolute increase (BPB)", "relative increase (%)" + caveat)
  for ax, key, title in zip(axes, ("delta", "delta %"), titles):
    for i, m in enumerate(models):
      offset = (i - (len(models) - 1) / 2) * width
      ax.bar(
        x + offset, [r[f"{m} {key}"] for r in perturbed], width, label=f"{m} (clean {rows[0][f'{m} BPB']:.3f} BPB)"
      )
    ax.set_xticks(x, [r["perturbation"] for r in perturbed], rotation=30, ha="right")
    ax.set_title(title, fontsize="medium")
    ax.set_ylabel("BPB increase over clean text" + (" (%)" if key == "delta %" else ""))
    ax.axhline(0, color="black", lw=0.8)
    ax.grid(axis="y", alpha=0.3)
  axes[0].legend(fontsize="small")
  fig.suptitle(f"BPB increase over clean text, {setting}")
  fig.tight_layout()
  save(fig, path, dpi=100)
