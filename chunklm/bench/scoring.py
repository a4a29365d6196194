"""`chunklm bench score`: requests per second of the scoring primitives (what `chunklm lm-eval` spends its time in),
one request per forward pass against batched, back to back on the same requests.

The requests are harness-shaped loglikelihood pairs cut from the run's validation split (or `--data`): a context of
`context_bytes` and a continuation of `continuation_bytes`, each at a seeded random place. Each batch size scores
them once to compile (the compiled shapes are the timed ones), then `repeats` timed passes; the median counts. The
largest difference from batch size 1's figures is printed too: batching changes the speed, not the numbers.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from chunklm.bench.timing import machine
from chunklm.data.corpus import load_documents
from chunklm.errors import UserError
from chunklm.eval.scoring import Scorer
from chunklm.run.trained import TrainedRun, open_run


def requests_from(run: TrainedRun, paths: tuple[str, ...], n: int, context: int, continuation: int, seed: int):
  """`n` (context, continuation) pairs from `paths` (default: the run's validation split)."""
  docs = load_documents(paths, run.cfg.data) if paths else run.valid_split()
  data = np.asarray(docs.data[: 64 << 20]).tobytes()  # a bounded read: the requests need a few MB at most
  span = context + continuation
  if len(data) <= span:
    raise UserError(f"bench score: the text has {len(data):,} bytes, fewer than one request's {span:,}")
  starts = np.random.default_rng(seed).integers(0, len(data) - span, n)
  return [(data[s : s + context], data[s + context : s + span]) for s in starts]


def bench_score(
  workdirs: list[Path],
  batch_sizes: list[int],
  *,
  n_requests: int = 256,
  context_bytes: int = 200,
  continuation_bytes: int = 40,
  repeats: int = 3,
  paths: tuple[str, ...] = (),
  seed: int = 0,
  overrides: tuple[str, ...] = (),
) -> list[dict]:
  rows = []
  print(f"machine: {machine()}; {n_requests} requests of {context_bytes} + {continuation_bytes} bytes")
  print("| run | kind | batch | requests/s | forward passes | speed-up vs first | largest difference |")
  print("|---|---|---|---|---|---|---|")
  for workdir in workdirs:
    run = open_run(workdir, overrides, log=lambda *a, **k: None)
    pairs = requests_from(run, paths, n_requests, context_bytes, continuation_bytes, seed)
    first: tuple[float, list] | None = None
    for size in batch_sizes:
      scorer = Scorer(run, size)
      scorer.loglikelihood(pairs[: max(size, 8)])  # compile: the same shapes as the timed passes
      times, scores = [], []
      for _ in range(repeats):
        scorer.calls = 0
        t = time.perf_counter()
        scores = scorer.loglikelihood(pairs)
        times.append(time.perf_counter() - t)
      rate = n_requests / statistics.median(times)
      first = first or (rate, scores)
      diff = max(abs(a - b) for (a, _), (b, _) in zip(scores, first[1]))
      row = {
        "run": str(workdir),
        "kind": run.kind,
        "batch": size,
        "requests_per_s": rate,
        "forward_passes": scorer.calls,
        "speedup": rate / first[0],
        "max_abs_difference": diff,
        "seconds": times,
      }
      rows.append(row)
      print(
        f"| {Path(str(workdir)).name} | {run.kind} | {size} | {rate:,.1f} | {scorer.calls:,} | "
        f"{row['speedup']:.2f}x | {diff:.2e} |"
      )
  return rows
