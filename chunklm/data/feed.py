"""What a training run reads, settled at start in bounded time and memory whatever the corpus's size: the files
(listed, not read), the valid split (a bounded scan, `stream.read_valid`), a sample of training documents (the first
`data.cap_sample_mb` MB of the stream, which sets the document cap), and each process's batches (`lanes.py`).

Which files a process reads: with random-access data (ArrayRecord, e.g. from `chunklm data prepare`) every process
reads only its lanes' records of one global shuffle (`GlobalLanes`); otherwise each process streams its own files,
dealt by size so that processes read about the same bytes. A corpus of fewer files than processes is read whole by
each process, which keeps every count-th document (a warning says so: prepare the data into more shards).
"""

from __future__ import annotations

import dataclasses
import functools

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader

from chunklm import logs
from chunklm.config import DataConfig
from chunklm.data.corpus import Documents, build
from chunklm.data.formats import sniff
from chunklm.data.lanes import GlobalLanes, HostLanes, LaneDataset, LaneIterator, LaneSource
from chunklm.data.pipeline import BOS
from chunklm.data.shards import Reader, Shard, describe_sources, list_shards
from chunklm.data.split import SplitRule, read_valid
from chunklm.data.stream import Cutter, HostStream, Units, byte_units
from chunklm.errors import DataError


@dataclasses.dataclass(frozen=True)
class Part:
  """One source of the training data: the whole of it, or one named source of a mixture (`data.mixture`)."""

  name: str  # "" without a mixture
  weight: float  # its share of training bytes (normalised)
  files: range  # its files' indices in TrainData.shards
  rule: SplitRule  # which of its documents are held out (addresses index TrainData.shards)
  valid: Documents  # its valid split (bytes), as much as the evaluations read
  records: tuple[int, ...] | None  # records per file where every file is random access (ArrayRecord); else None


@dataclasses.dataclass(frozen=True)
class TrainData:
  shards: tuple[Shard, ...]  # every file of every part
  parts: tuple[Part, ...]
  description: str  # one line: where the data came from and how it was split
  sample: Documents  # the streams' first training documents (bytes): the document cap is measured on them
  complete: bool  # the sample is every training document
  sample_bytes: int  # the sample's size (kept when the plan lets the sample go)
  builtin: bool  # the built-in corpus (its files are whole documents)

  @functools.cached_property
  def valid(self) -> Documents:
    """Every part's valid split, one after another (joined once)."""
    return self.parts[0].valid if len(self.parts) == 1 else concatenate([p.valid for p in self.parts])

  @property
  def random_access(self) -> bool:
    return all(p.records is not None for p in self.parts)


def part_configs(cfg: DataConfig) -> list[tuple[str, float, DataConfig]]:
  """(name, weight, the data config that reads it) for each part: the config itself, or each source of its mixture."""
  if not cfg.mixture:
    return [("", 1.0, cfg)]
  total = sum(m.weight for m in cfg.mixture)
  return [
    (m.name, m.weight / total, dataclasses.replace(cfg, sources=m.sources, valid_sources=m.valid_sources, mixture=()))
    for m in cfg.mixture
  ]


def open_train_data(cfg: DataConfig, valid_bytes: int) -> TrainData:
  """The run's data as `cfg` says; `valid_bytes` of valid split per part (0 = all). Raises DataError for unusable
  data."""
  shards: list[Shard] = []
  parts, samples, lines, complete = [], [], [], True
  for name, weight, part_cfg in part_configs(cfg):
    what = describe_sources(part_cfg.sources) + (f" ({name}, weight {weight:.3g})" if name else "")
    own = list_shards(part_cfg.sources, part_cfg)
    valid = read_valid(part_cfg, valid_bytes)
    rule = valid.rule.shifted(len(shards))
    files = range(len(shards), len(shards) + len(own))
    shards += own
    reader = Reader(tuple(shards), part_cfg, builtin=not part_cfg.sources)
    sample, whole = _sample(reader, rule, list(files), part_cfg, weight)
    _check_sample(sample, whole, what, part_cfg)
    complete = complete and whole
    samples.append(sample)
    parts.append(Part(name, weight, files, rule, valid.docs, _records(tuple(own))))
    size = sum(s.size for s in own)
    train = (
      f"{len(sample)} train docs ({sample.num_bytes:,} bytes)"
      if whole
      else f"{len(own)} files ({size:,} bytes on disk), streamed"
    )
    lines.append(f"{what}: {train}{', random access' if parts[-1].records else ''}; {valid.description}")
  sample = samples[0] if len(samples) == 1 else concatenate(samples)
  builtin = not cfg.sources and not cfg.mixture
  return TrainData(tuple(shards), tuple(parts), "; ".join(lines), sample, complete, sample.num_bytes, builtin)


def _check_sample(sample: Documents, whole: bool, what: str, cfg: DataConfig) -> None:
  if sample.num_bytes == 0:
    raise DataError(
      f"{what}: the training corpus is empty (documents shorter than data.min_doc_bytes={cfg.min_doc_bytes} are "
      "skipped)"
    )
  if whole and sample.num_bytes + len(sample) < cfg.seq_len + 1:
    raise DataError(
      f"{what}: the training corpus has {sample.num_bytes} bytes, shorter than one window of "
      f"data.seq_len={cfg.seq_len} bytes"
    )


def concatenate(parts: list[Documents]) -> Documents:
  return build(iter([(name, d.doc(i)) for d in parts for i, name in enumerate(d.names)]))


def _sample(reader: Reader, rule: SplitRule, files: list[int], cfg: DataConfig, share: float) -> tuple[Documents, bool]:
  """The first `share` of `data.cap_sample_mb` MB of training documents of `files`, in the order epoch 0 reads them
  on one process, and whether that is all of them."""
  budget = max(int(share * (cfg.cap_sample_mb << 20)), 1)
  whole = Cutter(byte_units, BOS)
  stream = HostStream(
    reader, rule, files, whole, seed=cfg.seed, interleave=cfg.interleave, buffer=1, min_bytes=cfg.min_doc_bytes
  )
  docs, total, complete = [], 0, False
  try:
    for epoch, (address, _, units, _) in stream:
      if epoch > 0:
        complete = True
        break
      docs.append((str(address), units[1:].tobytes()))
      total += len(units) - 1
      if total >= budget:
        break
  except DataError:  # no training document at all
    return build(iter(())), True
  return build(iter(docs)), complete


def _records(shards: tuple[Shard, ...]) -> tuple[int, ...] | None:
  """Records per file when every file is an ArrayRecord file (random access), else None."""
  if not shards or any(sniff(s.path) != "array_record" for s in shards):
    return None
  counts = []
  for s in shards:
    try:
      reader = ArrayRecordReader(str(s.path))
      counts.append(int(reader.num_records()))
      reader.close()
    except RuntimeError as e:
      raise DataError(f"cannot read {s.path}: not a readable ArrayRecord file ({str(e).splitlines()[0]})") from None
  return tuple(counts)


def assign_files(sizes: list[int], processes: int) -> list[list[int]]:
  """Files dealt to processes by size, largest first, each to the process with the fewest bytes so far (ties: the
  lowest index): every process reads about the same bytes, and its files in corpus order."""
  load = [0] * processes
  out: list[list[int]] = [[] for _ in range(processes)]
  for f in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
    p = min(range(processes), key=lambda q: (load[q], q))
    out[p].append(f)
    load[p] += sizes[f]
  return [sorted(files) for files in out]


def cutter(cfg: DataConfig, units: Units = byte_units, bos: int = BOS) -> Cutter:
  """How training cuts documents into pieces, as `cfg` says."""
  return Cutter(units, bos, cfg.piece_windows * cfg.seq_len, cfg.dna.reverse_complement, cfg.seed)


def lane_source(
  data: TrainData, cfg: DataConfig, batch_size: int, process_index: int, process_count: int, cut: Cutter | None = None
) -> tuple[LaneSource, Reader]:
  """Where this process's lanes (batch rows) take their pieces from."""
  if batch_size % process_count:
    raise ValueError(f"global batch {batch_size} is not divisible by {process_count} processes")
  cut = cut or cutter(cfg)
  lanes = batch_size // process_count * cfg.lanes_per_row
  reader = Reader(data.shards, cfg, builtin=data.builtin)
  weights = [p.weight for p in data.parts]
  if data.random_access:
    ids = list(range(process_index * lanes, (process_index + 1) * lanes))
    records = [(p.files.start, list(p.records or ()), p.rule) for p in data.parts]
    source: LaneSource = GlobalLanes(
      reader,
      records,
      weights,
      batch=batch_size * cfg.lanes_per_row,
      lane_ids=ids,
      seed=cfg.seed,
      min_bytes=cfg.min_doc_bytes,
      cutter=cut,
    )
    return source, reader
  streams = [_host_stream(reader, part, cfg, cut, process_index, process_count) for part in data.parts]
  return HostLanes(streams, weights, lanes), reader


def _host_stream(
  reader: Reader, part: Part, cfg: DataConfig, cut: Cutter, process_index: int, process_count: int
) -> HostStream:
  """This process's stream of `part`: its own files, or, with fewer files than processes, every count-th document."""
  n = len(part.files)
  if n >= process_count:
    dealt = assign_files([reader.shards[f].size for f in part.files], process_count)[process_index]
    files, stride = [part.files[i] for i in dealt], (0, 1)
  else:
    files, stride = list(part.files), (process_index, process_count)
    logs.warning(
      f"{n} file(s){f' in {part.name}' if part.name else ''} for {process_count} processes: each process reads all "
      f"of them and keeps every {process_count}th document; `chunklm data prepare --shards N` makes files every "
      "process can read its share of"
    )
  return HostStream(
    reader,
    part.rule,
    files,
    cut,
    seed=cfg.seed,
    interleave=cfg.interleave,
    buffer=max(int(cfg.shuffle_buffer_mb * 2**20), 1),
    min_bytes=cfg.min_doc_bytes,
    stride=stride,
  )


def train_batches(
  data: TrainData,
  cfg: DataConfig,
  batch_size: int,
  *,
  process_index: int,
  process_count: int,
  units: Units = byte_units,
  bos: int = BOS,
  piece_bytes: np.ndarray | None = None,
  max_docs: int | None = None,
) -> grain.DatasetIterator:
  """This process's batches (its `batch_size / process_count` rows of each global batch), without end, prefetched."""
  cut = cutter(cfg, units, bos)

  def make() -> LaneIterator:
    source, reader = lane_source(data, cfg, batch_size, process_index, process_count, cut)
    return LaneIterator(
      source, reader, cfg.seq_len, cut, piece_bytes=piece_bytes, max_docs=max_docs, lanes_per_row=cfg.lanes_per_row
    )

  ds: grain.IterDataset = LaneDataset(make)
  if cfg.prefetch:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=cfg.prefetch)
  return iter(ds)
