"""Classification figures: accuracy, per-class precision/recall/F1, macro F1, the confusion matrix and its PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chunklm.plots import figure, save


def classification_report(labels, predicted, classes: list[str]) -> dict:
  """Figures of integer `labels` vs `predicted` (class indices); F1 of a class with no true or predicted member is
  0 unless it has neither (then it is left out of the macro mean)."""
  labels, predicted = np.asarray(labels), np.asarray(predicted)
  k = len(classes)
  confusion = np.zeros((k, k), np.int64)
  np.add.at(confusion, (labels, predicted), 1)
  per_class, f1s = {}, []
  for c, name in enumerate(classes):
    tp, support, claimed = confusion[c, c], confusion[c].sum(), confusion[:, c].sum()
    precision = tp / claimed if claimed else 0.0
    recall = tp / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}
    if support or claimed:
      f1s.append(f1)
  return {
    "accuracy": float(np.trace(confusion) / max(len(labels), 1)),
    "macro_f1": float(np.mean(f1s)),
    "per_class": per_class,
    "confusion": confusion.tolist(),
    "classes": list(classes),
    "records": len(labels),
  }


def print_report(report: dict, log=print) -> None:
  log(f"accuracy {report['accuracy']:.4f} on {report['records']:,} records; macro F1 {report['macro_f1']:.4f}")
  width = max(len(c) for c in report["classes"])
  log(f"  {'class':{width}s} {'precision':>9s} {'recall':>7s} {'F1':>7s} {'support':>8s}")
  for name, r in report["per_class"].items():
    log(f"  {name:{width}s} {r['precision']:9.4f} {r['recall']:7.4f} {r['f1']:7.4f} {r['support']:8,d}")


def confusion_png(report: dict, path: str | Path, title: str = "") -> None:
  """The confusion matrix as a heat map, counts in the cells, rows normalised for the colour."""
  counts = np.asarray(report["confusion"])
  classes = report["classes"]
  share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  size = 1.2 + 0.7 * len(classes)
  fig, ax = figure(figsize=(size + 1.2, size))
  image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
  for i in range(len(classes)):
    for j in range(len(classes)):
      ax.text(j, i, f"{counts[i, j]:,}", ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
  ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
  ax.set_yticks(range(len(classes)), classes)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title or f"accuracy {report['accuracy']:.3f}, macro F1 {report['macro_f1']:.3f}")
  fig.colorbar(image, ax=ax, label="share of the true class")
  fig.tight_layout()
  save(fig, path, dpi=120)
