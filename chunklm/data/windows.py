"""Windows drawn at random from documents, each document chosen with probability by its length: the batches of the
objectives that read one window per row (MrT5's span corruption, MergeDNA's reconstruction and masking). A batch
is a pure function of (seed, step), so a resumed run reads exactly the batches it would have read.
"""

from __future__ import annotations

import numpy as np

from chunklm.data.corpus import Documents
from chunklm.data.dna import reverse_complement
from chunklm.errors import DataError


def random_windows(docs: Documents, rng: np.random.Generator, count: int, seq_len: int) -> list[bytes]:
  """`count` windows of up to `seq_len` bytes (a shorter document gives its whole self) from documents of >= 2
  bytes."""
  lengths = docs.lengths.astype(np.float64)
  usable = lengths >= 2
  if not usable.any():
    raise DataError("no document of >= 2 bytes to draw windows from")
  p = np.where(usable, lengths, 0.0) / lengths[usable].sum()
  out = []
  for i in rng.choice(len(docs), size=count, p=p):
    n, first = int(docs.lengths[i]), int(docs.starts[i])
    start = first + int(rng.integers(0, max(n - seq_len, 0) + 1))
    out.append(bytes(docs.data[start : min(start + seq_len, first + n)]))
  return out


def window_batch(docs: Documents, seed: int, step: int, batch_size: int, seq_len: int, flip: float = 0.0) -> dict:
  """Batch `step`: ids_BxL (bytes, zero-padded) and valid_BxL; each window read as its reverse complement with
  probability `flip` (DNA)."""
  rng = np.random.default_rng([seed, step])
  ids = np.zeros((batch_size, seq_len), np.int32)
  valid = np.zeros((batch_size, seq_len), bool)
  for r, w in enumerate(random_windows(docs, rng, batch_size, seq_len)):
    arr = np.frombuffer(w, np.uint8)
    if flip and rng.random() < flip:
      arr = reverse_complement(arr)
    ids[r, : len(arr)], valid[r, : len(arr)] = arr, True
  return {"ids": ids, "valid": valid}
