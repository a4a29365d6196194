"""`chunklm bench capacity`: how much chunk headroom a trained H-Net needs, measured on its own routing.

The run's routers mark boundaries over its valid text (exact mode: nothing capped). The text is then laid out as
the packer lays out training windows (documents in order, BOS first, at most K documents per window with K from
the text), cut into windows of each requested length, and per routing stage every window's boundaries (document
starts included) are compared with the capacity a factor gives: ceil(W / (N_0 ... N_s) * factor) + K. Overflow is
the fraction of boundaries beyond it (in training they join the previous chunk); per window length and stage it also
prints the smallest factor that keeps overflow at or below --max-overflow, and the executed / nominal chunk ratio
that factor costs. Routing is causal and mostly local,
so windows longer than the run's own are a fair estimate of what a model trained on them would need.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from chunklm.config import auto_capacity_factor
from chunklm.data.corpus import Documents, load_splits
from chunklm.data.pipeline import capped_offsets, doc_cap, leading_bytes, packed_offsets
from chunklm.errors import UserError
from chunklm.eval.boundaries import corpus_routing
from chunklm.run.trained import open_run
from chunklm.run.workdir import RunDir

FACTORS = (1.0, 1.05, 1.1, 1.15, 1.2, 1.3, 1.5)


def window_counts(starts: list[np.ndarray], docs: Documents, window: int, max_docs: int):
  """(other boundaries, document starts) per window when `docs`, marked by per-document boolean `starts` (at their
  bytes), are packed into windows of `window` bytes touching at most `max_docs` documents each. A document start is
  a BOS, or the window's first byte when the window begins inside a document; training always keeps those."""
  sizes = docs.lengths + 1
  offsets = capped_offsets(packed_offsets(sizes), sizes, window, max_docs)
  n_windows = int(offsets[-1] + sizes[-1] - 1) // window  # whole windows only
  inner = np.concatenate([off + 1 + np.flatnonzero(s) for off, s in zip(offsets, starts)])
  firsts = np.arange(n_windows, dtype=np.int64) * window
  inner = inner[inner % window != 0]  # a boundary on a window's first byte is that window's forced start
  doc_starts = np.bincount(offsets // window, minlength=n_windows + 1)[:n_windows] + ~np.isin(firsts, offsets)
  return np.bincount(inner // window, minlength=n_windows + 1)[:n_windows], doc_starts


def overflow(others: np.ndarray, doc_starts: np.ndarray, slots: int) -> float:
  """Fraction of boundaries dropped when `slots` chunks per window are left for boundaries that start no
  document (training keeps every document start in its own reserved slots)."""
  return float(np.maximum(others - slots, 0).sum() / max(others.sum() + doc_starts.sum(), 1))


def smallest_factor(others: np.ndarray, doc_starts: np.ndarray, mean: float, max_overflow: float) -> float:
  """The smallest capacity factor f (>= 1, to 3 decimals) whose ceil(mean * f) slots for boundaries that start no
  document drop at most `max_overflow` of all boundaries (`overflow` falls as slots grow)."""
  lo, hi = math.ceil(mean), max(math.ceil(mean), int(others.max(initial=0)))
  if overflow(others, doc_starts, lo) <= max_overflow:
    return 1.0
  while hi - lo > 1:  # overflow(lo) > max_overflow >= overflow(hi)
    mid = (lo + hi) // 2
    lo, hi = (lo, mid) if overflow(others, doc_starts, mid) <= max_overflow else (mid, hi)
  factor = math.floor((hi - 1) / mean * 1000 + 1) / 1000  # the first 3-decimal f with mean * f > hi - 1
  while math.ceil(mean * factor) < hi:  # floating-point rounding, either way
    factor = round(factor + 0.001, 3)
  while factor > 1.0 and math.ceil(mean * round(factor - 0.001, 3)) >= hi:
    factor = round(factor - 0.001, 3)
  return max(factor, 1.0)


def bench_capacity(
  workdir: str | Path,
  windows: list[int] | None,
  max_bytes: int,
  split: str = "valid",
  overrides: tuple[str, ...] = (),
  max_overflow: float = 0.01,
) -> list[dict]:
  run = open_run(workdir, tuple(overrides), log=lambda *a, **k: None)
  model = run.cfg.model
  if not model.num_stages or run.tokenizer is not None:
    raise UserError(f"{workdir}: bench capacity needs a byte-level H-Net run (this one has no routing stages)")
  splits = load_splits(run.cfg.data, cache_dir=RunDir(run.workdir).cache)
  docs = leading_bytes(splits.valid if split == "valid" else splits.train, max_bytes)
  docs = docs.select(docs.lengths > 0)
  windows = windows or sorted({run.cfg.data.seq_len, 2048, 8192})
  print(
    f"routing {docs.num_bytes:,} {split} bytes with {workdir} (step {run.step}; trained on "
    f"{run.cfg.data.seq_len}-byte windows) ..."
  )
  routed = corpus_routing(run.graphdef, run.params, docs, model.num_stages, run.cfg.data.seq_len)
  rows = []
  for window in windows:
    cap = doc_cap(docs, window, run.cfg.data.seed).max_docs
    ratio = low = 1.0
    fits = []
    for s, lowest in enumerate(model.lowest_ratios()[: model.num_stages]):
      ratio *= model.target_ratio[s]
      low *= lowest
      others, doc_starts = window_counts([r.starts[s] for _, r in routed], docs, window, cap)
      if not len(others):
        raise UserError(
          f"--window {window}: the valid text ({docs.num_bytes:,} bytes) fills no window; "
          "raise --max-bytes or pick shorter windows"
        )
      mean = window / ratio  # nominal chunks per window, at the target ratios
      sized = window / low  # what the factor multiplies (a ratio curriculum sizes capacities for its start)
      auto = auto_capacity_factor(sized)
      total = others + doc_starts
      fit = smallest_factor(others, doc_starts, sized, max_overflow)
      fits.append(fit)
      fit_slots = math.ceil(sized * fit) + cap  # as config.capacities sizes a stage: ceil(mean x factor) + K
      row = {
        "window": window,
        "stage": s,
        "windows": len(total),
        "max_docs": cap,
        "bytes_per_chunk": window / total.mean(),
        "target_mean": mean,
        "mean": float(total.mean()),
        "std": float(total.std()),
        "auto_factor": auto,
        "overflow": {f: overflow(others, doc_starts, math.ceil(sized * f)) for f in (*FACTORS, auto)},
        "fit": {"max_overflow": max_overflow, "factor": fit, "slots": fit_slots, "executed_ratio": fit_slots / mean},
      }
      rows.append(row)
      _print_row(row)
    if len(fits) > 1:  # model.capacity_factor is one value for every stage
      print(
        f"window {window:6d}: model.capacity_factor={max(fits):.3f} keeps every stage within "
        f"{max_overflow:.2%} overflow"
      )
  return rows


def _print_row(r: dict) -> None:
  cells = "  ".join(f"{f:.2f}: {o:.2%}" for f, o in r["overflow"].items())
  print(
    f"window {r['window']:6d} stage {r['stage']}: {r['windows']} windows, <= {r['max_docs']} docs each; "
    f"boundaries per window {r['mean']:.1f} +- {r['std']:.1f} (target {r['target_mean']:.1f}; "
    f"{r['bytes_per_chunk']:.2f} bytes/chunk)"
  )
  print(f"  overflow by factor (the last is the automatic {r['auto_factor']:.3f}): {cells}")
  fit = r["fit"]
  print(
    f"  for <= {fit['max_overflow']:.2%} overflow: capacity factor {fit['factor']:.3f} ({fit['slots']} slots "
    f"with the {r['max_docs']} document slots: {fit['executed_ratio']:.2f}x the {r['target_mean']:.1f} chunks at "
    "the target ratio)"
  )
