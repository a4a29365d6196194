"""chunklm classify: records, figures against hand counts, the pooled features against the model's own states, and
the train / eval / predict commands end to end on a task a tiny model learns in seconds."""

from __future__ import annotations

import gzip
import json
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chunklm.classify import trainer as clf_trainer
from chunklm.classify.classifier import Classifier
from chunklm.classify.metrics import classification_report
from chunklm.classify.records import Record, read_records
from chunklm.classify.trainer import ClassifySettings, train_classifier
from chunklm.cli import main
from chunklm.errors import UserError
from chunklm.model.lm import build_model, hidden_and_chunk_states
from chunklm.train import trainer
from conftest import tiny_config, write_corpus

HNET = ["model.layout=[T1, [T1], T1]", "model.d_model=[32, 48]", "model.n_heads=[2, 2]", "model.target_ratio=[3.0]"]


def write_task(path, n: int, seed: int) -> None:
  """Class 'letters' (lowercase words) vs 'digits' (numbers): separable from any byte."""
  rng = random.Random(seed)
  with path.open("w") as f:
    for i in range(n):
      label = ("letters", "digits")[i % 2]
      alphabet = "abcdefghij " if label == "letters" else "0123456789 "
      f.write(
        json.dumps({"text": "".join(rng.choice(alphabet) for _ in range(rng.randint(8, 40))), "label": label}) + "\n"
      )


def test_records_jsonl_and_fasta(tmp_path):
  (tmp_path / "a.jsonl").write_text('{"text": "héllo", "label": 3}\n\n{"text": "x", "label": "b"}\n')
  records = read_records(tmp_path / "a.jsonl")
  assert [(r.data, r.label) for r in records] == [("héllo".encode(), "3"), (b"x", "b")]
  (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress((tmp_path / "a.jsonl").read_bytes()))  # the corpus reader's
  assert read_records(tmp_path / "a.jsonl.gz") == records
  (tmp_path / "a.fa").write_text(">r1 species=ecoli\nACGT\nAC\n>r2 species=saur x\nGG\n")
  records = read_records(tmp_path / "a.fa", r"species=(\w+)")
  assert [(r.data, r.label) for r in records] == [(b"ACGTAC", "ecoli"), (b"GG", "saur")]
  for text, regex, message in [
    ('{"label": 1}\n', None, 'string field "text"'),
    ('{"text": "a"}\n', None, 'field "label"'),
    ("not json\n", None, "invalid JSON"),
    (b'{"text": "\xff", "label": 1}\n', None, r"b\.jsonl:1: not UTF-8 text \(byte 0xff"),
    ('{"text": "a\\ud800", "label": 1}\n', None, r'b\.jsonl:1: field "text" holds a lone surrogate \(\\ud800\)'),
    ('{"text": "a", "label": "\\udfff"}\n', None, r'b\.jsonl:1: field "label" holds a lone surrogate'),
    (
      '{"text": "a", "label": 1, "x": ' + "[" * 5000 + "]" * 5000 + "}\n",
      None,
      r"b\.jsonl:1: JSON nested more than 100",
    ),
    ('{"text": ["a"], "label": 1}\n', None, r'b\.jsonl:1: each line needs a string field "text"'),
    ('{"text": "a", "label": ["x"]}\n', None, r'b\.jsonl:1: each line needs a field "label"'),
    (">r1 x\nAC\n", r"species=(\w+)", "does not match the header"),
    (">r1 x\nAC\n", None, "need --label-regex"),
    (">r1 x\nAC\n", "x", "needs one group"),
  ]:
    path = tmp_path / ("b.fa" if str(text).startswith(">") else "b.jsonl")
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError, match=message) as e:
      read_records(path, regex)
    assert "\n" not in str(e.value)


def test_report_matches_hand_counts():
  # true: a a a b b c; predicted: a b a b c c
  r = classification_report([0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 2, 2], ["a", "b", "c"])
  assert r["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
  assert r["accuracy"] == pytest.approx(4 / 6)
  assert r["per_class"]["a"] == {
    "precision": 1.0,
    "recall": pytest.approx(2 / 3),
    "f1": pytest.approx(0.8),
    "support": 3,
  }
  assert r["per_class"]["b"]["f1"] == pytest.approx(0.5) and r["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
  assert r["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


@pytest.mark.parametrize("layout", [[], HNET], ids=["transformer", "hnet"])
def test_pooled_features_are_the_models_states(layout):
  from chunklm.model.functional import merge_model, split_model

  cfg = tiny_config(*layout)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 32)), jnp.int32)
  lengths = jnp.array([32, 20, 5])
  valid = jnp.arange(32)[None, :] < lengths[:, None]
  seg, pos = valid.astype(jnp.int32), jnp.broadcast_to(jnp.arange(32), (3, 32))
  graphdef, params = split_model(build_model(cfg, 0))

  @jax.jit
  def states(params):
    lm = merge_model(graphdef, params)
    h, _, chunk_states = hidden_and_chunk_states(lm, ids, seg, pos)
    return h, chunk_states, lm(ids, seg, pos)[0], lm.head(h).astype(jnp.float32)

  h, chunk_states, logits, head_of_h = states(params)
  np.testing.assert_allclose(logits, head_of_h, rtol=1e-6)  # the logits are the hidden states through the head
  assert len(chunk_states) == (1 if layout else 0)
  for pooling in ("mean", "last"):
    clf_def, clf_params = split_model(
      Classifier(merge_model(graphdef, params), 2, pooling=pooling, head="linear", hidden=8, rngs=nnx.Rngs(params=1))
    )
    feats = jax.jit(lambda p: merge_model(clf_def, p).features(ids, lengths)[0])(clf_params)
    for b, n in enumerate([32, 20, 5]):
      if pooling == "last":
        want = h[b, n - 1]
      elif chunk_states:  # the innermost stage's main-network states over its kept chunks
        inner = chunk_states[-1]
        want = inner.main_BxMxD[b][inner.valid_BxM[b]].mean(0)
      else:
        want = h[b, :n].mean(0)
      np.testing.assert_allclose(feats[b], want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # CI budget: two classifier trainings end to end (~30 s); run by .ci/run
def test_classify_train_eval_predict_from_scratch_and_fine_tuned(tmp_path, capsys):
  write_task(tmp_path / "train.jsonl", 96, 0)
  write_task(tmp_path / "test.jsonl", 40, 1)
  config = tmp_path / "tiny.yaml"
  config.write_text("model:\n  layout: [T1, [T1], T1]\n  d_model: [32, 48]\n  n_heads: [2, 2]\n  target_ratio: [3.0]\n")
  common = [
    "--data",
    str(tmp_path / "train.jsonl"),
    "--test",
    str(tmp_path / "test.jsonl"),
    "--steps",
    "40",
    "--batch-size",
    "8",
    "--seq-len",
    "48",
    "--eval-every",
    "20",
    "--no-progress",
    "--lr",
    "3e-3",
  ]
  out = tmp_path / "scratch"
  assert (
    main(["classify", "train", "--config", str(config), *common, "--out", str(out), "--json", str(tmp_path / "r.json")])
    == 0
  )
  report = json.loads((tmp_path / "r.json").read_text())
  assert report["accuracy"] >= 0.9, report
  assert (out / "confusion.png").stat().st_size > 0
  assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [20, 40]
  # eval on the same test set reproduces the figures; predict labels unlabelled records
  assert (
    main(
      [
        "classify",
        "eval",
        "--workdir",
        str(out),
        "--data",
        str(tmp_path / "test.jsonl"),
        "--plot",
        str(tmp_path / "c.png"),
        "--json",
        str(tmp_path / "e.json"),
      ]
    )
    == 0
  )
  assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == report["accuracy"]
  (tmp_path / "new.jsonl").write_text('{"text": "abc abc"}\n{"text": "123 456"}\n')
  assert (
    main(
      [
        "classify",
        "predict",
        "--workdir",
        str(out),
        "--data",
        str(tmp_path / "new.jsonl"),
        "--out",
        str(tmp_path / "p.jsonl"),
      ]
    )
    == 0
  )
  preds = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
  assert [p["label"] for p in preds] == ["letters", "digits"]
  assert all(abs(sum(p["probs"].values()) - 1) < 1e-4 for p in preds)
  # fine-tuning a trained run, backbone frozen: only the head moves
  corpus = write_corpus(tmp_path / "corpus")
  source = tmp_path / "source"
  trainer.train(
    tiny_config("train.steps=2", "train.checkpoint_every=2", data=corpus),
    source,
    progress=False,
    log=lambda *a, **k: None,
  )
  frozen = tmp_path / "frozen"
  assert (
    main(
      [
        "classify",
        "train",
        "--init-from",
        str(source),
        "--freeze-backbone",
        "--pooling",
        "last",
        "--head",
        "mlp",
        *common,
        "--out",
        str(frozen),
      ]
    )
    == 0
  )
  from chunklm.classify.trainer import load_classifier
  from chunklm.run.trained import open_run

  _, params, *_ = load_classifier(frozen)
  before = open_run(source).params
  for a, b in zip(jax.tree.leaves(params["lm"]), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)
  capsys.readouterr()


def test_classify_never_writes_into_another_run(tmp_path, capsys):
  """--out naming a training run (here the one it starts from) is refused before anything is written."""
  write_task(tmp_path / "t.jsonl", 8, 0)
  source = tmp_path / "source"
  trainer.train(
    tiny_config("train.steps=2", "train.checkpoint_every=2", data=write_corpus(tmp_path / "corpus")),
    source,
    progress=False,
    log=lambda *a, **k: None,
  )
  before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
  data = ["--data", str(tmp_path / "t.jsonl"), "--test", str(tmp_path / "t.jsonl")]
  assert main(["classify", "train", "--init-from", str(source), *data, "--out", str(source)]) == 2
  assert "is a language-model run (made by `chunklm train`); classify train writes a new" in capsys.readouterr().err
  assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
  "args, message",
  [
    ([], "either --init-from RUN"),
    (["--config", "hnet_1stage_tiny", "--init-from", "x"], "either --init-from RUN"),
    (["--config", "hnet_1stage_tiny", "--steps", "0"], "--steps must be >= 1"),
    (["--init-from", "nowhere"], "does not exist; this takes a language-model run"),
  ],
)
def test_bad_classify_input_is_one_line(tmp_path, capsys, args, message):
  write_task(tmp_path / "t.jsonl", 4, 0)
  data = ["--data", str(tmp_path / "t.jsonl"), "--test", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "o")]
  assert main(["classify", "train", *args, *data]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1, err
  (tmp_path / "one.jsonl").write_text('{"text": "a", "label": "x"}\n')
  assert (
    main(
      [
        "classify",
        "train",
        "--config",
        "hnet_1stage_tiny",
        "--data",
        str(tmp_path / "one.jsonl"),
        "--test",
        str(tmp_path / "t.jsonl"),
        "--out",
        str(tmp_path / "o2"),
      ]
    )
    == 2
  )
  assert "at least 2 classes" in capsys.readouterr().err
  assert main(["classify", "eval", "--workdir", str(tmp_path), "--data", str(tmp_path / "t.jsonl")]) == 2
  assert "is not a run (no config.yaml of a chunklm run); this takes a classifier" in capsys.readouterr().err


@pytest.mark.slow  # CI budget: two short classifier trainings (~15 s on 2 cores); run by .ci/run
def test_a_killed_classifier_trains_again_and_records_each_step_once(tmp_path, monkeypatch):
  """Interrupted before it finished (no classify.json): the same command trains it again from the start; its
  metrics.jsonl then holds each step once. A finished classifier is never written over."""
  write_task(tmp_path / "train.jsonl", 32, 0)
  records = read_records(tmp_path / "train.jsonl")
  config = tmp_path / "tiny.yaml"
  config.write_text("model:\n  layout: [T1]\n  d_model: [32]\n  n_heads: [2]\n")
  settings = ClassifySettings(steps=4, batch_size=4, seq_len=32, eval_every=1)
  out = tmp_path / "clf"
  real, calls = clf_trainer.evaluate, []

  def interrupted(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(*args, **kwargs)

  monkeypatch.setattr(clf_trainer, "evaluate", interrupted)
  with pytest.raises(KeyboardInterrupt):
    train_classifier(records, records, out, settings, config=str(config), progress=False)
  monkeypatch.setattr(clf_trainer, "evaluate", real)
  train_classifier(records, records, out, settings, config=str(config), progress=False)
  steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2, 3, 4] and (out / "classify.json").exists()
  with pytest.raises(UserError, match="is a classifier .*give another --out"):
    train_classifier(records, records, out, settings, config=str(config), progress=False)


@pytest.mark.parametrize("steps, warmup", [(1, 30), (2, 0), (40, 30)])
def test_the_classifier_schedule_works_for_any_step_count(steps, warmup):
  params = {"head": {"w": jnp.ones(3)}, "lm": {"w": jnp.ones(3)}}
  tx = clf_trainer._optimizer(params, ClassifySettings(steps=steps, warmup_steps=warmup))
  updates, _ = tx.update(params, tx.init(params), params)
  moved = float(jnp.abs(updates["head"]["w"]).sum())
  assert np.isfinite(moved) and (moved > 0) == (steps == 1 or warmup == 0)  # no warm-up: the first step moves


def test_a_seq_len_far_above_the_records_pads_nothing():
  arrays = clf_trainer.batch_arrays([Record(b"abc", "a"), Record(b"hello", "b")], 10**8, ["a", "b"])
  assert arrays["ids"].shape == (2, 5) and arrays["lengths"].tolist() == [3, 5]
