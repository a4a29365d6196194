"""Scoring primitives (chunklm/eval/scoring.py, `Model.logprobs`/`loglikelihood`/`loglikelihood_rolling`) on an
H-Net, a byte Transformer and a BPE Transformer: the rolling sums equal the exact BPB's NLL; the rolling windows
are lm-evaluation-harness's own; loglikelihood is the text's per-unit log-probs over the continuation, in one forward
pass per request; greedy generation gives is_greedy; batching changes nothing but speed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from chunklm.data.corpus import Documents
from chunklm.errors import UserError
from chunklm.eval.run_eval import score_documents
from chunklm.eval.scoring import Scorer, split_trailing_space
from tiny_models import SEQ, make_models, text_of

KINDS = ["hnet", "bytes", "bpe"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  return make_models(tmp_path_factory.mktemp("scoring"))


@pytest.mark.parametrize("kind", KINDS)
def test_rolling_sum_is_the_exact_bpb_nll_and_logprobs_cover_every_byte(models, kind):
  m = models[kind]
  scorer = m.scorer()
  # three whole windows: the harness's last window reads a full window before its end, the tiled eval's does not
  text = scorer.run.tokenizer.decode(scorer.encode(text_of(200, 11).encode())[: 3 * SEQ]) if kind == "bpe" else None
  text = text_of(200, 11).encode()[: 3 * SEQ] if text is None else text
  assert len(scorer.encode(text)) == 3 * SEQ
  docs = Documents(np.frombuffer(text, np.uint8), np.array([0]), np.array([len(text)]), ("t",))
  exact = score_documents(m.run, docs, 4)
  (rolled,) = m.loglikelihood_rolling([text])
  assert rolled == pytest.approx(-exact["nll_sum"], rel=2e-5)
  per_byte = m.logprobs(text)
  assert per_byte.shape == (len(text),) and per_byte.sum() == pytest.approx(rolled, rel=1e-6)
  assert -per_byte.sum() / len(text) / math.log(2) == pytest.approx(exact["bpb"], rel=2e-5)
  if kind != "bpe":
    assert (per_byte < 0).all()
  # more context per prediction (stride < window) changes the figure, but every unit is still scored once
  units = len(scorer.encode(text))
  for stride in (1, 17, SEQ):
    rows = scorer.rolling_rows(text, stride)
    assert sum(r.n_scored for r in rows) == units and all(len(r.stream) <= SEQ + 1 for r in rows)


def test_rolling_windows_are_the_harness_windows(models):
  utils = pytest.importorskip("lm_eval.utils")
  scorer = models["bytes"].scorer()
  text = text_of(40, 5).encode()
  tokens = scorer.encode(text).tolist()
  for stride in (1, 9, 32, SEQ):
    ours = [(r.stream[:-1].tolist(), r.stream[-r.n_scored :].tolist()) for r in scorer.rolling_rows(text, stride)]
    theirs = list(utils.get_rolling_token_windows(tokens, scorer.bos, SEQ, SEQ - stride + 1))
    assert ours == [(list(a), list(b)) for a, b in theirs]


@pytest.mark.parametrize("kind", KINDS)
def test_loglikelihood_is_the_continuations_logprobs_in_one_pass_per_request(models, kind):
  m = models[kind]
  pairs = [(text_of(5, s).rstrip(".\n"), " " + text_of(2, s + 100).rstrip(".\n")) for s in range(6)]
  scorer = Scorer(m.run, batch_size=1)
  one_by_one = scorer.loglikelihood([(c.encode(), x.encode()) for c, x in pairs])
  assert scorer.calls == len(pairs)  # one forward pass per request (the public API once made two)
  batched = Scorer(m.run, batch_size=8)
  together = batched.loglikelihood([(c.encode(), x.encode()) for c, x in pairs])
  assert batched.calls == 1
  for (a, ga), (b, gb) in zip(one_by_one, together):
    assert a == pytest.approx(b, rel=1e-5, abs=1e-5) and ga == gb
  # the same figure from the per-unit log-probs of the whole text (a different padded shape, the same maths)
  for (context, continuation), (total, _) in zip(pairs, together):
    if kind == "bpe":  # the continuation's tokens: those after the context's own tokens
      n_cont = len(scorer.encode((context + continuation).encode())) - len(scorer.encode(context.encode()))
    else:
      n_cont = len(continuation.encode())
    per_unit, _ = scorer.unit_logprobs((context + continuation).encode())
    assert total == pytest.approx(per_unit[-n_cont:].sum(), rel=1e-5, abs=1e-5)


# not BPE: a greedy token sequence need not be the tokenizer's own encoding of its text (an untrained model's is not)
@pytest.mark.parametrize("kind", ["hnet", "bytes"])
def test_greedy_continuation_is_greedy_and_a_changed_one_is_not(models, kind):
  m = models[kind]
  context = text_of(6, 2).rstrip(".\n")
  greedy = m.generate(context, max_bytes=12, temperature=0.0, stop_at_eos=False)
  assert len(greedy) == 12
  [(logp, is_greedy)] = m.loglikelihood([(context, greedy)])
  assert is_greedy and logp <= 0
  changed = greedy[:5] + bytes([(greedy[5] + 1) % 250]) + greedy[6:]  # no longer the argmax there
  [(other, other_greedy)] = m.loglikelihood([(context, changed)])
  assert not other_greedy and other < logp


def test_long_contexts_keep_their_end_and_trailing_spaces_move_to_the_continuation(models):
  m = models["bytes"]
  scorer = m.scorer()
  long = text_of(60, 4).encode()
  row = scorer.pair_row(long, b" cat")
  assert len(row.stream) == SEQ + 1
  assert bytes(row.stream[-4:].astype(np.uint8)) == b" cat" and row.start == len(long) + 4 + 1 - (SEQ + 1)
  assert split_trailing_space(b"the dog ", b"ran") == (b"the dog", b" ran")
  [(a, _)], [(b, _)] = m.loglikelihood([("the dog ", "ran")]), m.loglikelihood([("the dog", " ran")])
  assert a == b


def test_a_token_model_reads_the_contexts_own_tokens_as_the_harness(models):
  """lm_eval's TemplateLM._encode_pair: context tokens of the context alone, then the whole text's after as many."""
  scorer = models["bpe"].scorer()
  for context, continuation in ((b"the ca", b"t sat"), (b"the dog", b" ran off"), (b"", b"the mat")):
    ctx = scorer.encode(context)
    whole = scorer.encode(context + continuation)
    row = scorer.pair_row(context, continuation)
    assert row.stream.tolist() == [scorer.bos, *ctx.tolist(), *whole[len(ctx) :].tolist()]
    assert row.n_scored == len(whole) - len(ctx)


def test_bad_requests_are_one_line(models):
  m = models["bytes"]
  for call, message in (
    (lambda: m.loglikelihood([("ctx", "")]), "the continuation is empty"),
    (lambda: m.loglikelihood([("ctx", "x" * (SEQ + 1))]), "longer than this model's window"),
    (lambda: m.loglikelihood("abc"), "expected a list of \\(context, continuation\\) pairs"),
    (lambda: m.loglikelihood([("a", "b", "c")]), "expected a list of \\(context, continuation\\) pairs"),
    (lambda: m.loglikelihood_rolling("abc"), "expected a list of texts"),
    (lambda: m.loglikelihood_rolling(["abc"], stride=0), "the stride must be an int from 1 to"),
    (lambda: m.loglikelihood_rolling(["abc"], stride=SEQ + 1), "the stride must be an int from 1 to"),
    (lambda: m.loglikelihood([("a", "b")], batch_size=0), "batch_size must be a positive int"),
    (lambda: m.logprobs(5), "logprobs: expected str or bytes"),
  ):
    with pytest.raises(UserError, match=message) as e:
      call()
    assert "\n" not in str(e.value)
  assert m.loglikelihood_rolling([""]) == [0.0] and m.logprobs("").shape == (0,)


def test_bench_score_counts_passes_and_batching_changes_no_figure(models, tmp_path, capsys):
  from chunklm.cli import main

  text = tmp_path / "t.txt"
  text.write_text("".join(text_of(30, s) for s in range(20)))
  out = tmp_path / "b.json"
  run = str(models["bytes"].run.workdir)
  args = ["bench", "score", "--workdir", run, "--batch", "1,4", "--requests", "8", "--repeats", "1"]
  assert (
    main([*args, "--context-bytes", "30", "--continuation-bytes", "6", "--data", str(text), "--json", str(out)]) == 0
  )
  assert "| requests/s |" in capsys.readouterr().out
  rows = json.loads(out.read_text())
  assert [r["forward_passes"] for r in rows] == [16, 8, 2] and rows[2]["max_abs_difference"] < 1e-4
  assert main([*args, "--requests", "0"]) == 2 and "must be positive" in capsys.readouterr().err
