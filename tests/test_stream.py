"""The streaming data path: lanes packed as the rule says (against a plain concatenation), every training document
read exactly once per epoch across processes, exact resume, resume on another process count for random-access data,
the bounded valid split, and files dealt by size."""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections import Counter

import numpy as np
import pytest

from chunklm.config import DataConfig
from chunklm.data.corpus import load_splits
from chunklm.data.feed import assign_files, cutter, lane_source, open_train_data, train_batches
from chunklm.data.lanes import LaneIterator
from chunklm.data.pipeline import BOS
from chunklm.data.shards import Reader, list_shards
from chunklm.data.split import read_valid
from chunklm.data.stream import Cutter, HostStream, byte_units


def _jsonl_shards(tmp_path, files: int = 5, docs: int = 40, seed: int = 0):
  rng = np.random.default_rng(seed)
  folder = tmp_path / "shards"
  folder.mkdir()
  for f in range(files):
    with gzip.open(folder / f"shard-{f:03d}.jsonl.gz", "wt") as out:
      for d in range(docs):
        n = int(rng.integers(20, 400))
        text = "".join(chr(c) for c in rng.integers(97, 123, n))
        out.write(json.dumps({"text": f"<{f}:{d}>" + text}) + "\n")
  return folder


def _array_record_shards(tmp_path, files: int = 3, docs: int = 50, seed: int = 0):
  from array_record.python.array_record_module import ArrayRecordWriter

  rng = np.random.default_rng(seed)
  folder = tmp_path / "prepared"
  folder.mkdir()
  for f in range(files):
    writer = ArrayRecordWriter(str(folder / f"documents-{f:05d}-of-{files:05d}.array_record"), "group_size:1")
    for d in range(docs):
      n = int(rng.integers(20, 300))
      writer.write(f"<{f}:{d}>".encode() + bytes(rng.integers(97, 123, n).astype(np.uint8)))
    writer.close()
  return folder


def _cfg(folder, **kw) -> DataConfig:
  base = dict(
    sources=(str(folder),),
    seq_len=64,
    shuffle_buffer_mb=0.004,
    interleave=2,
    min_doc_bytes=1,
    piece_windows=0,
    lanes_per_row=1,
  )
  return DataConfig(**{**base, **kw})


class _Recording(LaneIterator):
  """A lane iterator that keeps the address and epoch of every document its lanes load."""

  def _load(self, lane, epoch, piece):
    self.loaded.append((epoch, piece[0]))
    self.pieces.append((epoch, piece[0], piece[1]))
    self.owned.append((lane, piece))
    super()._load(lane, epoch, piece)


def _iterator(data, cfg, batch, index, count, **kw) -> _Recording:
  source, reader = lane_source(data, cfg, batch, index, count)
  it = _Recording(source, reader, cfg.seq_len, cutter(cfg), lanes_per_row=cfg.lanes_per_row, **kw)
  it.loaded, it.owned, it.pieces = [], [], []
  return it


def _train_addresses(data, cfg) -> list:
  reader = Reader(data.shards, cfg)
  out = []
  for f in range(len(data.shards)):
    for r, parts in reader.records(f):
      out += [(f, r, p) for p, (name, d) in enumerate(parts) if not data.parts[0].rule.is_valid(name, (f, r, p))]
  return out


@pytest.mark.parametrize("kind", ["streamed", "streamed in pieces", "fewer files than processes", "random access"])
@pytest.mark.parametrize("processes", [2, 3])
def test_every_training_piece_is_read_once_per_epoch_across_processes(tmp_path, kind, processes):
  if kind == "random access":
    folder = _array_record_shards(tmp_path)
  else:
    folder = _jsonl_shards(tmp_path, files=2 if "fewer" in kind else 5)
  cfg = _cfg(folder, piece_windows=1 if "pieces" in kind else 0)
  data = open_train_data(cfg, 2048)
  batch = 2 * processes
  its = [_iterator(data, cfg, batch, p, processes) for p in range(processes)]
  for _ in range(2000):
    for it in its:
      next(it)
    if all(min(e for e, _ in it.loaded[-batch:]) >= 1 for it in its):
      break
  epoch0 = Counter((a, k) for it in its for e, a, k in it.pieces if e == 0)
  cut, reader = cutter(cfg), Reader(data.shards, cfg)
  want = [
    (a, k) for a in _train_addresses(data, cfg) for k in range(len(cut.pieces(0, a, reader.documents_at([a])[a][1])))
  ]
  assert sorted(epoch0) == sorted(want), "a piece missing or read by two processes"
  assert set(epoch0.values()) == {1}
  if "pieces" in kind:
    assert len(want) > len(_train_addresses(data, cfg)), "documents of up to 400 bytes in pieces of 64"


def test_a_lane_is_the_concatenation_of_its_documents_cut_into_overlapping_windows(tmp_path):
  cfg = _cfg(_jsonl_shards(tmp_path))
  data = open_train_data(cfg, 2048)
  it = _iterator(data, cfg, 1, 0, 1)
  windows = [next(it) for _ in range(30)]
  reader = Reader(data.shards, cfg)
  docs = reader.documents_at([a for _, a in it.loaded])
  stream = b"".join(bytes([BOS]) + docs[a][1] for _, a in it.loaded)
  L = cfg.seq_len
  for k, w in enumerate(windows):
    assert bytes(w["ids"][0]) == stream[k * L : (k + 1) * L]
    assert bytes(w["targets"][0]) == stream[k * L + 1 : (k + 1) * L + 1]
    is_bos = w["ids"][0] == BOS
    assert (w["positions"][0][is_bos] == 0).all()
    assert not w["loss_mask"][0][w["targets"][0] == BOS].any(), "a document's first byte predicted from another's"


def test_the_cap_pads_instead_of_touching_one_document_too_many(tmp_path):
  cfg = _cfg(_jsonl_shards(tmp_path), seq_len=256)
  data = open_train_data(cfg, 2048)
  it = _iterator(data, cfg, 2, 0, 1, max_docs=2)
  lanes = list(it.lanes.values())
  read: list[bytearray] = [bytearray(), bytearray()]
  padded = 0
  for _ in range(40):
    b = next(it)
    seg = b["segment_ids"]
    assert seg.max() <= 2
    for row in range(2):
      read[row] += bytes(b["ids"][row][seg[row] > 0])  # inputs tile a lane's stream: each byte once
      pad = np.flatnonzero(seg[row] == 0)
      padded += len(pad)
      assert not len(pad) or pad[-1] == len(seg[row]) - 1, "padding only at a window's end"
      assert not b["loss_mask"][row][pad].any()
  assert padded > 0, "documents of 20-400 bytes in windows of 256 must need the cap"
  docs = Reader(data.shards, cfg).documents_at([a for _, a in it.loaded])
  for row, lane in enumerate(lanes):
    stream = b"".join(bytes([BOS]) + docs[p[0]][1] for owner, p in it.owned if owner is lane)
    assert bytes(read[row]) == stream[: len(read[row])]


@pytest.mark.parametrize("kind", ["streamed", "streamed in pieces", "random access"])
def test_resume_reads_exactly_the_batches_an_uninterrupted_run_reads(tmp_path, kind):
  folder = _array_record_shards(tmp_path) if kind == "random access" else _jsonl_shards(tmp_path)
  rc = dataclasses.replace(DataConfig().dna, reverse_complement=0.5)
  cfg = _cfg(folder, dna=rc, prefetch=2, piece_windows=1 if "pieces" in kind else 0, lanes_per_row=3)
  data = open_train_data(cfg, 2048)
  straight = train_batches(data, cfg, 4, process_index=0, process_count=1, max_docs=3)
  for _ in range(23):
    next(straight)
  state = json.loads(json.dumps(straight.get_state()))  # as a checkpoint keeps it
  resumed = train_batches(data, cfg, 4, process_index=0, process_count=1, max_docs=3)
  resumed.set_state(state)
  for _ in range(15):
    a, b = next(straight), next(resumed)
    assert all((a[k] == b[k]).all() for k in a)
  straight.close()
  resumed.close()


def test_random_access_data_resumes_on_another_process_count_at_the_same_global_batch(tmp_path):
  cfg = _cfg(_array_record_shards(tmp_path), lanes_per_row=2)
  data = open_train_data(cfg, 2048)
  two = [train_batches(data, cfg, 4, process_index=p, process_count=2, max_docs=3) for p in range(2)]
  for _ in range(11):
    for it in two:
      next(it)
  states = [json.loads(json.dumps(it.get_state())) for it in two]
  merged = {
    "lanes": {**states[0]["lanes"], **states[1]["lanes"]},
    "source": {"lanes": {**states[0]["source"]["lanes"], **states[1]["source"]["lanes"]}},
    "step": states[0]["step"],
  }
  one = train_batches(data, cfg, 4, process_index=0, process_count=1, max_docs=3)
  one.set_state(merged)
  for _ in range(7):
    halves = [next(it) for it in two]
    whole = next(one)
    for k in whole:
      np.testing.assert_array_equal(whole[k], np.concatenate([h[k] for h in halves]))
  for it in (*two, one):
    it.close()


def test_the_valid_split_of_a_small_corpus_is_the_whole_corpus_split_as_before(tmp_path):
  cfg = _cfg(_jsonl_shards(tmp_path), valid_fraction=0.1)
  old = load_splits(cfg)
  new = read_valid(cfg, 0)
  assert new.docs.names == old.valid.names
  assert new.rule.boundary is None
  data = open_train_data(cfg, 0)
  assert data.complete and data.sample.num_bytes == old.train.num_bytes


def test_a_bounded_valid_scan_stops_early_and_the_rest_of_the_corpus_trains(tmp_path):
  cfg = _cfg(_jsonl_shards(tmp_path, files=8), valid_fraction=0.1)
  split = read_valid(cfg, 1500)
  assert split.rule.boundary is not None and split.rule.boundary[0] < 7
  assert 1500 <= split.docs.num_bytes < 1500 + 500
  shards = list_shards(cfg.sources, cfg)
  stream = HostStream(
    Reader(shards, cfg),
    split.rule,
    list(range(len(shards))),
    Cutter(byte_units, BOS),
    seed=0,
    interleave=1,
    buffer=1,
    min_bytes=1,
  )
  names = set()
  reader = Reader(shards, cfg)
  for epoch, (address, _, _, _) in stream:
    if epoch:
      break
    names.add(reader.documents_at([address])[address][0])
  assert not names & set(split.docs.names)
  total = sum(1 for f in range(len(shards)) for _ in Reader(shards, cfg).records(f))
  assert len(names) + len(split.docs) == total


def test_files_are_dealt_so_processes_read_about_the_same_bytes():
  sizes = [100, 90, 80, 70, 60, 50, 40, 30, 20, 10]
  dealt = assign_files(sizes, 3)
  assert sorted(f for files in dealt for f in files) == list(range(10))
  loads = [sum(sizes[f] for f in files) for files in dealt]
  assert max(loads) - min(loads) <= max(sizes) // 2


def _mixture_cfg(tmp_path, random_access: bool) -> DataConfig:
  from chunklm.config import MixtureSource

  make = _array_record_shards if random_access else _jsonl_shards
  folders = []
  for i in range(3):
    (tmp_path / f"m{i}").mkdir()
    folders.append(make(tmp_path / f"m{i}", seed=i))
  mixture = tuple(MixtureSource(n, (str(f),), w) for n, f, w in zip(("a", "b", "c"), folders, (6, 3, 1)))
  return DataConfig(mixture=mixture, seq_len=64, shuffle_buffer_mb=0.004, interleave=2, min_doc_bytes=1)


@pytest.mark.parametrize("random_access", [False, True])
def test_a_mixture_gives_each_source_its_weight_of_the_training_bytes(tmp_path, random_access):
  from chunklm.data.lanes import taken_bytes

  cfg = _mixture_cfg(tmp_path, random_access)
  data = open_train_data(cfg, 1024)
  assert [p.name for p in data.parts] == ["a", "b", "c"] and data.random_access == random_access
  assert [len(p.valid) > 0 for p in data.parts] == [True] * 3
  it = _iterator(data, cfg, 4, 0, 1)
  for _ in range(1000):
    next(it)
  taken = np.array(taken_bytes(it.get_state()), float)
  np.testing.assert_allclose(taken / taken.sum(), [0.6, 0.3, 0.1], atol=0.01)
  files = {f for _, (f, _, _) in it.loaded}
  for part in data.parts:  # each source's documents come from its own files, none of its valid split
    assert files & set(part.files)
  valid = {n for p in data.parts for n in p.valid.names}
  reader = Reader(data.shards, cfg)
  assert not valid & {reader.documents_at([a])[a][0] for _, a in it.loaded[:50]}


def test_a_mixture_refuses_data_sources_beside_it(tmp_path):
  from chunklm.config import MixtureSource
  from chunklm.errors import ConfigError

  with pytest.raises(ConfigError, match="data.mixture replaces data.sources"):
    DataConfig(sources=("x",), mixture=(MixtureSource("a", ("y",)),))
  with pytest.raises(ConfigError, match="names must differ"):
    DataConfig(mixture=(MixtureSource("a", ("y",)), MixtureSource("a", ("z",))))
  with pytest.raises(ConfigError, match="positive weight"):
    MixtureSource("a", ("y",), 0.0)


def test_pieces_put_together_again_are_the_document_and_every_byte_is_predicted_once(tmp_path):
  cfg = _cfg(_jsonl_shards(tmp_path), piece_windows=1)
  data = open_train_data(cfg, 2048)
  cut, reader = cutter(cfg), Reader(data.shards, cfg)
  for a in _train_addresses(data, cfg)[:40]:
    body = reader.documents_at([a])[a][1]
    pieces = cut.pieces(0, a, body)
    assert len(pieces) == cut.count(len(body) + 1) == -(-(len(body) + 1) // 64)
    joined = bytes(pieces[0][2]) + b"".join(bytes(p[2][1:]) for p in pieces[1:])  # each later piece repeats one unit
    assert joined == bytes([BOS]) + body
    assert [p[3] for p in pieces] == [0] + [64 * k - 1 for k in range(1, len(pieces))]
  it = _iterator(data, cfg, 1, 0, 1)
  predicted = sum(int(next(it)["loss_mask"].sum()) for _ in range(60))
  lane = next(iter(it.lanes.values()))
  done = [p for _, p in it.owned[:-1]]  # every piece but the one the lane is in
  assert predicted == sum(len(p[2]) - 1 for p in done) + lane.off, "each unit after a piece's first is predicted once"
  loaded = Counter((a, k) for _, a, k in it.pieces)
  assert max(loaded.values()) == 1, "a piece read twice in one epoch"


def test_bench_cap_compares_the_sampled_cap_with_the_whole_corpus(tmp_path):
  from chunklm.bench.cap_sample import full_cap, sample_caps
  from chunklm.data.split import valid_budget
  from conftest import tiny_config

  cfg = tiny_config("data.min_doc_bytes=1", data=_jsonl_shards(tmp_path, files=3))
  (small, whole_sample) = sample_caps(cfg, [1, 16])
  whole, docs, nbytes = full_cap(cfg, progress=False)
  assert whole_sample.sample_bytes == nbytes, "a 16 MB sample of a small corpus is all of it"
  assert docs == len(open_train_data(cfg.data, valid_budget(cfg)).sample)
  assert small.sample_bytes <= whole_sample.sample_bytes
  assert 2 <= whole.max_docs <= whole.most


def test_a_rows_lanes_take_turns_so_consecutive_steps_read_other_pieces(tmp_path):
  cfg = _cfg(_jsonl_shards(tmp_path), piece_windows=4, lanes_per_row=3)
  data = open_train_data(cfg, 2048)
  it = _iterator(data, cfg, 2, 0, 1)
  assert len(it.lanes) == 6
  for _ in range(9):
    before = {g: (lane.doc, lane.off) for g, lane in it.lanes.items()}
    next(it)
    moved = {g for g, lane in it.lanes.items() if (lane.doc, lane.off) != before[g]}
    turn = (it.step - 1) % 3
    assert moved == {turn, 3 + turn}, "the lanes whose turn it is read, and only they"
