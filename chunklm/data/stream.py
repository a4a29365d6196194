"""Training documents as streams: a process reads its files a few at a time, record by record, cuts documents into
pieces and shuffles them in bounded windows; nothing is concatenated, so memory and start-up do not grow with the
corpus.

`HostStream` is one process's training pieces, epoch after epoch: its own files in a seeded order per epoch,
`data.interleave` of them read at a time in turn, through a window shuffle of `data.shuffle_buffer_mb` (grain's
windowed shuffle, written here so that its state is addresses rather than documents). `Cutter` says what a document
becomes: units after BOS, cut into pieces of `data.piece_windows` windows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from chunklm.data import sources as src
from chunklm.data.dna import reverse_complement
from chunklm.data.shards import Address, Reader
from chunklm.data.split import SplitRule
from chunklm.errors import DataError


def byte_units(data: bytes) -> np.ndarray:
  """What a byte model reads of a document: its bytes."""
  return np.frombuffer(data, np.uint8)


Units = Callable[[bytes], np.ndarray]  # a document's bytes -> what the model reads (bytes, or token ids)
Piece = tuple[Address, int, np.ndarray, int]  # (document address, piece index, units, position of its first unit)


@dataclasses.dataclass(frozen=True)
class Cutter:
  """How a document becomes what lanes pack: its units (bytes, or a token model's ids) after BOS, read as its reverse
  complement with probability `reverse_complement` (drawn per document and epoch), cut into pieces of `piece` units
  (0: whole documents). Piece k > 0 starts one unit before k * piece: that unit is its first input and was the last
  target of piece k - 1, so every unit is predicted once wherever the pieces land. Shuffling pieces instead of
  documents is what lets a window shuffle mix long documents (source files, genomes) across a corpus."""

  units: Units
  bos: int
  piece: int = 0
  reverse_complement: float = 0.0
  seed: int = 0

  def _whole(self, epoch: int, address: Address, data: bytes) -> np.ndarray:
    body = self.units(data)
    if self.reverse_complement and np.random.default_rng([self.seed, epoch, 1, *address]).random() < (
      self.reverse_complement
    ):
      body = reverse_complement(body)
    return np.concatenate([np.asarray([self.bos], body.dtype), body])

  def count(self, n: int) -> int:
    """Pieces of a document of n units (BOS included)."""
    return len(piece_bounds(n, self.piece))

  def pieces(self, epoch: int, address: Address, data: bytes) -> list[Piece]:
    whole = self._whole(epoch, address, data)
    return [(address, k, whole[lo:hi], lo) for k, (lo, hi) in enumerate(piece_bounds(len(whole), self.piece))]

  def piece_at(self, epoch: int, address: Address, k: int, data: bytes) -> Piece:
    whole = self._whole(epoch, address, data)
    lo, hi = piece_bounds(len(whole), self.piece)[k]
    return address, k, whole[lo:hi], lo


def piece_bounds(n: int, piece: int) -> list[tuple[int, int]]:
  """[lo, hi) of each piece of a document of n units (BOS included) cut into pieces of `piece` (0: whole): piece
  k > 0 starts one unit before k * piece (`Cutter`)."""
  if not piece:
    return [(0, n)]
  return [(max(k * piece - 1, 0), min((k + 1) * piece, n)) for k in range(max(1, -(-n // piece)))]


@dataclasses.dataclass
class _Slot:
  """One of the files a stream reads in turn: the j-th of the slot's files this epoch, at record `record`."""

  files: list[int]
  j: int = 0
  record: int = 0
  it: Iterator | None = None


class HostStream:
  """This process's training pieces (`Cutter`), without end: `(epoch, piece)`.

  Each epoch its files are put in a seeded order and dealt to `interleave` slots that are read a record at a time in
  turn; pieces pass through a window shuffle: whole records are read until the window holds `buffer` units (or the
  epoch ends: a window never mixes two epochs, so a corpus smaller than the buffer is shuffled whole, each epoch),
  then emitted in a seeded order. With `stride` (index, count), every count-th document from the index-th is kept:
  for processes that must share files (fewer files than processes)."""

  def __init__(
    self,
    reader: Reader,
    rule: SplitRule,
    files: list[int],
    cutter: Cutter,
    *,
    seed: int,
    interleave: int,
    buffer: int,
    min_bytes: int,
    stride: tuple[int, int] = (0, 1),
  ):
    self.reader, self.rule, self.files, self.cutter, self.seed = reader, rule, files, cutter, seed
    self.interleave, self.buffer, self.min_bytes, self.stride = max(1, interleave), max(1, buffer), min_bytes, stride
    self._start({"epoch": 0, "slots": None, "turn": 0, "seen": 0, "kept": 0}, window=0, taken=0)

  # -- the interleaved, unshuffled records --

  def _start(self, position: dict, window: int, taken: int) -> None:
    self._enter(position)
    self.window, self.taken, self.filled = window, taken, False
    self.window_start = self._position()
    self.pending: list = []

  def _enter(self, position: dict) -> None:
    """Puts the interleaved reading at `position` (its epoch's file order dealt to the slots)."""
    self.epoch, self.turn = position["epoch"], position["turn"]
    self.seen, self.kept = position["seen"], position["kept"]
    order = [self.files[i] for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(self.files))]
    k = min(self.interleave, len(order))
    self.slots = [_Slot(order[s::k]) for s in range(k)]
    for slot, (j, record) in zip(self.slots, position["slots"] or [(0, 0)] * k):
      slot.j, slot.record = j, record

  def _position(self) -> dict:
    slots = [[s.j, s.record] for s in self.slots]
    return {"epoch": self.epoch, "slots": slots, "turn": self.turn, "seen": self.seen, "kept": self.kept}

  def _next_epoch(self) -> None:
    if not self.seen:
      raise DataError("the training stream has no documents (every one is held out or too short)")
    if not self.kept:
      raise DataError(f"fewer training documents than the {self.stride[1]} processes that share them")
    self._enter({"epoch": self.epoch + 1, "slots": None, "turn": 0, "seen": 0, "kept": 0})

  def _next_record(self) -> tuple[int, int, list[src.Document]] | None:
    """(file, record, documents) of the next record in turn; None once every slot is done (the epoch's end)."""
    while any(s.j < len(s.files) for s in self.slots):
      slot = self.slots[self.turn % len(self.slots)]
      self.turn += 1
      if slot.j >= len(slot.files):
        continue
      if slot.it is None:
        slot.it = self.reader.records(slot.files[slot.j], slot.record)
      item = next(slot.it, None)
      if item is None:
        slot.j, slot.record, slot.it = slot.j + 1, 0, None
        continue
      slot.record = item[0] + 1
      return slot.files[slot.j], item[0], item[1]
    return None

  def _record_pieces(self, f: int, r: int, parts: list[src.Document]) -> list[tuple[int, Piece]]:
    """The pieces of the record's training documents that are this process's."""
    index, count = self.stride
    out = []
    for p, (name, data) in enumerate(parts):
      if len(data) < self.min_bytes or self.rule.is_valid(name, (f, r, p)):
        continue
      self.seen += 1
      if (self.seen - 1) % count == index:
        self.kept += 1
        out += [(self.epoch, piece) for piece in self.cutter.pieces(self.epoch, (f, r, p), data)]
    return out

  # -- the window shuffle --

  def __iter__(self):
    return self

  def __next__(self) -> tuple[int, Piece]:
    while not self.pending:
      if self.filled:  # the previous window is used up
        self.window, self.taken = self.window + 1, 0
        self.window_start = self._position()
      self._fill()
    self.taken += 1
    return self.pending.pop()

  def _fill(self) -> None:
    """Reads whole records until the window holds `buffer` units or the epoch ends, and shuffles it; a restored
    stream skips what it had taken of it."""
    pieces: list = []
    size = 0
    while size < self.buffer:
      record = self._next_record()
      if record is None:
        if pieces:
          break
        self._next_epoch()
        self.window_start = self._position()
        continue
      new = self._record_pieces(*record)
      pieces += new
      size += sum(len(p[1][2]) for p in new)
    order = np.random.default_rng([self.seed, self.window]).permutation(len(pieces))
    self.pending = [pieces[i] for i in order[::-1]][: len(pieces) - self.taken]
    self.filled = True

  def get_state(self) -> dict:
    return {"start": self.window_start, "window": self.window, "taken": self.taken}

  def set_state(self, state: dict) -> None:
    self._start(state["start"], state["window"], state["taken"])
