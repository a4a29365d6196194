"""The data section of a config: where documents come from, how they are read, cleaned (DNA) and split, and how
they become windows. Its choices are `Literal` types that the loader checks (loading.py)."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Literal

from chunklm.errors import ConfigError

# The closed sets of choices: the loader refuses any other value, naming the valid ones.
DnaCase = Literal["keep", "upper", "lower"]
DnaIupac = Literal["keep", "n"]
DnaNRuns = Literal["keep", "drop", "split"]


@dataclasses.dataclass(frozen=True)
class DnaConfig:
  case: DnaCase = "keep"  # keep | upper | lower: fold soft-masked (lower-case) bases, or keep the mask
  iupac: DnaIupac = "keep"  # keep | n: ambiguity codes (R, Y, S, W, K, M, B, D, H, V) kept or written as N
  n_runs: DnaNRuns = "keep"  # keep | drop | split: runs of >= n_run_min N kept, removed, or split into documents
  n_run_min: int = 1  # the shortest run of N that n_runs acts on
  reverse_complement: float = 0.0  # probability that training reads a document as its reverse complement

  def is_default(self) -> bool:
    """True when reading leaves the sequences as they are (reverse_complement acts later, in training)."""
    return (self.case, self.iupac, self.n_runs) == ("keep", "keep", "keep")

  def __post_init__(self):
    if self.n_run_min < 1:
      raise ConfigError(f"data.dna.n_run_min: must be >= 1, got {self.n_run_min}")
    if not 0 <= self.reverse_complement <= 1:
      raise ConfigError(f"data.dna.reverse_complement: a probability in [0, 1], got {self.reverse_complement}")


@dataclasses.dataclass(frozen=True)
class MixtureSource:
  """One named source of a training mixture (`data.mixture`)."""

  name: str  # names the source in the logs and in metrics.jsonl (its valid bpb, its share of training bytes)
  sources: tuple[str, ...]  # its paths, as --data takes them
  weight: float = 1.0  # its share of the training bytes (the weights are normalised)
  valid_sources: tuple[str, ...] = ()  # its held-out paths; () = held out of `sources` by document hash

  def __post_init__(self):
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
      raise ConfigError(f"data.mixture: a source's name is letters, digits, '_', '.' or '-', got {self.name!r}")
    if not self.sources:
      raise ConfigError(f"data.mixture: source {self.name!r} has no paths (sources: [PATH, ...])")
    if not (math.isfinite(self.weight) and self.weight > 0):
      raise ConfigError(f"data.mixture: source {self.name!r} needs a positive weight, got {self.weight}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  sources: tuple[str, ...] = ()  # training paths (files, dirs, .jsonl, FASTA/FASTQ, .gz); () = Python stdlib
  valid_sources: tuple[str, ...] = ()  # held-out paths; () = split `sources` by document
  mixture: tuple[MixtureSource, ...] = ()  # named sources with weights, instead of `sources` (training bytes by weight)
  include: tuple[str, ...] = ("*",)  # glob patterns a file inside a directory must match (name or relative path)
  exclude: tuple[str, ...] = ()  # glob patterns that skip files inside directories
  jsonl_field: str = "text"  # field holding the text: the key in .jsonl records, the column of Parquet files
  doc_separator: str = ""  # split text files into documents at this string; "" = one document per file
  valid_fraction: float = 0.02  # fraction of documents held out when valid_sources is empty
  split_seed: int = 0  # seed of the document hash that decides the train/valid split
  seq_len: int = 256  # window length L in bytes
  min_doc_bytes: int = 16  # shorter documents are skipped
  max_docs_per_window: int = 0  # documents one training window may touch (the packer pads beyond); 0 = from the corpus
  seed: int = 0  # shuffle seed (file order per epoch, the shuffle windows, the global shuffle of prepared data)
  piece_windows: int = 4  # documents are cut into pieces of this many windows, shuffled as units; 0 = whole documents
  lanes_per_row: int = 4  # lanes (streams of pieces) each batch row takes its windows from in turn, step after step
  shuffle_buffer_mb: float = 32.0  # MB of pieces each process's stream shuffles at a time (at least one whole record)
  interleave: int = 8  # files each process reads at a time, a record from each in turn
  cap_sample_mb: int = 16  # MB of training documents read at start to set max_docs_per_window (when 0)
  mmap_min_mb: int = 256  # corpora larger than this are kept in a memory-mapped cache file, not in RAM
  prefetch: int = 4  # batches prepared ahead by the grain iterator
  tokenizer: str = ""  # sentencepiece model of a token-level model (BPE baseline); "" = bytes
  dna: DnaConfig = DnaConfig()  # DNA cleaning (case, IUPAC codes, N runs) and reverse-complement augmentation

  @property
  def doc_slots(self) -> int:
    """The documents a training window can touch, so the chunk slots an H-Net reserves for their starts:
    `max_docs_per_window`, or before the corpus has set it (0) the bound from `min_doc_bytes` (each document is
    BOS + >= min_doc_bytes bytes)."""
    if self.max_docs_per_window:
      return self.max_docs_per_window
    return math.ceil(self.seq_len / (self.min_doc_bytes + 1)) + 1

  def __post_init__(self):
    if self.seq_len <= 1:
      raise ConfigError(f"data.seq_len: must be > 1, got {self.seq_len}")
    if self.min_doc_bytes < 1:
      raise ConfigError(f"data.min_doc_bytes: must be >= 1, got {self.min_doc_bytes}")
    if not 0 < self.valid_fraction < 1:
      raise ConfigError(f"data.valid_fraction: must be in (0, 1), got {self.valid_fraction}")
    if self.max_docs_per_window == 1 or self.max_docs_per_window < 0:
      raise ConfigError(
        f"data.max_docs_per_window: must be >= 2 (a window can start inside one document and begin "
        f"another) or 0 (from the corpus), got {self.max_docs_per_window}"
      )
    if self.mixture and (self.sources or self.valid_sources):
      raise ConfigError("data.mixture replaces data.sources and data.valid_sources (--data, --valid-data): give one")
    names = [m.name for m in self.mixture]
    if len(set(names)) < len(names):
      raise ConfigError(f"data.mixture: source names must differ, got {names}")
    if self.shuffle_buffer_mb <= 0 or min(self.interleave, self.cap_sample_mb, self.lanes_per_row) < 1:
      raise ConfigError("data.shuffle_buffer_mb must be > 0, data.interleave, cap_sample_mb and lanes_per_row >= 1")
    if self.piece_windows < 0:
      raise ConfigError(f"data.piece_windows: must be >= 0, got {self.piece_windows}")
    if self.mmap_min_mb < 0 or self.prefetch < 0:
      raise ConfigError("data.mmap_min_mb and data.prefetch must be >= 0")
