"""The Python API (chunklm.load): score, generate, boundaries, config and params, on a converted official H-Net
(synthetic weights); with torch, score equals the bits per byte of a plain-torch reference of the official forward."""

import math

import numpy as np
import pytest

import chunklm
from chunklm.config import load_config
from chunklm.errors import UserError
from chunklm.eval.bpb import check_eval_batch, lowered_batch
from chunklm.eval.generate import eos_id
from chunklm.interop.convert import official_params
from chunklm.model.functional import named_leaves
from chunklm.run.imported import write_params_run
from hnet_torch_reference import Reference, official_state_dict
from test_hnet_official import ONE_STAGE

TEXT = "def main(args):\n    return sum(x * 2 for x in args)  # twice\n"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  state = official_state_dict(ONE_STAGE, seed=4)
  cfg, params = official_params(state, ONE_STAGE, load_config(None, ["data.seq_len=64"]), "synthetic")
  run = write_params_run(tmp_path_factory.mktemp("api") / "run", cfg, params, 0, {"what": "test"})
  return run, state


def test_score_generate_boundaries(converted):
  run, _ = converted
  m = chunklm.load(run)
  assert m.config.model.compat == "official" and m.step == 0 and "backbone.residual_bias" in named_leaves(m.params)
  one = m.score(TEXT)
  both = m.score([TEXT, "xyz"])
  assert isinstance(one, float) and one > 0 and both[0] == pytest.approx(one, rel=1e-6) and len(both) == 2
  long = TEXT * 3  # longer than one window (seq_len 64): scored window by window
  assert m.score(long) > 0
  out = m.generate(["def ", "x = "], max_bytes=12, top_k=1)
  assert len(out) == 2 and all(isinstance(o, bytes) and len(o) <= 12 for o in out)
  b = m.boundaries(TEXT[:40])
  assert len(b.starts) == 1 and len(b.starts[0]) == 40 and 0 < b.starts[0].sum() < 40
  # the document's BOS always starts a chunk; the text's first piece belongs to it unless byte 0 starts its own
  assert b"".join(b.chunks()) == TEXT[:40].encode()
  assert len(b.chunks()) == int(b.starts[0].sum()) + (0 if b.starts[0][0] else 1)
  assert b.picture.replace("│", "").replace("↵", "\n") == TEXT[:40]
  for bad, call in (
    ("empty text", lambda: m.score("")),
    ("expected str or bytes", lambda: m.score([3])),
    ("reads up to 63", lambda: m.boundaries("x" * 100)),
  ):
    with pytest.raises(UserError, match=bad):
      call()


def test_a_wrong_type_is_one_clear_line(converted):
  m = chunklm.load(converted[0])
  for call, message in (
    (lambda: m.score(123), "score: expected str"),
    (lambda: m.generate(4.5), "generate: expected str"),
    (lambda: m.score([b"ok", None]), "score: expected str"),
    (lambda: m.score("x", batch_size="8"), "score: batch_size must be a positive int"),
    (lambda: m.generate("x", top_k="5"), "generate: top_k must be an int, got str"),
    (lambda: m.generate("x", temperature=None), "generate: temperature must be a number"),
    (lambda: m.generate("x", stop=[1]), "generate: stop: expected str, bytes or a list"),
    (lambda: m.generate("x", stop_at_eos="no"), "generate: stop_at_eos must be True or False"),
    (lambda: m.boundaries(7), "boundaries: expected str"),
    (lambda: chunklm.load(123), "load: expected a run directory"),
    (lambda: chunklm.load(converted[0], "model.x=1"), "load: overrides must be a list"),
  ):
    with pytest.raises(UserError, match="^" + message) as e:
      call()
    assert isinstance(e.value, TypeError) and "\n" not in str(e.value)  # `except TypeError` catches it too


def test_generate_limits_and_end_of_sequence(converted):
  """A converted official H-Net ends a continuation at 0xFF (its code's EOS); the prompt is bounded by the window."""
  m = chunklm.load(converted[0])
  assert eos_id(m.config, m.run.tokenizer) == 0xFF
  for call, message in (
    (lambda: m.generate("x" * 100), "a prompt has 100 bytes; this model reads documents of up to 63 bytes"),
    (lambda: m.generate("x", top_p=0.0), r"generate: top_p must be in \(0, 1\]"),
    (lambda: m.generate("x", max_bytes=0), "generate: max_bytes must be between 1"),
  ):
    with pytest.raises(UserError, match=message):
      call()


def test_evaluation_batches_are_lowered_to_the_windows_and_must_fit(converted):
  """`chunklm eval --batch-size`, eval.batch_size, score(batch_size=): no batch beyond the windows there are, and
  one line before allocating when a batch's activations cannot fit in memory."""
  model = chunklm.load(converted[0]).config.model
  assert check_eval_batch(model, 10_000_000, 64, 3, "--batch-size") == 8 and lowered_batch(10**7, 1000) == 1000
  assert lowered_batch(4, 3) == 4 and lowered_batch(16, 3) == 8
  with pytest.raises(UserError, match=r"^--batch-size 10,000,000: a batch of 10,000,000 windows of 64 needs about"):
    check_eval_batch(model, 10_000_000, 64, 10**9, "--batch-size")


def test_score_equals_the_reference_bits_per_byte(converted):
  pytest.importorskip("torch")
  run, state = converted
  data = TEXT[:50].encode()
  logits, _ = Reference(state, ONE_STAGE).forward(np.array([254, *data]))  # BOS, then the text, as chunklm reads
  logp = (
    logits
    - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    - logits.max(-1, keepdims=True)
  )
  nll = -sum(logp[i, data[i]] for i in range(len(data)))
  assert chunklm.load(run).score(data) == pytest.approx(nll / len(data) / math.log(2), rel=1e-5)
