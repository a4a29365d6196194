"""Bits per byte on held-out documents: total NLL over every byte (or token) of the text / the text's bytes.

Every byte (token) of the evaluated documents is predicted exactly once (the windows tile the packed stream, the last
one padded and masked), and the divisor is the number of UTF-8 bytes the predictions stand for, so the figure is
exact, independent of the batch size, and comparable between byte and token models on the same documents.
"""

from __future__ import annotations

import math
import sys

import jax
import numpy as np
from tqdm import tqdm

from chunklm.data.corpus import Documents
from chunklm.data.pipeline import BOS, PackedWindows, eval_batches
from chunklm.model.stage_output import routing_metrics


def evaluate(eval_step, params, docs: Documents, seq_len: int, batch_size: int, *, progress: bool = False,
             put=lambda batch: batch, bos: int = BOS, piece_bytes: np.ndarray | None = None) -> dict[str, float]:
  """{'bpb', 'bytes', 'predicted', 'nll_sum', and summed routing statistics} over all of `docs`.

  `put` places each (global, host-side) batch on devices, e.g. split over a mesh; `bos` and `piece_bytes` describe a
  token model's vocabulary (None for bytes).
  """
  totals: dict[str, float] = {}
  pending = []
  n_windows = len(PackedWindows(docs, seq_len, shuffle=False, pad_last=True))
  n_batches = -(-n_windows // batch_size)
  for batch in tqdm(eval_batches(docs, seq_len, batch_size, bos, piece_bytes), total=n_batches,
                    disable=not progress, desc="eval", leave=False, unit="batch",
                    mininterval=0.2 if sys.stderr.isatty() else 15.0):  # logs to a file get a line per 15 s
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
