"""Work bounded by what is asked, not by the corpus or train.steps (issue 37): a file of many documents read a block
at a time, the valid split's leading documents read without the rest, the tokenizer's bounded sample, a warning when
the hash holds out most of a corpus's bytes, and a schedule for the most steps the optimizer counts (more is
refused in one line)."""

from __future__ import annotations

import dataclasses
import json
import random
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from chunklm.config import DataConfig, TrainConfig
from chunklm.config.schema import MAX_STEPS
from chunklm.data import tokenizer
from chunklm.data.corpus import split_hash
from chunklm.data.sources import split_stream
from chunklm.data.split import read_valid
from chunklm.errors import ConfigError
from chunklm.seq2seq.batches import EVAL_WINDOWS, Data
from chunklm.seq2seq.trainer import load_mrt5_config
from chunklm.train.optim import lr_schedule
from conftest import write_corpus


def test_a_separated_file_is_split_a_block_at_a_time_exactly_as_whole(tmp_path):
  rng = random.Random(0)
  path = tmp_path / "f.txt"
  for _ in range(120):
    sep = rng.choice([b"a", b"ab", b"aba", b"aa", b"\n\n", b"xyz"])
    data = bytes(rng.choice(b"abx\nyz") for _ in range(rng.randint(0, 50)))
    path.write_bytes(data)
    for block in (1, 2, 3, 7, 64):
      assert list(split_stream(path, sep, block)) == data.split(sep), (data, sep, block)


def _jsonl(tmp_path, docs: int = 400, seed: int = 0):
  rng = np.random.default_rng(seed)
  folder = tmp_path / "c"
  folder.mkdir()
  for f in range(4):
    with open(folder / f"s{f}.jsonl", "w") as out:
      for d in range(docs // 4):
        out.write(json.dumps({"text": f"<{f}:{d}>" + "x" * int(rng.integers(20, 400))}) + "\n")
  return folder


@pytest.mark.parametrize("budget", [0, 6000])
def test_the_valid_splits_leading_documents_are_read_without_the_rest(tmp_path, budget):
  cfg = DataConfig(sources=(str(_jsonl(tmp_path)),), valid_fraction=0.1, min_doc_bytes=1)
  whole = read_valid(cfg, budget).docs
  for wanted in (1, 700, 2500, 10**9):
    lead = read_valid(cfg, budget, wanted=wanted).docs
    assert lead.names == whole.names[: len(lead)], "the same documents in the same order"
    assert lead.num_bytes >= min(wanted, whole.num_bytes)
    if wanted < whole.num_bytes // 2:
      assert len(lead) < len(whole), "the scan stopped early"


def test_a_leading_read_keeps_the_small_corpus_rule_that_trains_one_document(tmp_path):
  """Every document hashes into valid: the whole split trains the highest one, so a leading read may not stop
  before it has seen that no document trains."""
  path = tmp_path / "c.jsonl"
  path.write_text("".join(json.dumps({"text": f"document {i} " * 10}) + "\n" for i in range(6)))
  cfg = DataConfig(sources=(str(path),), valid_fraction=0.999, min_doc_bytes=1)
  whole = read_valid(cfg, 0)
  assert whole.rule.forced_train is not None and len(whole.docs) == 5
  lead = read_valid(cfg, 0, wanted=1).docs
  assert lead.names == whole.docs.names[: len(lead)]


def _lopsided(tmp_path, big_held_out: bool):
  """A corpus of 30 small documents and one large one, which the hash holds out or not."""
  path = tmp_path / "c.jsonl"
  held = [split_hash(f"c.jsonl:{i}", 0) < 0.1 for i in range(1, 31)]
  big = 1 + held.index(big_held_out)
  path.write_text("".join(json.dumps({"text": "y" * (50_000 if i == big else 100)}) + "\n" for i in range(1, 31)))
  return DataConfig(sources=(str(path),), valid_fraction=0.1, min_doc_bytes=1)


def test_a_valid_split_of_most_of_the_bytes_is_warned_about_once(tmp_path, caplog):
  with caplog.at_level("WARNING", logger="chunklm"):
    read_valid(_lopsided(tmp_path, big_held_out=True), 0)
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 1 and "of the corpus's bytes" in lines[0] and "data.valid_sources" in lines[0]
  assert "\n" not in lines[0]


def test_a_valid_split_of_its_share_of_the_bytes_is_not_warned_about(tmp_path, caplog):
  with caplog.at_level("WARNING", logger="chunklm"):
    read_valid(_lopsided(tmp_path, big_held_out=False), 0)
  assert not caplog.records


class _Sampled(Exception):
  pass


def test_the_tokenizer_trains_on_a_bounded_sample(tmp_path, monkeypatch):
  seen = []

  def train(docs, *args, **kwargs):
    seen.append(docs.num_bytes)
    raise _Sampled

  monkeypatch.setattr(tokenizer, "train_tokenizer", train)
  cfg = DataConfig(sources=(str(_jsonl(tmp_path, docs=8000)),), min_doc_bytes=1, seq_len=64)  # ~1.7 MB
  with pytest.raises(_Sampled):
    tokenizer.train_on_splits(cfg, 300, tmp_path / "t.model", sample_mb=1, log=lambda *a: None)
  assert (1 << 20) <= seen[0] < (1 << 20) + 1000


def test_the_schedule_is_a_closed_form_up_to_the_most_steps_the_optimizer_counts():
  t = time.perf_counter()
  for schedule in ("cosine", "wsd", "constant"):
    cfg = dataclasses.replace(TrainConfig(), steps=MAX_STEPS, schedule=schedule)
    lr = lr_schedule(cfg)
    values = np.asarray(lr(np.array([0, 1000, MAX_STEPS // 2, MAX_STEPS - 1])))
    assert ((values > 0) & (values <= cfg.lr * 1.0001)).all()
  params = {"w": jnp.ones(3)}
  tx = optax.adamw(lr)
  updates, _ = jax.jit(tx.update)(params, tx.init(params), params)  # jitted, as in the training step
  assert np.isfinite(np.asarray(updates["w"])).all()
  assert time.perf_counter() - t < 20, "nothing grows with train.steps"


def test_more_steps_than_the_optimizer_counts_are_refused_in_one_line():
  with pytest.raises(ConfigError, match=r"train.steps 1000000000000: at most 2,147,483,647") as e:
    TrainConfig(steps=10**12)  # when the config loads, before any data is read
  assert "\n" not in str(e.value)


def test_an_mrt5_evaluation_batch_is_lowered_to_the_windows_there_are(tmp_path):
  corpus = write_corpus(tmp_path / "corpus")
  cfg = load_mrt5_config("mrt5_tiny", [f"data.sources=[{corpus}]", "data.seq_len=48", "seq2seq.target_len=20"])
  t = time.perf_counter()
  batches = Data(cfg, tmp_path / "cache").eval_batches(10**8)
  assert [len(b["ids"]) for b in batches] == [EVAL_WINDOWS] and time.perf_counter() - t < 20
