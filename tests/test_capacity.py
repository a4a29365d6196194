"""Chunk capacities: the automatic headroom, the documents-per-window cap in configs and runs, and the overflow
measurement of `chunklm bench capacity` on synthetic boundaries."""

import math

import numpy as np
import pytest

from chunklm.bench.capacity import overflow, smallest_factor, window_counts
from chunklm.config import ModelConfig, auto_capacity_factor, capacities, load_config
from chunklm.data.corpus import Documents
from chunklm.errors import ConfigError
from chunklm.model.describe import describe_config


def test_automatic_headroom_shrinks_with_the_chunks_per_window():
  model = ModelConfig(layout=("m2", ("T2",), "m2"), d_model=(32, 48), target_ratio=(6.0,))
  for length, want in [(256, 1.61), (2048, 1.22), (8192, 1.11)]:
    assert auto_capacity_factor(length / 6) == pytest.approx(want, abs=0.005)
    (m,) = capacities(model, length, doc_slots=4)
    assert m == math.ceil(length / 6 * auto_capacity_factor(length / 6)) + 4
  fixed = ModelConfig(layout=("m2", ("T2",), "m2"), d_model=(32, 48), capacity_factor=1.5)
  assert capacities(fixed, 256, doc_slots=2) == (math.ceil(256 / 6 * 1.5) + 2,)


def test_bad_capacity_settings_are_config_errors():
  with pytest.raises(ConfigError, match="capacity_factor: must be >= 1"):
    load_config("hnet_1stage_tiny", ["model.capacity_factor=0.5"])
  with pytest.raises(ConfigError, match="max_docs_per_window: must be >= 2"):
    load_config("hnet_1stage_tiny", ["data.max_docs_per_window=1"])
  cfg = load_config("hnet_1stage_tiny", ["data.max_docs_per_window=3"])
  assert cfg.data.doc_slots == 3
  assert load_config("hnet_1stage_tiny").data.doc_slots == math.ceil(256 / 17) + 1  # before the corpus sets it


def _docs(lengths):
  data = np.zeros(sum(lengths), np.uint8)
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
  return Documents(data, starts, np.asarray(lengths, np.int64), tuple(map(str, range(len(lengths)))))


def test_window_counts_split_document_starts_from_other_boundaries():
  docs = _docs([9, 20])  # stream: BOS at 0, bytes 1..9, BOS at 10, bytes 11..30
  starts = [np.zeros(9, bool), np.zeros(20, bool)]
  starts[0][[2, 5]] = True  # positions 3, 6
  starts[1][[0, 5, 9, 15]] = True  # positions 11, 16, 20 (a window's first byte), 26
  others, doc_starts = window_counts(starts, docs, 10, max_docs=4)
  assert list(others) == [2, 2, 1]  # windows [0,10) [10,20) [20,30)
  assert list(doc_starts) == [1, 1, 1]  # BOS, BOS, a window that begins inside document 2
  assert overflow(others, doc_starts, slots=1) == pytest.approx(2 / 8)
  assert overflow(others, doc_starts, slots=2) == 0.0


def test_info_reports_executed_beside_nominal_compute():
  cfg = load_config("hnet_1stage_L", ["data.max_docs_per_window=6"])
  d = describe_config(cfg)
  (slots,) = d["capacities"]
  assert slots == math.ceil(8192 / 6 * auto_capacity_factor(8192 / 6)) + 6
  assert d["executed_ratio"] == pytest.approx(slots / (8192 / 6))
  assert d["flops_per_byte"] < d["executed_flops_per_byte"] < d["executed_ratio"] * d["flops_per_byte"]
  plain = describe_config(load_config("byte_transformer_tiny"))
  assert plain["executed_ratio"] == 1.0 and plain["executed_flops_per_byte"] == plain["flops_per_byte"]


def test_the_fitted_factor_is_the_smallest_within_the_overflow_goal():
  rng = np.random.default_rng(0)
  others = rng.poisson(60, size=400) + rng.integers(0, 15, size=400)
  doc_starts = np.ones(400, np.int64)
  mean = 64.0
  for goal in (0.05, 0.01, 0.001, 0.0):
    f = smallest_factor(others, doc_starts, mean, goal)
    assert f >= 1.0 and round(f, 3) == f
    assert overflow(others, doc_starts, math.ceil(mean * f)) <= goal
    assert f == 1.0 or overflow(others, doc_starts, math.ceil(mean * (f - 0.001))) > goal
  assert smallest_factor(others, doc_starts, 200.0, 0.01) == 1.0  # every window fits at the target itself
