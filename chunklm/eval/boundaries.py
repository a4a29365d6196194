"""Where a trained H-Net puts its chunk boundaries: per-byte boundary masks and a one-line picture.

`picture(b"def main(args):", levels)` -> 'def│ main│(args│):' with '│' before every byte that starts a chunk at
stage 0 and '┃' where a deeper stage also starts a chunk. Newlines show as '↵', tabs as '→'.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from chunklm.data.pipeline import BOS
from chunklm.train.step import forward

MARKS = ("│", "┃", "█")


@functools.partial(jax.jit, static_argnums=0)
def _boundaries(graphdef, params, ids_1xL, segment_ids_1xL):
  batch = {"ids": ids_1xL, "segment_ids": segment_ids_1xL,
           "positions": jnp.arange(ids_1xL.shape[1], dtype=jnp.int32)[None]}
  _, aux = forward(graphdef, params, batch, exact=True)
  return {k: v for k, v in aux.items() if k.startswith(("boundaries_s", "chunk_positions_s"))}


def boundary_levels(graphdef, params, data: bytes, num_stages: int, seq_len: int) -> list[np.ndarray]:
  """For each stage s, a bool per byte of `data` (a document start): does a stage-s chunk start there?"""
  data = data[: seq_len - 1]
  ids = np.zeros((1, seq_len), np.int32)
  ids[0, 0] = BOS
  ids[0, 1: len(data) + 1] = list(data)
  seg = (np.arange(seq_len) <= len(data)).astype(np.int32)[None]
  aux = jax.device_get(_boundaries(graphdef, params, ids, seg))
  levels = []
  positions = np.arange(seq_len)  # byte position of each position at the current stage
  for s in range(num_stages):
    b = aux[f"boundaries_s{s}"][0]
    at_bytes = np.zeros(seq_len, bool)
    at_bytes[positions[b[: len(positions)]]] = True
    levels.append(at_bytes[1: len(data) + 1])  # drop the BOS position
    positions = positions[aux[f"chunk_positions_s{s}"][0][: int(b.sum())]]
  return levels


def _show(byte_text: str) -> str:
  return byte_text.replace("\n", "↵").replace("\t", "→").replace("\r", "␍")


def picture(data: bytes, levels: list[np.ndarray]) -> str:
  """The text with a mark before every character that starts a chunk (deeper stages get heavier marks).

  A boundary inside a multi-byte UTF-8 character is drawn before that character.
  """
  text, i = [], 0
  while i < len(data):
    piece = data[i: i + _utf8_width(data[i])]
    depth = max(sum(1 for lv in levels if lv[j]) for j in range(i, i + len(piece)))
    if depth and i:
      text.append(MARKS[min(depth, len(MARKS)) - 1])
    text.append(_show(piece.decode("utf-8", errors="replace")))
    i += len(piece)
  return "".join(text)


def _utf8_width(first: int) -> int:
  if first < 0xC0 or first >= 0xF8:
    return 1
  return 2 if first < 0xE0 else 3 if first < 0xF0 else 4
