"""Where a trained MergeDNA merges: per-base token starts of every merging block, as the H-Net's boundary tools
read them (`ByteRouting`), so the same pictures (eval/boundaries.py) and k-mer statistics (eval/kmer_boundaries.py)
describe both models' tokens.

A base "starts a block-k token" when the k-th merging block begins a merged token there; deeper blocks only merge,
so their starts are a subset of the shallower blocks'. The probability at a base is 1 - m of the edge before the
token that begins there (1 at forced window starts; NaN where the block did not look: bases inside a token).
"""

from __future__ import annotations

import functools
from typing import cast

import jax
import numpy as np

from chunklm.eval.boundaries import ByteRouting
from chunklm.model.functional import merge_model
from chunklm.model.mergedna import MergeDNA


@functools.partial(jax.jit, static_argnums=0)
def _routes(graphdef, params, ids_BxL, valid_BxL):
  tok = cast(MergeDNA, merge_model(graphdef, params)).tokenize(ids_BxL, valid_BxL)
  return tok.routes, tok.size_BxM, tok.valid_BxM


def route_windows(graphdef, params, ids_BxL: np.ndarray, valid_BxL: np.ndarray) -> tuple[ByteRouting, np.ndarray]:
  """(the token starts and boundary probabilities of every merging block at base positions; the bases per merged
  token of the last block, one entry per valid token)."""
  routes, size, valid = jax.device_get(_routes(graphdef, params, ids_BxL, valid_BxL))
  b, length = ids_BxL.shape
  starts, probs = [], []
  for start, ok, first, p in routes:
    at = np.zeros((b, length), bool)
    pb = np.full((b, length), np.nan, np.float32)
    r, c = np.nonzero(ok)
    pb[r, start[r, c]] = p[r, c]
    r, c = np.nonzero(first & ok)
    at[r, start[r, c]] = True
    starts.append(at)
    probs.append(pb)
  return ByteRouting(starts, probs), size[valid]


def route_document(graphdef, params, data: bytes, seq_len: int, batch_size: int = 16) -> tuple[ByteRouting, np.ndarray]:
  """`route_windows` over a whole document cut into windows of `seq_len` bases (the last one padded), joined back
  into one row of len(data) positions."""
  arr = np.frombuffer(data, np.uint8)
  n_win = max(-(-len(arr) // seq_len), 1)
  ids = np.zeros((n_win, seq_len), np.int32)
  valid = np.zeros((n_win, seq_len), bool)
  for w in range(n_win):
    part = arr[w * seq_len : (w + 1) * seq_len]
    ids[w, : len(part)], valid[w, : len(part)] = part, True
  pad = -n_win % batch_size  # one compiled shape
  ids, valid = (
    np.concatenate([ids, np.zeros((pad, seq_len), np.int32)]),
    np.concatenate([valid, np.zeros((pad, seq_len), bool)]),
  )
  parts, sizes = [], []
  for i in range(0, len(ids), batch_size):
    routed, size = route_windows(graphdef, params, ids[i : i + batch_size], valid[i : i + batch_size])
    parts.append(routed)
    sizes.append(size)
  levels = len(parts[0].starts)
  cut = len(arr)
  starts = [np.concatenate([p.starts[k] for p in parts]).reshape(-1)[:cut] for k in range(levels)]
  probs = [np.concatenate([p.probs[k] for p in parts]).reshape(-1)[:cut] for k in range(levels)]
  return ByteRouting(starts, probs), np.concatenate(sizes)
