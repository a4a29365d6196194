"""ByT5's span-corruption objective on bytes: noise spans replaced by sentinel bytes in the input, and the target
lists each sentinel followed by the bytes it replaced, then EOS.

As in T5's `random_spans_noise_mask`: a window of L bytes gets round(L * noise_density) noise bytes in
round(noise / mean_span) spans; noise and kept lengths are random partitions into that many positive parts, and
the window starts with kept bytes. Sentinels are bytes that never occur in UTF-8 (0xFD, 0xFC, ... 0xF5, one per span,
as ByT5 uses the top of its vocabulary), EOS is 0xFF; so a window may hold at most len(SENTINELS) spans, and data
that contains these bytes cannot be corrupted unambiguously (a one-line error).
"""

from __future__ import annotations

import numpy as np

from chunklm.errors import DataError

SENTINELS = tuple(range(0xFD, 0xF4, -1))  # 9 bytes that UTF-8 never uses (0xFE is chunklm's BOS)
EOS = 0xFF


def _partition(total: int, parts: int, rng: np.random.Generator) -> list[int]:
  """`total` split into `parts` positive integers, uniformly among such splits."""
  cuts = np.sort(rng.choice(total - 1, parts - 1, replace=False) + 1) if parts > 1 else np.array([], int)
  return np.diff(np.concatenate([[0], cuts, [total]])).astype(int).tolist()


def noise_spans(
  length: int, rng: np.random.Generator, noise_density: float = 0.15, mean_span: float = 20.0
) -> list[tuple[int, int]]:
  """(start, end) of each noise span of a window of `length` bytes (length >= 2)."""
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  spans = max(1, int(round(num_noise / mean_span)))
  spans = min(spans, len(SENTINELS), num_noise, length - num_noise)
  noise, kept = _partition(num_noise, spans, rng), _partition(length - num_noise, spans, rng)
  out, at = [], 0
  for k, n in zip(kept, noise):
    at += k
    out.append((at, at + n))
    at += n
  return out


def corrupt(
  data: bytes, rng: np.random.Generator, noise_density: float = 0.15, mean_span: float = 20.0, where: str = "data"
) -> tuple[bytes, bytes]:
  """(input, target) of one window."""
  if len(data) < 2:
    raise DataError(f"{where}: a window of {len(data)} bytes is too short for span corruption")
  reserved = set(data) & set(SENTINELS + (EOS,))
  if reserved:
    raise DataError(
      f"{where}: holds byte 0x{min(reserved):02X}, which span corruption reserves for sentinels/EOS "
      "(0xF5-0xFD, 0xFF never occur in UTF-8 text)"
    )
  inputs, targets, at = bytearray(), bytearray(), 0
  for sentinel, (start, end) in zip(SENTINELS, noise_spans(len(data), rng, noise_density, mean_span)):
    inputs += data[at:start]
    inputs.append(sentinel)
    targets.append(sentinel)
    targets += data[start:end]
    at = end
  inputs += data[at:]
  targets.append(EOS)
  return bytes(inputs), bytes(targets)


def restore(inputs: bytes, targets: bytes) -> bytes:
  """The original window from (input, target): every sentinel of the input replaced by its span."""
  spans, current = {}, None
  for b in targets:
    if b in SENTINELS:
      current = b
      spans[b] = bytearray()
    elif b == EOS:
      break
    elif current is not None:
      spans[current].append(b)
  return b"".join(bytes(spans[b]) if b in SENTINELS else bytes([b]) for b in inputs)
