"""The valid split of a corpus that is never read whole.

The valid split is the documents a hash of their name puts there (`data.valid_fraction`, as ever), but only among the
records read before the valid split reached its byte budget (`SplitRule.boundary`): a bounded scan at start, the same
on every process; past the boundary every document is training data. A corpus smaller than the budget is split whole,
exactly as chunklm always split it. Every reader of a run's valid split (training, `chunklm eval`) reads the same
budget (`valid_budget`), so they hold out the same documents.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from chunklm import logs
from chunklm.config import Config, DataConfig
from chunklm.data import sources as src
from chunklm.data.corpus import Documents, build, split_hash
from chunklm.data.shards import Address, Reader, describe_sources, list_shards
from chunklm.errors import DataError


@dataclasses.dataclass(frozen=True)
class SplitRule:
  """Which documents of the training sources are held out for validation."""

  fraction: float
  seed: int
  held_out: bool = True  # False: valid comes from --valid-data and every training document trains
  boundary: tuple[int, int] | None = None  # only records before (file, record) were scanned; None: all were
  forced_valid: Address | None = None  # a tiny corpus whose hash holds nothing out keeps this one document
  forced_train: Address | None = None  # ... and one that holds everything out trains on this one

  def shifted(self, files: int) -> SplitRule:
    """The same rule for addresses whose file indices are `files` higher (a part's files after another's)."""

    def move(a):
      return None if a is None else (a[0] + files, *a[1:])

    return dataclasses.replace(
      self, boundary=move(self.boundary), forced_valid=move(self.forced_valid), forced_train=move(self.forced_train)
    )

  def is_valid(self, name: str, address: Address) -> bool:
    if not self.held_out or address == self.forced_train:
      return False
    if address == self.forced_valid:
      return True
    if self.boundary is not None and address[:2] >= self.boundary:
      return False
    return split_hash(name, self.seed) < self.fraction


@dataclasses.dataclass(frozen=True)
class ValidSplit:
  docs: Documents
  rule: SplitRule
  description: str


def valid_budget(cfg: Config) -> int:
  """Bytes of valid split a run holds out and its evaluations read (0 = all): what its periodic and final evaluations
  read. Every reader of a run's valid split (training, `chunklm eval`) reads this much, so the split is the same."""
  if not cfg.eval.final_max_bytes or not cfg.eval.max_bytes:
    return 0
  return max(cfg.eval.max_bytes, cfg.eval.final_max_bytes)


def run_valid_split(cfg: Config, max_bytes: int = 0) -> Documents:
  """The valid split of the run `cfg` configures, exactly as its training held it out; with `max_bytes`, only its
  leading documents, at least `max_bytes` bytes of them where there are: the same documents in the same order as
  the whole split begins with, read by a scan that stops there (memory and time grow with `max_bytes`, not with the
  corpus or the run's evaluation budget)."""
  return read_valid(cfg.data, valid_budget(cfg), wanted=max_bytes).docs


def read_valid(cfg: DataConfig, max_bytes: int, wanted: int = 0) -> ValidSplit:
  """The valid documents, at least `max_bytes` of them where there are (0 = all): from `data.valid_sources`, or held
  out of `data.sources` by document hash in a scan that stops once the budget is met. With `wanted` (0 = no limit),
  the scan stops as soon as it holds `wanted` bytes of the split's leading documents (the same documents in the same
  order as without it); its rule then describes the records scanned, for reading, not for training."""
  what = describe_sources(cfg.sources)
  rule = SplitRule(cfg.valid_fraction, cfg.split_seed)
  if cfg.valid_sources:
    shards = list_shards(cfg.valid_sources, cfg, "--valid-data")
    docs = _collect(
      (d for f in range(len(shards)) for _, parts in Reader(shards, cfg).records(f) for d in parts),
      cfg,
      min((b for b in (max_bytes, wanted) if b), default=0),
    )
    if docs.num_bytes == 0:
      raise DataError(f"{', '.join(cfg.valid_sources)}: the validation split is empty")
    desc = f"valid from {', '.join(cfg.valid_sources)}: {len(docs)} docs ({docs.num_bytes:,} bytes)"
    return ValidSplit(docs, dataclasses.replace(rule, held_out=False), desc)
  shards = list_shards(cfg.sources, cfg)
  scan = _HashScan(Reader(shards, cfg, builtin=not cfg.sources), rule, cfg.min_doc_bytes, max_bytes, wanted)
  docs, rule = scan.run(what)
  scanned = "all files" if rule.boundary is None else f"the first {rule.boundary[0] + 1} of {len(shards)} files"
  desc = (
    f"valid: {len(docs)} docs ({docs.num_bytes:,} bytes) held out by document hash (seed {cfg.split_seed}, fraction "
    f"{cfg.valid_fraction}) from {scanned}"
  )
  return ValidSplit(docs, rule, desc)


def _collect(docs: Iterator[src.Document], cfg: DataConfig, max_bytes: int) -> Documents:
  def kept():
    total = 0
    for name, data in docs:
      if len(data) >= cfg.min_doc_bytes:
        yield name, data
        total += len(data)
        if max_bytes and total >= max_bytes:
          return

  return build(kept())


class _HashScan:
  """Reads the training sources in order, keeping the documents the hash holds out, until `budget` bytes (where
  the split ends), or until `wanted` bytes of its leading documents once a training document has been seen (so that
  neither small-corpus rule can change them)."""

  def __init__(self, reader: Reader, rule: SplitRule, min_bytes: int, budget: int, wanted: int = 0):
    self.reader, self.rule, self.min_bytes, self.budget, self.wanted = reader, rule, min_bytes, budget, wanted

  def run(self, what: str) -> tuple[Documents, SplitRule]:
    valid: list[src.Document] = []
    total, count, train, train_bytes = 0, 0, 0, 0
    lowest: tuple[float, Address] | None = None
    highest: tuple[float, Address] | None = None
    boundary = None
    for f in range(len(self.reader.shards)):
      for r, parts in self.reader.records(f):
        for p, (name, data) in enumerate(parts):
          if len(data) < self.min_bytes:
            continue
          count += 1
          h = split_hash(name, self.rule.seed)
          lowest = min(lowest, (h, (f, r, p))) if lowest else (h, (f, r, p))
          highest = max(highest, (h, (f, r, p))) if highest else (h, (f, r, p))
          if h < self.rule.fraction:
            valid.append((name, data))
            total += len(data)
          else:
            train += 1
            train_bytes += len(data)
        if (self.budget and total >= self.budget) or (self.wanted and total >= self.wanted and train):
          boundary = (f, r + 1)
          break
      if boundary is not None:
        break
    rule = dataclasses.replace(self.rule, boundary=boundary)
    if boundary is None:  # the whole corpus was read: the small-corpus rules hold
      if count < 2:
        raise DataError(
          f"{what}: {count} document(s) cannot be split by document; pass --valid-data PATH "
          "or set data.doc_separator to split files into documents"
        )
      assert lowest is not None and highest is not None
      if not valid:  # tiny corpora: hold out at least one document
        rule = dataclasses.replace(rule, forced_valid=lowest[1])
        valid = list(self.reader.documents_at([lowest[1]]).values())
      elif not train:
        rule = dataclasses.replace(rule, forced_train=highest[1])
        drop = self.reader.documents_at([highest[1]])[highest[1]][0]
        valid = [d for d in valid if d[0] != drop]
    docs = build(iter(valid))
    if docs.num_bytes == 0:
      raise DataError(f"{what}: the validation split is empty")
    if boundary is None:
      warn_if_lopsided(what, docs.num_bytes, total + train_bytes, self.rule.fraction)
    return docs, rule


def warn_if_lopsided(what: str, valid_bytes: int, all_bytes: int, fraction: float) -> None:
  """One warning line when the documents the hash holds out are far more of the corpus's bytes than
  `data.valid_fraction` of its documents (a few large documents): above 3x the fraction and 5 % of the bytes."""
  share = valid_bytes / max(all_bytes, 1)
  if share > 3 * fraction and share > 0.05:
    logs.warning(
      f"{what}: the valid split holds {share:.0%} of the corpus's bytes ({valid_bytes:,} of {all_bytes:,}) at "
      f"data.valid_fraction {fraction} of its documents; set data.valid_sources (--valid-data) or split the data "
      "into more, smaller documents (e.g. data.doc_separator)"
    )
