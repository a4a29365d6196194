"""Bits per byte on held-out documents: total NLL over every byte of the text divided by its number of bytes.

Every byte of the evaluated documents is predicted exactly once (the windows tile the packed stream, the last one
padded and masked), so the figure is exact and independent of the batch size.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from tqdm import tqdm

from chunklm.data.corpus import Documents
from chunklm.data.pipeline import PackedWindows, eval_batches
from chunklm.model.chunking import routing_metrics


def evaluate(eval_step, params, docs: Documents, seq_len: int, batch_size: int, max_bytes: int = 0,
             progress: bool = False, put=lambda batch: batch) -> dict[str, float]:
  """{'bpb', 'bytes', 'nll_sum', and summed routing statistics} for `docs` (up to ~`max_bytes`).

  `put` places each (global, host-side) batch on devices, e.g. split over a mesh.
  """
  totals: dict[str, float] = {}
  pending = []
  n_windows = len(PackedWindows(docs, seq_len, shuffle=False, pad_last=True))
  n_batches = -(-n_windows // batch_size)
  if max_bytes:
    n_batches = min(n_batches, -(-max_bytes // (seq_len * batch_size)) + 1)
  for batch in tqdm(eval_batches(docs, seq_len, batch_size, max_bytes), total=n_batches, disable=not progress,
                    desc="eval", leave=False, unit="batch"):
    pending.append(eval_step(params, put(batch)))
    if len(pending) > 4:  # keep a few batches in flight, then fold them into float64 host sums
      _accumulate(totals, pending.pop(0))
  for out in pending:
    _accumulate(totals, out)
  n = totals.get("bytes", 0.0)
  totals["bpb"] = totals["nll_sum"] / n / math.log(2) if n else float("nan")
  stages = sum(1 for k in totals if k.startswith("boundaries_s"))
  if stages:
    totals.update({k: float(v) for k, v in routing_metrics(totals, stages).items()})
  return totals


def _accumulate(totals: dict, out: dict) -> None:
  for k, v in jax.device_get(out).items():
    totals[k] = totals.get(k, 0.0) + float(np.asarray(v, np.float64))
