"""The BPE baseline: exact tokenizer, exact bits per byte, byte-identical evaluation text, bad tokenizer files."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chunklm.config import DataConfig
from chunklm.data import corpus
from chunklm.data.pipeline import PackedWindows
from chunklm.data.tokenizer import Tokenizer, check_vocab, tokenize, train_tokenizer
from chunklm.errors import ConfigError, DataError
from chunklm.eval.bpb import evaluate, make_eval_step
from chunklm.model.functional import forward, split_model
from chunklm.model.lm import build_model
from conftest import tiny_config, write_corpus


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  root = tmp_path_factory.mktemp("tok")
  docs = corpus.load_splits(
    DataConfig(sources=(str(write_corpus(root / "c", n_docs=40, size=600)),), min_doc_bytes=1)
  ).train
  return train_tokenizer(docs, 320, root / "bpe.model", log=lambda *a: None)


def test_round_trip_is_exact_for_any_bytes(tok):
  rng = np.random.default_rng(0)
  cases = [
    b"def f(x):\n    return x\n",
    "naïve café ✓ 漢字".encode(),
    b"\xff\xfe\x00bad \xc3 utf8 \xe2\x82",
    bytes(rng.integers(0, 256, 500).astype(np.uint8)),
    b"",
    b"  \t\t  trailing   \n\n",
  ]
  for data in cases:
    ids = tok.encode(data)
    assert tok.decode(ids) == data
    assert int(tok.piece_bytes[ids].sum()) == len(data)


def test_bpb_of_a_token_model_is_total_nll_over_text_bytes(tok):
  cfg = tiny_config(f"model.vocab_size={tok.vocab_size}", f"data.tokenizer={tok.path}", "data.seq_len=16")
  graphdef, params = split_model(build_model(cfg, 0))
  texts = [b"def value(self):\n    return x\n", b"print(range(y))"]
  byte_docs = corpus.build([(f"d{i}", t) for i, t in enumerate(texts)])
  token_docs = tokenize(byte_docs, tok)
  res = evaluate(make_eval_step(graphdef), params, token_docs, 16, 4, bos=tok.bos_id, piece_bytes=tok.piece_bytes)
  # by hand: each document = BOS + its tokens; every token predicted once from its prefix within the document
  total = 0.0
  for t in texts:
    ids = [tok.bos_id] + tok.encode(t).tolist()
    batch = {
      "ids": jnp.asarray([ids[:-1]]),
      "segment_ids": jnp.ones((1, len(ids) - 1), jnp.int32),
      "positions": jnp.arange(len(ids) - 1)[None],
    }
    logits, _ = forward(graphdef, params, batch)
    logp = jax.nn.log_softmax(logits[0])
    total += -float(sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1)))
  n_bytes = sum(len(t) for t in texts)
  assert res["bytes"] == n_bytes
  assert res["bpb"] == pytest.approx(total / n_bytes / math.log(2), rel=1e-4)  # float32 sums in another order


def test_byte_and_token_models_see_byte_identical_text(tok, corpus_dir):
  splits = corpus.load_splits(DataConfig(sources=(str(corpus_dir),), valid_fraction=0.3))
  token_valid = tokenize(splits.valid, tok)
  assert token_valid.names == splits.valid.names
  for i in range(len(splits.valid)):
    s, n = token_valid.starts[i], token_valid.lengths[i]
    assert tok.decode(token_valid.data[s : s + n]) == splits.valid.doc(i)
  windows = PackedWindows(token_valid, 8, shuffle=False, pad_last=True, bos=tok.bos_id, piece_bytes=tok.piece_bytes)
  assert sum(int(windows[i]["target_bytes"].sum()) for i in range(len(windows))) == splits.valid.num_bytes


def test_bad_tokenizer_files(tmp_path, tok):
  with pytest.raises(DataError, match="not found; train one with"):
    Tokenizer(tmp_path / "missing.model")
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(DataError, match="not a sentencepiece model"):
    Tokenizer(tmp_path / "junk.model")
  with pytest.raises(ConfigError, match=f"has {tok.vocab_size} pieces but model.vocab_size is 4096"):
    check_vocab(tok, 4096)
  with pytest.raises(ConfigError, match="needs|token model"):
    tiny_config("model.vocab_size=4096")


def test_tokenizer_cli_reports_bytes_per_token(tmp_path, corpus_dir, capsys):
  from chunklm.cli import main

  out = tmp_path / "t.model"
  assert (
    main(
      [
        "tokenizer",
        "train",
        "--data",
        str(corpus_dir),
        "--set",
        "data.valid_fraction=0.3",
        "--vocab-size",
        "300",
        "--out",
        str(out),
      ]
    )
    == 0
  )
  text = capsys.readouterr().out
  assert out.exists() and "bytes per token" in text and "exact round trip: True" in text
