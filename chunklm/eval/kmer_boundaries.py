"""Where an H-Net puts chunk boundaries in DNA: the boundary rate after each k-mer.

For every position i of a document whose k preceding bytes are all A, C, G or T (either case), the k-mer
data[i-k:i] is its class; a class's rate is the share of its positions where a stage starts a chunk. A router that
learned nothing about the sequence has the same rate after every k-mer.
"""

from __future__ import annotations

import itertools

import numpy as np

from chunklm.eval.boundaries import ByteRouting

_CODE = np.full(256, -1, np.int64)
for _i, _b in enumerate(b"ACGT"):
  _CODE[_b] = _CODE[_b + 32] = _i


def kmer_names(k: int) -> list[str]:
  return ["".join(p) for p in itertools.product("ACGT", repeat=k)]


def kmer_rates(routed: list[tuple[bytes, ByteRouting]], stage: int, k: int) -> dict[str, tuple[float, int]]:
  """{k-mer: (boundary rate after it, positions after it)} over the routed documents, for one stage."""
  seen, hits = np.zeros(4**k, np.int64), np.zeros(4**k, np.int64)
  for data, r in routed:
    codes = _CODE[np.frombuffer(data, np.uint8)]
    starts = np.asarray(r.starts[stage], bool)
    n = min(len(codes), len(starts))
    if n <= k:
      continue
    index, valid = np.zeros(n - k, np.int64), np.ones(n - k, bool)
    for j in range(k):  # the k-mer ending just before position i (i = k .. n-1), most significant base first
      c = codes[j : n - k + j]
      index = index * 4 + np.maximum(c, 0)
      valid &= c >= 0
    seen += np.bincount(index[valid], minlength=4**k)
    hits += np.bincount(index[valid & starts[k:n]], minlength=4**k)
  return {name: (hits[i] / seen[i] if seen[i] else float("nan"), int(seen[i])) for i, name in enumerate(kmer_names(k))}


def kmer_markdown(routed: list[tuple[bytes, ByteRouting]], num_stages: int, shown: int = 4) -> str:
  """Per stage: the boundary rate after each 2-mer, and the 3-mers after which boundaries are most and least
  frequent."""
  lines = ["Boundary rate after each k-mer (DNA)", ""]
  for s in range(num_stages):
    two = kmer_rates(routed, s, 2)
    lines.append(f"stage {s}, after each 2-mer: " + "  ".join(f"{m} {rate:.3f}" for m, (rate, n) in two.items() if n))
    three = sorted(((rate, m) for m, (rate, n) in kmer_rates(routed, s, 3).items() if n >= 20), reverse=True)
    if three:
      lines.append(
        "  after 3-mers, most: "
        + "  ".join(f"{m} {rate:.3f}" for rate, m in three[:shown])
        + "; least: "
        + "  ".join(f"{m} {rate:.3f}" for rate, m in three[-shown:])
      )
  return "\n".join(lines)
