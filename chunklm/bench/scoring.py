"""`chunklm bench score`: requests per second of the scoring primitives (what `chunklm lm-eval` spends its time in),
one request per forward pass against batched, back to back on the same requests.

The requests are harness-shaped loglikelihood pairs cut from the run's validation split (or `--data`): a context of
`context_bytes` and a continuation of `continuation_bytes`, each at a seeded random place. Each batch size scores
them once to compile (the compiled shapes are the timed ones), then `repeats` timed passes; the median counts. The
first row per run is the way a harness wrapper had to score before these primitives: BPB of context + continuation
and of the context alone (`chunklm.load(...).score`, two evaluations per request), differenced; every speed-up is
against it. The largest difference is from the first batch size's figures (batching changes the speed, not the
numbers); on the first row it is that row's gap from them.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from chunklm.bench.timing import machine
from chunklm.data.corpus import Documents, load_documents
from chunklm.errors import UserError
from chunklm.eval.bpb import make_eval_step
from chunklm.eval.run_eval import score_documents
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
  pairs = []
  for s in starts:  # a context ending in whitespace would move it into the continuation (scoring.split_trailing_space)
    ctx = data[s : s + context].rstrip()
    pairs.append((ctx, data[s + len(ctx) : s + len(ctx) + continuation]))
  return pairs


def two_evaluations(run: TrainedRun, pairs: list[tuple[bytes, bytes]], eval_step) -> list[float]:
  """log p(continuation | context) as the NLL of context + continuation minus that of the context, each scored as a
  whole document by the exact-BPB evaluation (what `Model.score` runs)."""

  def nll(text: bytes) -> float:
    docs = Documents.one(text)
    return score_documents(run, docs, 8, eval_step=eval_step)["nll_sum"] if text else 0.0

  return [nll(c) - nll(c + x) for c, x in pairs]


def _timed(fn: Callable[[], list], repeats: int) -> tuple[list[float], list]:
  """(seconds of each of `repeats` calls of `fn`, what the last returned)."""
  times, out = [], []
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t)
  return times, out


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
  print(
    f"| run | kind | batch | requests/s | evaluations | speed-up vs two score() calls | "
    f"largest difference from batch {batch_sizes[0]} |"
  )
  print("|---|---|---|---|---|---|---|")
  for workdir in workdirs:
    run = open_run(workdir, overrides, log=lambda *a, **k: None)
    pairs = requests_from(run, paths, n_requests, context_bytes, continuation_bytes, seed)
    eval_step = make_eval_step(run.graphdef)
    two_evaluations(run, pairs[:1], eval_step)  # compile
    times, old = _timed(lambda: two_evaluations(run, pairs, eval_step), repeats)
    first = (n_requests / statistics.median(times), [(v, False) for v in old])
    measured = [("two score() calls", 2 * n_requests, times, first[1])]
    for size in batch_sizes:
      scorer = Scorer(run, size)
      scorer.loglikelihood(pairs[: max(size, 8)])  # compile: the same shapes as the timed passes
      scorer.calls = 0
      times, scores = _timed(functools.partial(scorer.loglikelihood, pairs), repeats)
      measured.append((str(size), scorer.calls // repeats, times, scores))
    reference = measured[1][3]  # the first batch size's figures
    for label, passes, times, scores in measured:
      rate = n_requests / statistics.median(times)
      diff = max(abs(a - b) for (a, _), (b, _) in zip(scores, reference))
      row = {
        "run": str(workdir),
        "kind": run.kind,
        "batch": label,
        "requests_per_s": rate,
        "forward_passes": passes,
        "speedup": rate / first[0],
        "max_abs_difference": diff,
        "seconds": times,
      }
      rows.append(row)
      print(
        f"| {Path(str(workdir)).name} | {run.kind} | {label} | {rate:,.1f} | {passes:,} | "
        f"{row['speedup']:.2f}x | {diff:.2e} |"
      )
  return rows
