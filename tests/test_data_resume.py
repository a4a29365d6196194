"""A checkpoint's data position saved by 2 processes, restored by 1: merged for random-access data (the next global
batches are those the 2 processes would have read), refused in one line for a streamed corpus (not "damaged")."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from chunklm.config import DataConfig
from chunklm.data.feed import open_train_data, train_batches
from chunklm.run.checkpoint import Checkpointer, ProcessCountChange
from chunklm.run.integrity import write_manifest
from test_stream import _array_record_shards, _jsonl_shards


def _saved_by_two(tmp_path, folder) -> tuple:
  """A checkpoint at step 5 whose data position is that of 2 processes after 5 steps, and those 2 iterators."""
  cfg = DataConfig(
    sources=(str(folder),), seq_len=64, shuffle_buffer_mb=0.004, interleave=2, min_doc_bytes=1, prefetch=0
  )
  data = open_train_data(cfg, 2048)
  two = [train_batches(data, cfg, 4, process_index=p, process_count=2, max_docs=3) for p in range(2)]
  for _ in range(5):
    for it in two:
      next(it)
  ckpt = Checkpointer(tmp_path / "checkpoints", asynchronous=False)
  one = train_batches(data, cfg, 4, process_index=0, process_count=1, max_docs=3)
  ckpt.save(5, {"w": jnp.zeros(3)}, one, {"config": {}})
  ckpt.close()
  step = tmp_path / "checkpoints" / "5"
  (step / "data" / "process_0-of-1.json").unlink()
  for p, it in enumerate(two):
    (step / "data" / f"process_{p}-of-2.json").write_text(json.dumps(it.get_state()))
  write_manifest(step)
  return data, cfg, two


def test_random_access_data_saved_by_two_processes_resumes_on_one(tmp_path):
  data, cfg, two = _saved_by_two(tmp_path, _array_record_shards(tmp_path))
  one = train_batches(data, cfg, 4, process_index=0, process_count=1, max_docs=3)
  step, _, _ = Checkpointer(tmp_path / "checkpoints").restore_latest({"w": jnp.zeros(3)}, one)
  assert step == 5
  for _ in range(4):
    halves = [next(it) for it in two]
    whole = next(one)
    for k in whole:
      np.testing.assert_array_equal(whole[k], np.concatenate([h[k] for h in halves]))


def test_a_streamed_corpus_saved_by_two_processes_is_refused_on_one_in_a_line_that_says_why(tmp_path):
  data, cfg, _ = _saved_by_two(tmp_path, _jsonl_shards(tmp_path))
  one = train_batches(data, cfg, 4, process_index=0, process_count=1, max_docs=3)
  with pytest.raises(ProcessCountChange, match=r"written by 2 processes and this run has 1.*chunklm data prepare"):
    Checkpointer(tmp_path / "checkpoints").restore_latest({"w": jnp.zeros(3)}, one)
  assert (tmp_path / "checkpoints" / "5").is_dir(), "a readable checkpoint is never moved aside"


def test_a_position_saved_by_the_in_memory_pipeline_restarts_the_stream_with_a_warning(tmp_path, caplog):
  data, cfg, _ = _saved_by_two(tmp_path, _jsonl_shards(tmp_path))
  step = tmp_path / "checkpoints" / "5"
  for f in (step / "data").glob("*.json"):
    f.unlink()
  (step / "data" / "process_0-of-1.json").write_text(json.dumps({"next_index": 40}))  # grain's MapDataset iterator
  write_manifest(step)
  one = train_batches(data, cfg, 4, process_index=0, process_count=1, max_docs=3)
  fresh = train_batches(data, cfg, 4, process_index=0, process_count=1, max_docs=3)
  with caplog.at_level("WARNING", logger="chunklm"):
    restored = Checkpointer(tmp_path / "checkpoints").restore_latest({"w": jnp.zeros(3)}, one)
  assert restored is not None and restored[0] == 5, "the model resumes: a readable checkpoint is not damaged"
  assert "in-memory pipeline" in caplog.text
  a, b = next(one), next(fresh)
  assert all((a[k] == b[k]).all() for k in a), "the stream starts from its beginning"
