"""Scoring primitives for task evaluation: the log-probability a trained run gives to each byte (token) of a text,
one forward pass per request, batched across requests.

A *row* is a stretch of one document's stream (BOS, then the document's units: bytes, or tokens for a BPE run) that
one forward pass reads: its inputs are stream[:-1], its targets stream[1:], and only its last `n_scored` targets
count. Every request becomes rows:

- `loglikelihood(context, continuation)`: one row, BOS + context + continuation, the continuation's units scored;
  whether each is the model's most likely unit gives "is greedy". Trailing whitespace of the context moves to the
  continuation (as the harness does for token models), for every model kind, so byte and token models score the
  same bytes. A token model reads the context's own tokens, then the whole text's tokens after as many (the
  harness's `_encode_pair`). A row longer than the window keeps its last data.seq_len + 1 units: the context's
  start is cut.
- `rolling(text, stride)`: a text of any length, as lm-evaluation-harness's rolling windows. The first row predicts
  the first seq_len units from BOS; each next row ends `stride` units further, reads the seq_len units before its
  end and scores the `stride` units no earlier row scored. Every unit is scored once; stride = seq_len (default)
  tiles the text as `chunklm eval` does except the last window, which reads a whole window before its end; a
  smaller stride gives each prediction more context.

Rows are grouped by padded length (64, 96, 128, ... up to data.seq_len: one compiled shape per length) and run
`batch_size` rows to a forward pass, padded with masked rows; their activations are checked to fit in memory
first (one line otherwise). Everything runs at evaluation capacity (an H-Net drops no chunk), as `chunklm eval`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from chunklm import logs
from chunklm.data.pipeline import BOS
from chunklm.errors import UserError
from chunklm.eval.bpb import activation_bytes, check_fits, lowered_batch
from chunklm.eval.generate import padded_length
from chunklm.model.functional import forward


@dataclasses.dataclass(frozen=True)
class Row:
  stream: np.ndarray  # int32 ids: the units the row reads, then its last target
  start: int  # offset of stream[0] in its document's stream (BOS = 0)
  n_scored: int  # how many of the last targets count


@dataclasses.dataclass(frozen=True)
class Scored:
  logprobs: np.ndarray  # float64 per scored target, natural log
  greedy: np.ndarray  # bool per scored target: it is the model's most likely unit there

  @property
  def total(self) -> float:
    return float(self.logprobs.sum())

  @property
  def is_greedy(self) -> bool:
    return bool(self.greedy.all())


def logprob_step(graphdef, params, batch: dict) -> tuple[jax.Array, jax.Array]:
  """(log p(target) per position, whether the target is the argmax there), every H-Net stage at full capacity."""
  logits_BxLxV, _ = forward(graphdef, params, batch, exact=True)
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  targets_BxL = batch["targets"].astype(jnp.int32)
  logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
  logp_BxL = jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  return logp_BxL, jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL


def split_trailing_space(context: bytes, continuation: bytes) -> tuple[bytes, bytes]:
  """Trailing whitespace of the context moved to the start of the continuation (a word's space belongs to it)."""
  kept = context.rstrip()
  return kept, context[len(kept) :] + continuation


class Scorer:
  """Scores requests on one trained run (`chunklm.run.trained.TrainedRun`), `batch_size` rows per forward pass.
  `calls` counts the forward passes made. `lenient` (the harness adapter): an empty continuation scores 0 (and is
  greedy) and one longer than the window keeps its last data.seq_len units, where the API refuses both in one
  line; each is logged once as a warning."""

  def __init__(self, run, batch_size: int = 32, *, lenient: bool = False):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
      raise UserError(f"scoring: the batch size must be a positive int, got {batch_size!r}")
    self.run, self.batch_size = run, batch_size
    self.seq_len = run.cfg.data.seq_len
    self.bos = BOS if run.tokenizer is None else run.tokenizer.bos_id
    self.calls = 0
    self.lenient = lenient
    self._warned: set[str] = set()

  def encode(self, text: bytes) -> np.ndarray:
    """The units the model reads of `text`: its bytes, or its tokens."""
    if self.run.tokenizer is None:
      return np.frombuffer(text, np.uint8).astype(np.int32)
    return self.run.tokenizer.encode(text).astype(np.int32)

  def unit_bytes(self, ids: np.ndarray) -> np.ndarray:
    """Text bytes each unit stands for (1 per byte; a token's piece length)."""
    return np.ones(len(ids), np.int32) if self.run.tokenizer is None else self.run.tokenizer.piece_bytes[ids]

  # requests -> rows

  def _refuse(self, message: str) -> None:
    """A request the API refuses in one line; the lenient scorer warns once and goes on."""
    if not self.lenient:
      raise UserError(message)
    if message not in self._warned:
      self._warned.add(message)
      logs.warning(f"{message} (scored as the harness's models do; further such requests are not reported)")

  def pair_row(self, context: bytes, continuation: bytes) -> Row | None:
    """The row of one loglikelihood request (see the module docstring); None for an empty continuation."""
    context, continuation = split_trailing_space(context, continuation)
    ctx = self.encode(context)
    if self.run.tokenizer is None:
      cont = self.encode(continuation)
    else:  # the whole text's tokens after as many as the context's own (the harness's _encode_pair)
      cont = self.encode(context + continuation)[len(ctx) :]
    if not len(cont):
      self._refuse("loglikelihood: the continuation is empty (nothing to score)")
      return None
    if len(cont) > self.seq_len:
      self._refuse(
        f"loglikelihood: a continuation of {len(cont):,} units is longer than this model's window "
        f"(data.seq_len {self.seq_len:,}); score it with loglikelihood_rolling"
      )
      cont = cont[-self.seq_len :]
    stream = np.concatenate([[self.bos], ctx, cont]).astype(np.int32)
    cut = max(len(stream) - (self.seq_len + 1), 0)
    return Row(stream[cut:], cut, len(cont))

  def rolling_rows(self, text: bytes, stride: int | None = None) -> list[Row]:
    """The rows that score every unit of `text` once, each new row `stride` units after the last."""
    stride = self.seq_len if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= self.seq_len:
      raise UserError(f"rolling: the stride must be an int from 1 to data.seq_len ({self.seq_len:,}), got {stride!r}")
    stream = np.concatenate([[self.bos], self.encode(text)]).astype(np.int32)  # stream[i + 1] is unit i
    n = len(stream) - 1
    first = min(self.seq_len, n)
    rows = [Row(stream[: first + 1], 0, first)] if n else []
    done = first
    while done < n:
      end = min(done + stride, n)  # the row scores units [done, end): targets stream[done + 1 : end + 1]
      lo = end - self.seq_len
      rows.append(Row(stream[lo : end + 1], lo, end - done))
      done = end
    return rows

  # rows -> scores

  def score_rows(self, rows: list[Row], progress=None) -> list[Scored]:
    """The scores of `rows`, in order: rows of one padded length share forward passes. `progress(n)` is called
    with the number of rows each pass finished."""
    out: list[Scored | None] = [None] * len(rows)
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
      if not 1 <= len(row.stream) - 1 <= self.seq_len or not 1 <= row.n_scored <= len(row.stream) - 1:
        raise ValueError(f"row {i}: {len(row.stream) - 1} inputs, {row.n_scored} scored (window {self.seq_len})")
      by_length.setdefault(min(padded_length(len(row.stream) - 1), self.seq_len), []).append(i)
    for length, members in sorted(by_length.items()):
      batch = lowered_batch(self.batch_size, len(members))
      check_fits(
        activation_bytes(self.run.cfg.model, batch, length),
        f"scoring {batch:,} rows of {length:,} positions at once",
        "use a smaller batch size",
      )
      for lo in range(0, len(members), batch):
        part = members[lo : lo + batch]
        batch_arrays = _batch([rows[i] for i in part], batch, length)
        logp, greedy = jax.device_get(_logprob_step(self.run.graphdef, self.run.params, batch_arrays))
        self.calls += 1
        for r, i in enumerate(part):
          n, k = len(rows[i].stream) - 1, rows[i].n_scored
          out[i] = Scored(np.asarray(logp[r, n - k : n], np.float64), np.asarray(greedy[r, n - k : n]))
        if progress is not None:
          progress(len(part))
    return [s for s in out if s is not None]

  # requests -> results

  def loglikelihood(self, pairs: Iterable[tuple[bytes, bytes]], progress=None) -> list[tuple[float, bool]]:
    """(log-probability of the continuation given the context, whether greedy decoding gives it) per pair."""
    rows = [self.pair_row(c, x) for c, x in pairs]
    scored = iter(self.score_rows([r for r in rows if r is not None], progress))
    return [(0.0, True) if r is None else ((s := next(scored)).total, s.is_greedy) for r in rows]

  def rolling(self, texts: Iterable[bytes], stride: int | None = None, progress=None) -> list[float]:
    """The log-probability of each whole text (from its start), in rolling windows `stride` units apart."""
    return self.rolling_totals([self.rolling_rows(t, stride) for t in texts], progress)

  def rolling_totals(self, per_text: list[list[Row]], progress=None) -> list[float]:
    """The log-probability of each text from its `rolling_rows`."""
    scores = iter(self.score_rows([r for rows in per_text for r in rows], progress))
    return [float(sum(next(scores).total for _ in rows)) for rows in per_text]

  def unit_logprobs(self, text: bytes, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(log-probability of each unit of `text`, the text bytes each unit stands for)."""
    rows = self.rolling_rows(text, stride)
    scored = self.score_rows(rows)
    logprobs = np.concatenate([s.logprobs for s in scored]) if scored else np.zeros(0)
    return logprobs, self.unit_bytes(self.encode(text))


_logprob_step = jax.jit(logprob_step, static_argnums=0)  # one compiled step per model and shape, shared by scorers


def _batch(rows: list[Row], batch: int, length: int) -> dict[str, np.ndarray]:
  """`rows` padded to `batch` rows of `length` positions; padding is segment 0 and masked."""
  ids, targets = np.zeros((batch, length), np.int32), np.zeros((batch, length), np.int32)
  seg, pos = np.zeros((batch, length), np.int32), np.zeros((batch, length), np.int32)
  mask = np.zeros((batch, length), bool)
  for r, row in enumerate(rows):
    n = len(row.stream) - 1
    ids[r, :n], targets[r, :n] = row.stream[:-1], row.stream[1:]
    seg[r, :n], pos[r, :n] = 1, row.start + np.arange(n)
    mask[r, n - row.n_scored : n] = True
  return {
    "ids": ids,
    "targets": targets,
    "segment_ids": seg,
    "positions": pos,
    "loss_mask": mask,
    "target_bytes": mask.astype(np.int32),
  }
