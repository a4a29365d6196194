"""How close the document cap measured on training's start-up sample (`data.cap_sample_mb`) comes to the cap the
whole corpus needs: the sample's cap as training sets it, then every training document read (lengths only, in the
stream's order) and the cap of the whole, for each sample size asked."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from chunklm.config import Config
from chunklm.data.corpus import Documents
from chunklm.data.feed import open_train_data
from chunklm.data.pipeline import DocCap, doc_cap, split_pieces
from chunklm.data.shards import Reader
from chunklm.data.split import valid_budget
from chunklm.progress import bar


@dataclasses.dataclass(frozen=True)
class CapCheck:
  sample_mb: int
  sample_bytes: int
  sample_cap: DocCap
  seconds: float  # to read the sample and measure its cap


def _cap(docs: Documents, cfg: Config) -> DocCap:
  return doc_cap(split_pieces(docs, cfg.data.piece_windows * cfg.data.seq_len), cfg.data.seq_len, cfg.data.seed)


def sample_caps(cfg: Config, sample_mb: list[int]) -> list[CapCheck]:
  out = []
  for mb in sample_mb:
    c = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cap_sample_mb=mb))
    t = time.perf_counter()
    data = open_train_data(c.data, valid_budget(c))
    out.append(CapCheck(mb, data.sample.num_bytes, _cap(data.sample, c), time.perf_counter() - t))
  return out


def full_cap(cfg: Config, progress: bool = True) -> tuple[DocCap, int, int]:
  """(the cap of every training document, their count, their bytes): documents read in file order, lengths kept."""
  data = open_train_data(cfg.data, valid_budget(cfg))
  reader = Reader(data.shards, cfg.data, builtin=data.builtin)
  lengths: list[int] = []
  for part in data.parts:
    for f in bar(part.files, enabled=progress, desc="reading", unit="file"):
      for r, record in reader.records(f):
        lengths += [
          len(d)
          for p, (name, d) in enumerate(record)
          if len(d) >= cfg.data.min_doc_bytes and not part.rule.is_valid(name, (f, r, p))
        ]
  n = np.asarray(lengths, np.int64)
  starts = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
  docs = Documents(np.zeros(0, np.uint8), starts, n, tuple(str(i) for i in range(len(n))))  # lengths are enough
  return _cap(docs, cfg), len(n), int(n.sum())
