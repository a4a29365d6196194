"""DNA as bytes: one byte per base, so bits per byte on DNA are bits per base.

`data.dna` settings (all off by default) clean sequences as they are read, for training and validation alike:
  case: keep | upper | lower        fold soft-masked (lower-case) bases, or keep the mask as information
  iupac: keep | n                   ambiguity codes (R, Y, S, W, K, M, B, D, H, V) kept, or written as N
  n_runs: keep | drop | split       runs of at least n_run_min N bases kept, removed, or split the record into
                                    separate documents there (named record:1, record:2, ...)
and `reverse_complement` (a probability) flips whole documents during training only: each epoch draws, per
document, whether the model reads it as it is or as its reverse complement (see PackedWindows).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

from chunklm.config import DnaConfig

_PAIRS = b"ATCGRYKMBVDH"  # each letter and its complement: A-T, C-G, R-Y, K-M, B-V, D-H (S, W, N: themselves)
IUPAC_AMBIGUOUS = b"RYSWKMBDHV"


def complement_table() -> np.ndarray:
  """256 bytes: the complement of each nucleotide letter (either case, IUPAC included); other bytes unchanged."""
  table = np.arange(256, dtype=np.uint8)
  for i in range(0, len(_PAIRS), 2):
    a, b = _PAIRS[i], _PAIRS[i + 1]
    for x, y in ((a, b), (b, a)):
      table[x] = y
      table[x + 32] = y + 32  # lower case keeps its case
  return table


COMPLEMENT = complement_table()


def reverse_complement(seq: np.ndarray) -> np.ndarray:
  return COMPLEMENT[seq[::-1]]


def clean(documents: Iterator[tuple[str, bytes]], cfg: DnaConfig) -> Iterator[tuple[str, bytes]]:
  """The documents with `cfg`'s case, IUPAC and N-run handling applied (unchanged when all are 'keep')."""
  if cfg.is_default():
    yield from documents
    return
  n_run = re.compile(rb"[Nn]{%d,}" % cfg.n_run_min)
  ambiguous = bytes.maketrans(IUPAC_AMBIGUOUS + IUPAC_AMBIGUOUS.lower(), b"N" * 10 + b"n" * 10)
  for name, seq in documents:
    if cfg.case == "upper":
      seq = seq.upper()
    elif cfg.case == "lower":
      seq = seq.lower()
    if cfg.iupac == "n":
      seq = seq.translate(ambiguous)
    if cfg.n_runs == "drop":
      seq = n_run.sub(b"", seq)
    if cfg.n_runs == "split":
      pieces = [p for p in n_run.split(seq) if p]
      if len(pieces) > 1:
        yield from ((f"{name}:{i}", p) for i, p in enumerate(pieces, 1))
        continue
      seq = pieces[0] if pieces else b""
    yield name, seq


def looks_like_dna(data: np.ndarray, share: float = 0.99) -> bool:
  """True when at least `share` of the bytes are nucleotide letters (ACGTN or IUPAC codes, either case)."""
  if not len(data):
    return False
  letters = np.zeros(256, bool)
  letters[list(b"ACGTN" + IUPAC_AMBIGUOUS + b"acgtn" + IUPAC_AMBIGUOUS.lower())] = True
  return float(letters[data].mean()) >= share
