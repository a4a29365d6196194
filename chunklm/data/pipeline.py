"""Packed windows of bytes (or tokens) over documents in memory, for evaluation and benchmarks (training streams its
windows: data/lanes.py packs them by the same rule), and the document cap measured on a sample.

Each document becomes BOS + its bytes (or its token ids, for the BPE baseline). Per epoch, documents are put in a
seeded random order and concatenated into one stream; window k holds stream bytes [k*L, k*L + L], so inputs are the
first L bytes and targets the last L. With `max_docs` (training: `data.max_docs_per_window`), no window's inputs
touch more than that many documents: a document that would be one too many starts at the next window instead, and
the bytes skipped are padding (masked). Nothing is dropped, the epoch gets longer by the padding, and the chunk
slots an H-Net reserves for document starts are what the data needs. Windows are then visited in a seeded random
order (or in order, for evaluation); every example is a pure function of its index. `segment_ids` number the documents inside a window from 1
(0 = padding); `loss_mask` is false where the target belongs to another document (or to padding);
`target_bytes` is the number of text bytes each target stands for (1 per byte, a piece's length for tokens, 0 where
masked), so bits per byte = total NLL / total target_bytes for every model kind.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from chunklm.config import Config
from chunklm.data.corpus import Documents
from chunklm.data.dna import reverse_complement
from chunklm.data.stream import piece_bounds

BOS = 0xFE  # never appears in valid UTF-8; marks every document start (as in the H-Net code)


class PackedWindows:
  """Random-access source of packed windows (grain `RandomAccessDataSource`).

  Args:
    docs: documents to pack (bytes, or token ids for a token model).
    seq_len: window length L (positions).
    seed: seed of the per-epoch document and window order.
    shuffle: False gives documents in order and windows in order (evaluation).
    num_epochs: how many epochs the index space covers.
    pad_last: keep a final partial window (zero-padded, masked) so every byte is predicted once (evaluation).
    bos: id that starts every document (BOS for bytes, the tokenizer's BOS for tokens).
    piece_bytes: text bytes per token id (token models); None for bytes.
    reverse_complement: probability that an epoch reads a document as its reverse complement (DNA augmentation;
      drawn per document and epoch, so every window of it agrees).
  """

  def __init__(
    self,
    docs: Documents,
    seq_len: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int = 1,
    pad_last: bool = False,
    bos: int = BOS,
    piece_bytes: np.ndarray | None = None,
    max_docs: int | None = None,
    reverse_complement: float = 0.0,
  ):
    if max_docs is not None and max_docs < 2:
      raise ValueError(
        f"max_docs must be >= 2 (a window can start inside one document and begin another), got {max_docs}"
      )
    self.docs, self.seq_len, self.seed, self.shuffle = docs, seq_len, seed, shuffle
    self.bos, self.piece_bytes, self.max_docs, self.pad_last = bos, piece_bytes, max_docs, pad_last
    self.num_epochs = num_epochs
    self.reverse_complement = reverse_complement
    unpadded = int(docs.num_bytes + len(docs))  # each document is preceded by BOS
    lengths = [unpadded] * num_epochs if max_docs is None else [self._layout(e)[3] for e in range(num_epochs)]
    self.padding = [n - unpadded for n in lengths]  # bytes of padding the cap costs, per epoch
    self._window_counts = np.array([self._windows(n) for n in lengths], np.int64)
    self._first_window = np.concatenate([[0], np.cumsum(self._window_counts)])
    self.windows_per_epoch = int(self._window_counts[0])  # epoch 0's (later epochs differ by their padding)
    self._cache: tuple | None = None  # (epoch, doc order, BOS offsets, ends, stream length, window order)

  def _windows(self, stream_len: int) -> int:
    usable = stream_len - 1  # the last stream byte is never an input
    return -(-usable // self.seq_len) if self.pad_last else usable // self.seq_len

  def _layout(self, epoch: int):
    """(doc order, BOS offset of each document, its end, stream length) of an epoch, padded to the cap."""
    n = len(self.docs)
    doc_order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
    sizes = self.docs.lengths[doc_order] + 1  # BOS + bytes
    offsets = packed_offsets(sizes)
    if self.max_docs is not None and n:
      offsets = capped_offsets(offsets, sizes, self.seq_len, self.max_docs)
    ends = offsets + sizes
    return doc_order, offsets, ends, int(ends[-1]) if n else 0

  def __len__(self) -> int:
    return int(self._first_window[-1])

  def _epoch(self, epoch: int):
    if self._cache is None or self._cache[0] != epoch:
      layout = self._layout(epoch)
      count = int(self._window_counts[epoch])
      order = np.arange(count)
      if self.shuffle:  # drawn after the document order, from the same per-epoch generator
        rng = np.random.default_rng([self.seed, epoch])
        rng.permutation(len(self.docs))
        order = rng.permutation(count)
      flip = (
        np.random.default_rng([self.seed, epoch, 1]).random(len(self.docs)) < self.reverse_complement
        if self.reverse_complement
        else np.zeros(len(self.docs), bool)
      )
      self._cache = (epoch, *layout, order, flip)
    return self._cache[1:]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(index)
    epoch = int(np.searchsorted(self._first_window, index, side="right")) - 1
    k = index - int(self._first_window[epoch])
    doc_order, offsets, ends, stream_len, window_order, flip = self._epoch(epoch)
    lo = int(window_order[k]) * self.seq_len
    hi = min(lo + self.seq_len + 1, stream_len)
    tokens = np.zeros(self.seq_len + 1, self.docs.data.dtype)
    seg = np.zeros(self.seq_len + 1, np.int32)
    pos = np.zeros(self.seq_len + 1, np.int32)
    j = int(np.searchsorted(ends, lo, side="right"))  # first document overlapping [lo, hi)
    segment = 0
    while j < len(ends) and offsets[j] < hi:
      d = doc_order[j]
      doc_lo = int(offsets[j])  # stream offset of this document's BOS
      a, b = max(lo, doc_lo), min(hi, int(ends[j]))
      segment += 1
      out = slice(a - lo, b - lo)
      body_lo = max(a - doc_lo - 1, 0)  # offset inside the document's bytes
      first = a - lo + 1 if a == doc_lo else a - lo  # the window contains this document's BOS at a - lo
      if a == doc_lo:
        tokens[a - lo] = self.bos
      tokens[first : b - lo] = self._body(d, body_lo, b - lo - first, bool(flip[d]))
      seg[out] = segment
      pos[out] = np.arange(a - doc_lo, b - doc_lo, dtype=np.int32)
      j += 1
    mask = (seg[1:] == seg[:-1]) & (seg[1:] > 0)
    return self._example(tokens, seg, pos, mask)

  def _body(self, d: int, at: int, n: int, flipped: bool) -> np.ndarray:
    """Bytes [at, at + n) of document d, read as its reverse complement when `flipped`."""
    start, length = int(self.docs.starts[d]), int(self.docs.lengths[d])
    if not flipped:
      return self.docs.data[start + at : start + at + n]
    return reverse_complement(self.docs.data[start + length - at - n : start + length - at])

  def _example(self, tokens, seg, pos, mask) -> dict[str, np.ndarray]:
    per_target = 1 if self.piece_bytes is None else self.piece_bytes[tokens[1:]]
    return {
      "ids": tokens[:-1],
      "targets": tokens[1:],
      "segment_ids": seg[:-1],
      "positions": pos[:-1],
      "loss_mask": mask,
      "target_bytes": np.where(mask, per_target, 0).astype(np.int32),
    }


def packed_offsets(sizes: np.ndarray) -> np.ndarray:
  """The stream offset of each document's BOS when documents of `sizes` (BOS + bytes) follow one another."""
  return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def documents_per_window(offsets: np.ndarray, sizes: np.ndarray, seq_len: int) -> np.ndarray:
  """How many documents the inputs of each window touch (the segments of its `segment_ids`): those whose BOS lies
  in it, plus the one it starts inside of, if any. `offsets` are the documents' BOS positions, `sizes` BOS + bytes."""
  if not len(offsets):
    return np.zeros(0, np.int64)
  n_windows = max(-(-int(offsets[-1] + sizes[-1] - 1) // seq_len), 1)
  counts = np.bincount(offsets // seq_len, minlength=n_windows)[:n_windows]
  window_starts = np.arange(n_windows, dtype=np.int64) * seq_len
  inside = np.searchsorted(offsets, window_starts, side="right") - 1  # the document covering each window start
  carried = (
    (inside >= 0)
    & (offsets[np.maximum(inside, 0)] < window_starts)
    & (offsets[np.maximum(inside, 0)] + sizes[np.maximum(inside, 0)] > window_starts)
  )
  return counts + carried


def capped_offsets(offsets: np.ndarray, sizes: np.ndarray, seq_len: int, max_docs: int) -> np.ndarray:
  """BOS offsets with no window touching more than `max_docs` documents: a document that would be one too many
  starts at the next window (the gap is padding). The layout before the first full window is kept as it is."""
  per_window = documents_per_window(offsets, sizes, seq_len)
  over = np.flatnonzero(per_window > max_docs)
  if not len(over):
    return offsets
  first = int(np.searchsorted(offsets, over[0] * seq_len))  # the first document starting in that window
  out = offsets.copy()
  pos = int(offsets[first])
  window = pos // seq_len
  count = int(per_window[window] - np.count_nonzero(offsets[first:] // seq_len == window))  # touched before `first`
  for i in range(first, len(sizes)):
    w = pos // seq_len
    if w != window:  # the previous document ended exactly at this window's start
      window, count = w, 0
    if count >= max_docs:
      window, count = w + 1, 0
      pos = window * seq_len
    out[i] = pos
    count += 1
    pos += int(sizes[i])
    last = (pos - 1) // seq_len
    if last > window:  # the document runs into later windows: the last of them starts inside it
      window, count = last, 1
  return out


@dataclasses.dataclass(frozen=True)
class DocCap:
  """The documents per training window a corpus needs, and what capping there costs."""

  max_docs: int  # the cap: the `quantile` of documents touched per window, at least 2
  quantile: float
  most: int  # the most documents any window touches without a cap
  padding: int  # bytes of padding the cap adds to an epoch
  stream: int  # bytes of an epoch without padding (BOS included)

  def describe(self) -> str:
    return (
      f"at most {self.max_docs} documents per window ({self.quantile:.1%} of windows need no more; the most "
      f"is {self.most}); padding {self.padding:,} bytes per epoch ({self.padding / max(self.stream, 1):.2%})"
    )


def doc_cap(docs: Documents, seq_len: int, seed: int, quantile: float = 0.999) -> DocCap:
  """The cap on documents per window from the corpus: the `quantile` of what epoch 0's windows touch, unpadded."""
  n = len(docs)
  sizes = docs.lengths[np.random.default_rng([seed, 0]).permutation(n)] + 1  # epoch 0's order, as PackedWindows
  offsets = packed_offsets(sizes)
  per_window = documents_per_window(offsets, sizes, seq_len)
  cap = max(2, int(np.ceil(np.quantile(per_window, quantile)))) if len(per_window) else 2
  padding = int(capped_offsets(offsets, sizes, seq_len, cap)[-1] - offsets[-1]) if n else 0  # the last one moves most
  return DocCap(cap, quantile, int(per_window.max(initial=0)), padding, int(sizes.sum()))


def split_pieces(docs: Documents, piece: int) -> Documents:
  """`docs` cut as training cuts them (`stream.piece_bounds`: pieces of `piece` units counting BOS, 0 = whole), each
  piece a document one unit shorter than the piece, so that it packs as BOS + bytes would: what the document cap is
  measured on (lengths only: the pieces' starts are not where their bytes are)."""
  if not piece:
    return docs
  lengths = [hi - lo - 1 for n in docs.lengths for lo, hi in piece_bounds(int(n) + 1, piece)]
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if lengths else np.zeros(0, np.int64)
  names = tuple(str(i) for i in range(len(lengths)))
  return Documents(docs.data, starts, np.asarray(lengths, np.int64), names)


def with_doc_cap(cfg: Config, docs: Documents) -> tuple[Config, DocCap | None]:
  """cfg with data.max_docs_per_window set from `docs` (the training units, cut into training's pieces) where it is 0,
  and the cap found."""
  if cfg.data.max_docs_per_window:
    return cfg, None
  cap = doc_cap(split_pieces(docs, cfg.data.piece_windows * cfg.data.seq_len), cfg.data.seq_len, cfg.data.seed)
  return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_docs_per_window=cap.max_docs)), cap


def leading_bytes(docs: Documents, max_bytes: int) -> Documents:
  """The first `max_bytes` bytes of `docs` in order (all when 0): the leading documents, the last one cut where the
  cap falls (moved back to the start of a UTF-8 character, so a token model's copy is the same text). Evaluating a
  cut document scores its first bytes from their own context, as the full document would."""
  if not max_bytes or docs.num_bytes <= max_bytes:
    return docs
  before = np.cumsum(docs.lengths) - docs.lengths
  keep = np.flatnonzero(before < max_bytes)
  lengths = docs.lengths[keep].copy()
  last = keep[-1]
  cut = int(max_bytes - before[last])
  if cut < docs.lengths[last]:
    start = int(docs.starts[last])
    while cut > 0 and 0x80 <= int(docs.data[start + cut]) < 0xC0:  # a continuation byte: cut before its character
      cut -= 1
    lengths[-1] = cut
  if lengths[-1] == 0 and len(keep) > 1:
    keep, lengths = keep[:-1], lengths[:-1]
  return Documents(docs.data, docs.starts[keep], lengths, tuple(docs.names[i] for i in keep))


def eval_batches(docs: Documents, seq_len: int, batch_size: int, bos: int = BOS, piece_bytes: np.ndarray | None = None):
  """Every byte (token) of `docs` in order, in padded batches of fixed shape."""
  windows = PackedWindows(docs, seq_len, shuffle=False, pad_last=True, bos=bos, piece_bytes=piece_bytes)
  for lo in range(0, len(windows), batch_size):
    items = [windows[i] for i in range(lo, min(lo + batch_size, len(windows)))]
    while len(items) < batch_size:  # fixed batch shape: one compilation; padded rows are fully masked
      items.append({k: np.zeros_like(v) for k, v in items[0].items()})
    yield {k: np.stack([it[k] for it in items]) for k in items[0]}
