"""Batches for the MrT5 encoder-decoder: span-corrupted windows of a byte corpus, or JSONL `{"input", "target"}`
records. A training batch is a pure function of (seed, step), so a resumed run reads exactly the batches it would
have read; evaluation batches are a fixed set.

Arrays (numpy): ids_BxL and valid_BxL (encoder input), dec_in_BxT = [BOS] + target[:-1], targets_BxT and
dec_valid_BxT (decoder). Every target ends with EOS (0xFF).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chunklm.config import Refused, utf8
from chunklm.config.mrt5 import MrT5Run
from chunklm.data.corpus import Documents, load_splits
from chunklm.data.pipeline import BOS
from chunklm.data.sources import as_path, jsonl_objects
from chunklm.data.span_corruption import EOS, corrupt
from chunklm.data.windows import random_windows
from chunklm.errors import UserError

Pair = tuple[bytes, bytes]


def read_pairs(path: str | Path) -> list[Pair]:
  """(input, target + EOS) of every record of a JSONL file; a record without string `input` and `target` fields is
  a one-line error naming the line."""
  where = as_path(path, "--data")
  if not where.is_file():
    raise UserError(f"{where}: no such file")
  pairs = []
  for n, obj in jsonl_objects(where):  # invalid JSON, non-UTF-8 lines and deep nesting are refused there
    if not (isinstance(obj.get("input"), str) and isinstance(obj.get("target"), str)):
      raise UserError(f'{where}:{n}: each line needs string fields "input" and "target"')
    try:
      pairs.append((utf8(obj["input"], 'field "input"'), utf8(obj["target"], 'field "target"') + bytes([EOS])))
    except Refused as e:
      raise UserError(f"{where}:{n}: {e}") from None
  if not pairs:
    raise UserError(f"{where}: no records")
  return pairs


def pack(pairs: list[Pair], seq_len: int, target_len: int, where: str = "data") -> dict:
  b = len(pairs)
  out = {
    "ids": np.zeros((b, seq_len), np.int32),
    "valid": np.zeros((b, seq_len), bool),
    "dec_in": np.zeros((b, target_len), np.int32),
    "targets": np.zeros((b, target_len), np.int32),
    "dec_valid": np.zeros((b, target_len), bool),
  }
  for r, (inp, tgt) in enumerate(pairs):
    if len(inp) > seq_len or len(tgt) > target_len:
      raise UserError(
        f"{where}: a record has {len(inp)} input / {len(tgt)} target bytes (with EOS); the model takes "
        f"{seq_len} / {target_len} (data.seq_len, seq2seq.target_len)"
      )
    out["ids"][r, : len(inp)] = list(inp)
    out["valid"][r, : len(inp)] = True
    out["dec_in"][r, 0] = BOS
    out["dec_in"][r, 1 : len(tgt)] = list(tgt[:-1])
    out["targets"][r, : len(tgt)] = list(tgt)
    out["dec_valid"][r, : len(tgt)] = True
  return out


def span_batch(
  docs: Documents,
  seed: int,
  step: int,
  batch_size: int,
  seq_len: int,
  target_len: int,
  noise_density: float,
  mean_span: float,
) -> dict:
  """Batch `step`: windows drawn with probability by document length, each span-corrupted."""
  rng = np.random.default_rng([seed, step])
  pairs = [
    corrupt(w, rng, noise_density, mean_span, "the corpus") for w in random_windows(docs, rng, batch_size, seq_len)
  ]
  return pack(pairs, seq_len, target_len)


def pair_batch(
  pairs: list[Pair], seed: int, step: int, batch_size: int, seq_len: int, target_len: int, where: str
) -> dict:
  rng = np.random.default_rng([seed, step])
  return pack([pairs[i] for i in rng.integers(0, len(pairs), batch_size)], seq_len, target_len, where)


def chunks(pairs: list[Pair], batch_size: int) -> list[list[Pair]]:
  return [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]


EVAL_WINDOWS = 256  # span objective: held-out windows evaluated (a fixed set)


class Data:
  """The run's batches: training batch `step`, and the fixed evaluation batches."""

  def __init__(self, cfg: MrT5Run, cache_dir: Path):
    self.cfg = cfg
    s, d = cfg.seq2seq, cfg.data
    if s.objective == "span":
      splits = load_splits(d, cache_dir=cache_dir)
      self.train_docs, self.valid_docs = splits.train, splits.valid
    else:
      self.train_pairs, self.test_pairs = read_pairs(s.train_file), read_pairs(s.test_file)
      for pairs, where in ((self.train_pairs, s.train_file), (self.test_pairs, s.test_file)):
        pack(pairs, d.seq_len, s.target_len, where)  # every record fits, or a one-line error now

  def train_batch(self, step: int) -> dict:
    c, s = self.cfg, self.cfg.seq2seq
    if s.objective == "span":
      return span_batch(
        self.train_docs,
        c.data.seed,
        step,
        c.train.batch_size,
        c.data.seq_len,
        s.target_len,
        s.noise_density,
        s.mean_span,
      )
    return pair_batch(
      self.train_pairs, c.data.seed, step, c.train.batch_size, c.data.seq_len, s.target_len, s.train_file
    )

  def eval_batches(self, batch_size: int) -> list[dict]:
    """The held-out batches; a batch size above the examples there are is lowered to them (no padding rows)."""
    c, s = self.cfg, self.cfg.seq2seq
    batch_size = min(batch_size, EVAL_WINDOWS if s.objective == "span" else max(len(self.test_pairs), 1))
    if s.objective == "span":
      n = -(-EVAL_WINDOWS // batch_size)
      return [
        span_batch(
          self.valid_docs, c.data.seed + 1, i, batch_size, c.data.seq_len, s.target_len, s.noise_density, s.mean_span
        )
        for i in range(n)
      ]
    return [pack(p, c.data.seq_len, s.target_len) for p in chunks(self.test_pairs, batch_size)]
