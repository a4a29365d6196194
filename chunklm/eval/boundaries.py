"""Where a trained H-Net puts its chunk boundaries: per-byte masks and probabilities, pictures and statistics.

`picture(b"def main(args):", levels)` -> 'def│ main│(args│):' with '│' before every byte that starts a chunk at
stage 0 and '┃' where a deeper stage also starts a chunk. Newlines show as '↵', tabs as '→'.
A byte "starts a stage-s chunk" when the stage-s router chose the position it maps to (for s > 0: the stage-(s-1)
chunk that begins at that byte). Evaluation capacity is used, so nothing is dropped.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from chunklm.data.corpus import Documents
from chunklm.data.pipeline import BOS, PackedWindows
from chunklm.model.functional import forward

MARKS = ("│", "┃", "█")


@functools.partial(jax.jit, static_argnums=0)
def _routing(graphdef, params, ids_BxL, segment_ids_BxL):
  positions = jnp.broadcast_to(jnp.arange(ids_BxL.shape[1], dtype=jnp.int32), ids_BxL.shape)
  _, stages = forward(
    graphdef, params, {"ids": ids_BxL, "segment_ids": segment_ids_BxL, "positions": positions}, exact=True
  )
  return stages


@dataclasses.dataclass
class ByteRouting:
  """Per stage, at byte positions of a [B, L] batch: chunk starts (bool) and the router's p (NaN where a deeper
  stage did not look: bytes that start no chunk of the stage above)."""

  starts: list[np.ndarray]
  probs: list[np.ndarray]


def route_bytes(graphdef, params, ids_BxL: np.ndarray, segment_ids_BxL: np.ndarray, num_stages: int) -> ByteRouting:
  stages = jax.device_get(_routing(graphdef, params, ids_BxL, segment_ids_BxL))
  b, length = ids_BxL.shape
  to_byte = np.broadcast_to(np.arange(length), (b, length))  # byte position of every position of the stage
  valid = np.ones((b, length), bool)
  starts, probs = [], []
  for s in range(num_stages):
    chosen, p = stages[s].boundaries_BxL, stages[s].probs_BxL
    width = to_byte.shape[1]
    at = np.zeros((b, length), bool)
    pb = np.full((b, length), np.nan, np.float32)
    r, c = np.nonzero(chosen[:, :width] & valid)
    at[r, to_byte[r, c]] = True
    r, c = np.nonzero(valid)
    pb[r, to_byte[r, c]] = p[:, :width][r, c]
    starts.append(at)
    probs.append(pb)
    counts = chosen[:, :width].sum(axis=1)
    pos = stages[s].chunk_positions_BxM
    to_byte = np.take_along_axis(to_byte, np.minimum(pos, width - 1), axis=1)
    valid = np.arange(pos.shape[1])[None] < counts[:, None]
  return ByteRouting(starts, probs)


def boundary_levels(graphdef, params, data: bytes, num_stages: int, seq_len: int) -> list[np.ndarray]:
  """For each stage, a bool per byte of `data` (treated as a document start): does a chunk start there?"""
  return text_routing(graphdef, params, data, num_stages, seq_len).starts


def text_routing(graphdef, params, data: bytes, num_stages: int, seq_len: int) -> ByteRouting:
  """Routing of one text (up to seq_len - 1 bytes), per byte of the text."""
  data = data[: seq_len - 1]
  ids = np.zeros((1, seq_len), np.int32)
  ids[0, 0] = BOS
  ids[0, 1 : len(data) + 1] = list(data)
  seg = (np.arange(seq_len) <= len(data)).astype(np.int32)[None]
  r = route_bytes(graphdef, params, ids, seg, num_stages)
  cut = slice(1, len(data) + 1)  # drop the BOS position
  return ByteRouting([x[0, cut] for x in r.starts], [x[0, cut] for x in r.probs])


def corpus_routing(
  graphdef,
  params,
  docs: Documents,
  num_stages: int,
  seq_len: int,
  batch_size: int = 8,
) -> list[tuple[bytes, ByteRouting]]:
  """Every document with its routing, computed window by window in order (each window in exact mode).

  The stream's last byte is only ever a target of the windows, never an input, so one byte of a trailing extra
  document follows it; routing is causal and documents do not see each other, so it changes nothing before it."""
  if len(docs) and docs.lengths.max() > 0:
    first = int(np.flatnonzero(docs.lengths > 0)[0])
    docs = Documents(
      docs.data, np.append(docs.starts, docs.starts[first]), np.append(docs.lengths, 1), docs.names + ("<tail>",)
    )
    n_real = len(docs) - 1
  else:
    n_real = len(docs)
  windows = PackedWindows(docs, seq_len, shuffle=False, pad_last=True)
  starts: list[list[np.ndarray]] = [[] for _ in range(num_stages)]  # per stage, each batch's flattened rows
  probs: list[list[np.ndarray]] = [[] for _ in range(num_stages)]
  for lo in range(0, len(windows), batch_size):
    items = [windows[i] for i in range(lo, min(lo + batch_size, len(windows)))]
    ids = np.stack([it["ids"] for it in items]).astype(np.int32)
    seg = np.stack([it["segment_ids"] for it in items])
    r = route_bytes(graphdef, params, ids, seg, num_stages)
    for s in range(num_stages):
      starts[s].append(r.starts[s].reshape(-1))
      probs[s].append(r.probs[s].reshape(-1))
  flat_s = [np.concatenate(x) for x in starts]
  flat_p = [np.concatenate(x) for x in probs]
  out, offset = [], 0
  for i in range(n_real):
    n = int(docs.lengths[i])
    cut = slice(offset + 1, offset + 1 + n)  # skip this document's BOS
    out.append((docs.doc(i), ByteRouting([x[cut] for x in flat_s], [x[cut] for x in flat_p])))
    offset += n + 1
  return out


def _show(byte_text: str) -> str:
  return byte_text.replace("\n", "↵").replace("\t", "→").replace("\r", "␍")


def characters(data: bytes) -> list[tuple[int, int]]:
  """(start, end) byte spans of the UTF-8 characters of `data` (invalid bytes are single characters)."""
  spans, i = [], 0
  while i < len(data):
    j = min(i + _utf8_width(data[i]), len(data))
    try:
      data[i:j].decode("utf-8")
    except UnicodeDecodeError:
      j = i + 1
    spans.append((i, j))
    i = j
  return spans


def picture(data: bytes, levels: list[np.ndarray]) -> str:
  """The text with a mark before every character that starts a chunk (deeper stages get heavier marks).

  A boundary inside a multi-byte UTF-8 character is drawn before that character.
  """
  text = []
  for i, j in characters(data):
    depth = max(sum(1 for lv in levels if lv[k]) for k in range(i, j))
    if depth and i:
      text.append(MARKS[min(depth, len(MARKS)) - 1])
    text.append(_show(data[i:j].decode("utf-8", errors="replace")))
  return "".join(text)


def _utf8_width(first: int) -> int:
  if first < 0xC0 or first >= 0xF8:
    return 1
  return 2 if first < 0xE0 else 3 if first < 0xF0 else 4
