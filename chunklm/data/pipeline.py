"""Packed windows of bytes (or tokens) and the grain pipeline that shuffles, shards, batches and prefetches them.

Each document becomes BOS + its bytes (or its token ids, for the BPE baseline). Per epoch, documents are put in a seeded random order and concatenated into
one stream; window k holds stream bytes [k*L, k*L + L], so inputs are the first L bytes and targets the last L.
Windows are then visited in a seeded random order. Every example is a pure function of its global index, so the
grain iterator's state is one integer and resume is exact. `segment_ids` number the documents inside a window from 1
(0 = padding); `loss_mask` is false where the target belongs to another document (or to padding);
`target_bytes` is the number of text bytes each target stands for (1 per byte, a piece's length for tokens, 0 where
masked), so bits per byte = total NLL / total target_bytes for every model kind.
"""

from __future__ import annotations

import jax
import grain
import numpy as np

from chunklm.data.corpus import Documents

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
  """

  def __init__(self, docs: Documents, seq_len: int, *, seed: int = 0, shuffle: bool = True, num_epochs: int = 1,
               pad_last: bool = False, bos: int = BOS, piece_bytes: np.ndarray | None = None):
    self.docs, self.seq_len, self.seed, self.shuffle = docs, seq_len, seed, shuffle
    self.bos, self.piece_bytes = bos, piece_bytes
    self.stream_len = int(docs.num_bytes + len(docs))  # each document is preceded by BOS
    usable = self.stream_len - 1  # the last stream byte is never an input
    self.windows_per_epoch = -(-usable // seq_len) if pad_last else usable // seq_len
    self.num_epochs = num_epochs
    self._epoch_cache: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None

  def __len__(self) -> int:
    return self.windows_per_epoch * self.num_epochs

  def _epoch(self, epoch: int):
    if self._epoch_cache is None or self._epoch_cache[0] != epoch:
      n = len(self.docs)
      if self.shuffle:
        rng = np.random.default_rng([self.seed, epoch])
        doc_order = rng.permutation(n)
        window_order = rng.permutation(self.windows_per_epoch)
      else:
        doc_order, window_order = np.arange(n), np.arange(self.windows_per_epoch)
      ends = np.cumsum(self.docs.lengths[doc_order] + 1)  # stream end offset of each document (exclusive)
      self._epoch_cache = (epoch, doc_order, ends, window_order)
    return self._epoch_cache[1:]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(index)
    epoch, k = divmod(index, self.windows_per_epoch)
    doc_order, ends, window_order = self._epoch(epoch)
    lo = int(window_order[k]) * self.seq_len
    hi = min(lo + self.seq_len + 1, self.stream_len)
    tokens = np.zeros(self.seq_len + 1, self.docs.data.dtype)
    seg = np.zeros(self.seq_len + 1, np.int32)
    pos = np.zeros(self.seq_len + 1, np.int32)
    j = int(np.searchsorted(ends, lo, side="right"))  # first document overlapping [lo, hi)
    segment = 0
    while j < len(ends) and ends[j] - (self.docs.lengths[doc_order[j]] + 1) < hi:
      d = doc_order[j]
      doc_lo = int(ends[j] - self.docs.lengths[d] - 1)  # stream offset of this document's BOS
      a, b = max(lo, doc_lo), min(hi, int(ends[j]))
      segment += 1
      out = slice(a - lo, b - lo)
      body_lo = max(a - doc_lo - 1, 0)  # offset inside the document's bytes
      start = self.docs.starts[d]
      if a == doc_lo:  # the window contains this document's BOS
        tokens[a - lo] = self.bos
        tokens[a - lo + 1: b - lo] = self.docs.data[start: start + (b - a - 1)]
      else:
        tokens[out] = self.docs.data[start + body_lo: start + body_lo + (b - a)]
      seg[out] = segment
      pos[out] = np.arange(a - doc_lo, b - doc_lo, dtype=np.int32)
      j += 1
    mask = (seg[1:] == seg[:-1]) & (seg[1:] > 0)
    per_target = 1 if self.piece_bytes is None else self.piece_bytes[tokens[1:]]
    return {
        "ids": tokens[:-1],
        "targets": tokens[1:],
        "segment_ids": seg[:-1],
        "positions": pos[:-1],
        "loss_mask": mask,
        "target_bytes": np.where(mask, per_target, 0).astype(np.int32),
    }


def train_dataset(docs: Documents, seq_len: int, batch_size: int, steps: int, seed: int, prefetch: int = 4,
                  process_index: int | None = None, process_count: int | None = None, bos: int = BOS,
                  piece_bytes: np.ndarray | None = None) -> grain.IterDataset:
  """Shuffled, repeated, per-process batches of packed windows for `steps` steps (global batch `batch_size`)."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if batch_size % process_count:
    raise ValueError(f"global batch {batch_size} is not divisible by {process_count} processes")
  probe = PackedWindows(docs, seq_len, seed=seed)
  num_epochs = -(-(steps * batch_size) // max(probe.windows_per_epoch, 1)) + 1
  ds = grain.MapDataset.source(PackedWindows(docs, seq_len, seed=seed, num_epochs=num_epochs, bos=bos,
                                             piece_bytes=piece_bytes))
  ds = ds[process_index::process_count].batch(batch_size // process_count, drop_remainder=True)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch))


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


def eval_batches(docs: Documents, seq_len: int, batch_size: int, bos: int = BOS,
                 piece_bytes: np.ndarray | None = None):
  """Every byte (token) of `docs` in order, in padded batches of fixed shape."""
  windows = PackedWindows(docs, seq_len, shuffle=False, pad_last=True, bos=bos, piece_bytes=piece_bytes)
  for lo in range(0, len(windows), batch_size):
    items = [windows[i] for i in range(lo, min(lo + batch_size, len(windows)))]
    while len(items) < batch_size:  # fixed batch shape: one compilation; padded rows are fully masked
      items.append({k: np.zeros_like(v) for k, v in items[0].items()})
    yield {k: np.stack([it[k] for it in items]) for k in items[0]}
