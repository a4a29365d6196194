"""Training batches packed from document streams, one lane per batch row.

A lane is one row of every batch: pieces of documents (`stream.Cutter`: BOS + bytes or token ids, cut into pieces
of `data.piece_windows` windows) one after another, cut into windows of L + 1 that overlap by one (a window's last
target is the next window's first input). Window inputs touch at most `max_docs` pieces (`data.max_docs_per_window`,
which sizes an H-Net's chunk slots): a piece that would be one too many starts at the next window, and the gap is
padding (masked). `segment_ids` number a window's pieces from 1 (0 = padding); `positions` count from the document's
BOS; `loss_mask` is false where a target belongs to another piece or to padding; `target_bytes` is the text bytes
each target stands for, so bits per byte = NLL / target bytes for every model kind.

Where lanes get pieces from (`LaneSource`):
- `HostLanes`: a process's own stream (`stream.HostStream`); whichever lane needs a piece next takes the next one.
- `GlobalLanes` (prepared, random-access data): lane g of the global batch reads whole documents at positions g,
  g + B, g + 2B, ... of a seeded index shuffle of all records (grain's `index_shuffle`, no permutation array), epoch
  after epoch. A batch is the same whichever process reads which lanes, so a run can resume on another process count.

The iterator's state is each lane's piece address and offset plus its source's few integers: a checkpoint holds no
document, and a resumed run reads exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import grain
import numpy as np

from chunklm.data.shards import Address, Reader
from chunklm.data.split import SplitRule
from chunklm.data.stream import Cutter, HostStream, Piece


def pick(taken: list[int], weights: list[float]) -> int:
  """The part furthest behind its share of the bytes taken so far (ties: the first): a deterministic weighted
  round robin, so the shares of training bytes follow the weights."""
  return min(range(len(weights)), key=lambda c: (taken[c] / weights[c], c))


class HostLanes:
  """Lanes fed from this process's streams (one per part): whichever lane needs a piece next takes the next one of
  the part furthest behind its weight."""

  def __init__(self, streams: list[HostStream], weights: list[float], lanes: int):
    self.streams, self.weights, self.lane_ids = streams, weights, list(range(lanes))
    self.cutter = streams[0].cutter
    self.taken = [0] * len(streams)  # units this process took from each part

  def next_piece(self, lane: int) -> tuple[int, Piece]:
    c = pick(self.taken, self.weights)
    epoch, piece = next(self.streams[c])
    self.taken[c] += len(piece[2])
    return epoch, piece

  def get_state(self) -> dict:
    return {"streams": [s.get_state() for s in self.streams], "taken": list(self.taken)}

  def set_state(self, state: dict) -> None:
    for stream, saved in zip(self.streams, state["streams"]):
      stream.set_state(saved)
    self.taken = list(state["taken"])


class _Shuffled:
  """A part's random-access records (files from `first`, `counts` records each) in a seeded index shuffle per
  epoch, one epoch after another."""

  def __init__(self, first: int, counts: list[int], rule: SplitRule, seed: int):
    self.first, self.rule, self.seed = first, rule, seed
    self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self.total = int(self.starts[-1])

  def record(self, q: int) -> tuple[int, int, int]:
    """(epoch, file, record) at position q of the endless sequence of shuffled epochs."""
    epoch, i = divmod(q, self.total)
    seed = (self.seed * 1_000_003 + epoch) % (2**31 - 1)
    g = int(grain.experimental.index_shuffle(index=i, max_index=self.total - 1, seed=seed, rounds=4))
    f = int(np.searchsorted(self.starts, g, side="right")) - 1
    return epoch, self.first + f, g - int(self.starts[f])


class GlobalLanes:
  """Lanes `lane_ids` of a global batch of `batch` lanes over random-access records: in each part, lane g reads
  positions g, g + B, g + 2B, ... of the part's shuffle; it takes its next document from the part furthest behind
  its weight in what this lane took. Nothing depends on which process reads which lane."""

  def __init__(
    self,
    reader: Reader,
    parts: list[tuple[int, list[int], SplitRule]],
    weights: list[float],
    *,
    batch: int,
    lane_ids: list[int],
    seed: int,
    min_bytes: int,
    cutter: Cutter,
  ):
    self.reader, self.weights, self.batch, self.lane_ids, self.min_bytes = reader, weights, batch, lane_ids, min_bytes
    self.cutter = dataclasses.replace(cutter, piece=0)
    self.parts = [_Shuffled(first, counts, rule, seed + c) for c, (first, counts, rule) in enumerate(parts)]
    self.lanes: dict[int, dict[str, Any]] = {
      g: {"cursor": [[0, 0] for _ in parts], "taken": [0] * len(parts)} for g in lane_ids
    }

  def next_piece(self, lane: int) -> tuple[int, Piece]:
    """The next whole document of the lane (a lane reads its documents whole: they are shuffled already)."""
    state = self.lanes[lane]
    c = pick(state["taken"], self.weights)
    part, cursor = self.parts[c], state["cursor"][c]
    for _ in range(part.total + 1):
      n, i = cursor
      epoch, f, r = part.record(lane + self.batch * n)
      docs = self.reader.record(f, r)
      cursor[:] = [n, i + 1] if i + 1 < len(docs) else [n + 1, 0]
      if i >= len(docs):
        continue
      name, data = docs[i]
      if len(data) >= self.min_bytes and not part.rule.is_valid(name, (f, r, i)):
        piece = self.cutter.pieces(epoch, (f, r, i), data)[0]
        state["taken"][c] += len(piece[2])
        return epoch, piece
    raise ValueError("no training documents in a whole epoch of a part")  # read_valid and the sample refuse first

  def get_state(self) -> dict:
    return {"lanes": {str(g): copy.deepcopy(s) for g, s in self.lanes.items()}}

  def set_state(self, state: dict) -> None:
    self.lanes = {g: copy.deepcopy(state["lanes"][str(g)]) for g in self.lane_ids}


LaneSource = HostLanes | GlobalLanes


def taken_bytes(state: dict) -> list[int]:
  """Bytes of training documents taken from each part so far, by this process, from a lane iterator's state."""
  source = state["source"]
  if "taken" in source:
    return list(source["taken"])
  lanes = list(source["lanes"].values())
  return [sum(lane["taken"][c] for lane in lanes) for c in range(len(lanes[0]["taken"]))]


class _Lane:
  """A lane's piece (its document's address and epoch, the piece's index and units, the position of its first unit)
  and the offset in it the next window starts at."""

  def __init__(self):
    self.doc: tuple[int, Address, int] | None = None
    self.units = np.zeros(0, np.uint8)
    self.pos0 = 0
    self.off = 0

  def load(self, epoch: int, piece: Piece) -> None:
    address, k, self.units, self.pos0 = piece
    self.doc, self.off = (epoch, address, k), 0


class LaneIterator(grain.DatasetIterator):
  """Batches {ids, targets, segment_ids, positions, loss_mask, target_bytes} of shape [lanes, L], without end."""

  def __init__(
    self,
    source: LaneSource,
    reader: Reader,
    seq_len: int,
    cutter: Cutter,
    *,
    piece_bytes: np.ndarray | None = None,
    max_docs: int | None = None,
    lanes_per_row: int = 1,
  ):
    super().__init__()
    if max_docs is not None and max_docs < 2:
      raise ValueError(
        f"max_docs must be >= 2 (a window can start inside one document and begin another), got {max_docs}"
      )
    self.source, self.reader, self.seq_len, self.cutter = source, reader, seq_len, cutter
    self.piece_bytes, self.max_docs = piece_bytes, max_docs
    self.dtype = cutter.units(b"").dtype
    self.lanes = {g: _Lane() for g in source.lane_ids}
    self.per_row, self.step = lanes_per_row, 0
    if len(source.lane_ids) % lanes_per_row:
      raise ValueError(f"{len(source.lane_ids)} lanes do not make rows of {lanes_per_row}")

  def _load(self, lane: _Lane, epoch: int, piece: Piece) -> None:
    lane.load(epoch, piece)

  def _window(self, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The next window of lane g: (tokens, segment ids, positions), each L + 1 long."""
    lane, n = self.lanes[g], self.seq_len + 1
    tokens = np.zeros(n, self.dtype)
    seg, pos = np.zeros(n, np.int32), np.zeros(n, np.int32)
    i, segment, touched, resume = 0, 0, 0, 0
    while i < n:
      if lane.doc is None or lane.off >= len(lane.units):
        self._load(lane, *self.source.next_piece(g))
      if i < self.seq_len:  # the piece touches this window's inputs
        if self.max_docs is not None and touched == self.max_docs:
          i = self.seq_len  # one too many: it starts the next window; the inputs' rest is padding
          continue
        touched += 1
      take = min(len(lane.units) - lane.off, n - i)
      segment += 1
      tokens[i : i + take] = lane.units[lane.off : lane.off + take]
      seg[i : i + take] = segment
      pos[i : i + take] = np.arange(lane.pos0 + lane.off, lane.pos0 + lane.off + take, dtype=np.int32)
      if i + take == n:
        resume = lane.off + take - 1  # the next window starts at this window's last position
      lane.off += take
      i += take
    lane.off = resume
    return tokens, seg, pos

  def __next__(self) -> dict[str, np.ndarray]:
    turn = self.step % self.per_row  # a row's lanes take turns, so consecutive steps read other pieces
    self.step += 1
    rows = [self._window(g) for g in self.source.lane_ids[turn :: self.per_row]]
    tokens = np.stack([r[0] for r in rows])
    seg = np.stack([r[1] for r in rows])
    pos = np.stack([r[2] for r in rows])
    mask = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    per_target = 1 if self.piece_bytes is None else self.piece_bytes[tokens[:, 1:]]
    return {
      "ids": tokens[:, :-1],
      "targets": tokens[:, 1:],
      "segment_ids": seg[:, :-1],
      "positions": pos[:, :-1],
      "loss_mask": mask,
      "target_bytes": np.where(mask, per_target, 0).astype(np.int32),
    }

  def get_state(self) -> dict:
    lanes = {
      str(g): {"doc": [lane.doc[0], *lane.doc[1], lane.doc[2]] if lane.doc else None, "off": lane.off}
      for g, lane in self.lanes.items()
    }
    return {"lanes": lanes, "source": self.source.get_state(), "step": self.step}

  def set_state(self, state: dict) -> None:
    """Restores the position `get_state` gave; with GlobalLanes, `state` may hold more lanes than this process reads
    (the states of every process of a run with another process count, merged)."""
    self.source.set_state(state["source"])
    self.step = state["step"]
    saved = {g: state["lanes"][str(g)] for g in self.source.lane_ids}
    wanted: list[Address] = [(s["doc"][1], s["doc"][2], s["doc"][3]) for s in saved.values() if s["doc"]]
    docs = self.reader.documents_at(wanted)
    cutter = self.source.cutter
    for g, s in saved.items():
      lane = self.lanes[g] = _Lane()
      if s["doc"]:
        epoch, f, r, p, k = s["doc"]
        lane.load(epoch, cutter.piece_at(epoch, (f, r, p), k, docs[f, r, p][1]))
        lane.off = s["off"]


class LaneDataset(grain.IterDataset):
  """A grain dataset of `LaneIterator`s (so grain's prefetch and checkpointing wrap it)."""

  def __init__(self, make: Callable[[], LaneIterator]):
    super().__init__()
    self.make = make

  def __iter__(self) -> LaneIterator:
    return self.make()
