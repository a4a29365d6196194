"""MrT5: soft deletion with G = 0 is the plain encoder-decoder; hard deletion equals soft deletion with the deleted
positions at -inf; the PI controller moves alpha both ways; span corruption masks the requested fraction and is
recoverable; bad settings are one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chunklm.config.mrt5 import MrT5Config
from chunklm.data.span_corruption import EOS, SENTINELS, corrupt, noise_spans, restore
from chunklm.errors import ConfigError, DataError
from chunklm.model.bidirectional import attend
from chunklm.model.delete_gate import pi_update
from chunklm.model.mrt5 import MrT5, bucket_capacity
from chunklm.seq2seq.byte_classes import CLASS_NAMES, class_counts

CFG = MrT5Config(d_model=32, n_heads=2, enc_layers=3, dec_layers=2, gate_layer=1)


def _batch(seed=0, b=2, length=24, t=10):
  rng = np.random.default_rng(seed)
  ids = jnp.asarray(rng.integers(97, 123, (b, length)), jnp.int32)
  valid = jnp.asarray(np.arange(length)[None] < np.array([[length], [length - 5]]))
  dec = jnp.asarray(rng.integers(97, 123, (b, t)), jnp.int32)
  return ids, valid, dec, jnp.ones((b, t), bool)


def test_soft_deletion_with_a_zero_gate_is_the_plain_model():
  model = MrT5(CFG, rngs=nnx.Rngs(params=0))
  model.gate_w[...] = jnp.zeros_like(model.gate_w[...])
  model.gate_c[...] = jnp.asarray(-1e4)  # sigmoid(-1e4) = 0 exactly: G = 0 at every valid position
  ids, valid, dec, dvalid = _batch()
  run = nnx.jit(lambda m, mode: m(ids, valid, dec, dvalid, mode), static_argnums=1)  # eager ops are slow on CPU
  soft, enc = run(model, "soft")
  plain, _ = run(model, "none")
  assert bool(jnp.all(jnp.where(valid, enc.g_BxL, 0.0) == 0.0))
  np.testing.assert_array_equal(np.asarray(soft), np.asarray(plain))
  model.gate_c[...] = jnp.asarray(0.0)  # a real gate changes the output: the comparison can fail
  assert not np.allclose(np.asarray(run(model, "soft")[0]), np.asarray(plain), atol=1e-4)


@pytest.mark.parametrize("softmax1", [pytest.param(True, marks=pytest.mark.slow), False])  # CI budget: .ci/run
def test_hard_deletion_equals_soft_deletion_at_minus_infinity(softmax1, monkeypatch):
  cfg = MrT5Config(d_model=32, n_heads=2, enc_layers=3, dec_layers=2, gate_layer=1, softmax1=softmax1)
  model = MrT5(cfg, rngs=nnx.Rngs(params=1))
  model.gate_c[...] = jnp.asarray(0.0)  # about half the positions deleted
  ids, valid, dec, dvalid = _batch(1)
  masked, enc_m = model(ids, valid, dec, dvalid, "mask")
  kept = int(enc_m.keep_BxL.sum(1).max())
  assert 0 < int(enc_m.keep_BxL.sum()) < int(valid.sum())
  cap = bucket_capacity(kept, ids.shape[1], cfg.buckets)
  assert kept <= cap < ids.shape[1]
  hard, enc_h = model(ids, valid, dec, dvalid, "hard", cap)
  np.testing.assert_allclose(np.asarray(hard), np.asarray(masked), atol=2e-5)
  for row in range(ids.shape[0]):  # the kept positions' encoder states, in order
    n = int(enc_m.keep_BxL[row].sum())
    want = np.asarray(enc_m.h_BxCxD[row])[np.asarray(enc_m.keep_BxL[row])]
    np.testing.assert_allclose(np.asarray(enc_h.h_BxCxD[row, :n]), want, atol=2e-5)
    assert bool(enc_h.valid_BxC[row, :n].all()) and not bool(enc_h.valid_BxC[row, n:].any())
  # evaluation hands the front half's states in (run once per batch to choose the bucket): not run again, same logits
  front = model.encode_front(ids, valid)

  def not_again(*args):
    raise AssertionError("encode ran the front half although it was given")

  monkeypatch.setattr(MrT5, "encode_front", not_again)
  given, _ = model(ids, valid, dec, dvalid, "hard", cap, front=front)
  np.testing.assert_array_equal(np.asarray(given), np.asarray(hard))


def test_attend_with_softmax1_can_attend_to_nothing():
  q = jnp.ones((1, 1, 1, 2))
  k = jnp.ones((1, 3, 1, 2))
  v = jnp.ones((1, 3, 1, 2))
  allowed = jnp.array([[[True, True, False]]])
  plain = attend(q, k, v, allowed, None, softmax1=False)
  off = attend(q, k, v, allowed, None, softmax1=True)
  np.testing.assert_allclose(np.asarray(plain), 1.0, rtol=1e-6)
  e = np.exp(2 / np.sqrt(2))  # q.k / sqrt(head dim)
  np.testing.assert_allclose(np.asarray(off), 2 * e / (1 + 2 * e), rtol=1e-6)
  none = attend(q, k, v, jnp.zeros_like(allowed), None, softmax1=False)
  assert float(jnp.abs(none).max()) == 0.0


def test_pi_controller_moves_alpha_both_ways():
  p, i, alpha = jnp.zeros(()), jnp.zeros(()), jnp.zeros(())
  for _ in range(50):  # deleting too little: alpha rises
    p, i, alpha = pi_update(p, i, jnp.asarray(0.3), alpha_min=-jnp.inf)
  high = float(alpha)
  assert high > 0.01
  for _ in range(50):  # deleting too much: alpha falls, below zero when two-sided
    p, i, alpha = pi_update(p, i, jnp.asarray(-0.3), alpha_min=-jnp.inf)
  assert float(alpha) < 0 < high
  _, _, clamped = pi_update(p, i, jnp.asarray(-0.3), alpha_min=0.0)
  assert float(clamped) == 0.0  # MrT5's one-sided clamp


@pytest.mark.parametrize("length", [50, 200, 1000])
def test_span_corruption_masks_the_fraction_and_is_recoverable(length):
  rng = np.random.default_rng(length)
  data = bytes(rng.integers(32, 127, length).tolist())
  spans = noise_spans(length, np.random.default_rng(1))
  noise = sum(e - s for s, e in spans)
  assert noise == round(0.15 * length) and len(spans) == max(1, min(len(SENTINELS), round(noise / 20)))
  assert all(s > 0 and e > s for s, e in spans) and all(a[1] < b[0] for a, b in zip(spans, spans[1:]))
  inputs, targets = corrupt(data, np.random.default_rng(1))
  assert targets[-1] == EOS and len(inputs) == length - noise + len(spans)
  assert restore(inputs, targets) == data
  with pytest.raises(DataError, match="0xFD"):
    corrupt(b"ab\xfdcd", rng, where="x.bin")


def test_bad_settings_are_one_line_errors():
  for kwargs, message in [
    ({"target_deletion": 1.0}, "target_deletion"),
    ({"target_deletion": -0.1}, r"\[0, 1\)"),
    ({"gate_layer": 3}, "gate_layer"),
    ({"gate_scale": 1.0}, "negative"),
    ({"buckets": (0.5,)}, "buckets"),
    ({"gate_ema": 1.0}, "gate_ema"),
  ]:
    with pytest.raises(ConfigError, match=message):
      MrT5Config(**{**vars(CFG), **kwargs})


def test_gradients_reach_the_gate_under_soft_deletion():
  model = MrT5(CFG, rngs=nnx.Rngs(params=2))
  ids, valid, dec, dvalid = _batch(2)

  def loss(m):
    logits, _ = m(ids, valid, dec, dvalid, "soft")
    return jnp.mean(logits**2)

  grads = nnx.jit(nnx.grad(loss))(model)
  assert float(jnp.abs(grads.gate_w[...]).max()) > 0 and np.isfinite(float(jax.tree.leaves(grads)[0].sum()))


def test_cached_decoding_equals_the_full_decoder():
  model = MrT5(CFG, rngs=nnx.Rngs(params=3))
  model.gate_c[...] = jnp.asarray(0.0)
  ids, valid, dec, dvalid = _batch(3)
  full, _ = model(ids, valid, dec, dvalid, "soft")
  enc = model.encode(ids, valid, "soft")
  caches = model.init_cache(enc, dec.shape[1])
  for t in range(dec.shape[1]):
    logits, caches = model.decode_step(enc, dec[:, t], jnp.asarray(t), caches)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(full[:, t]), atol=2e-5)


def test_deletion_by_byte_class_counts_each_kind():
  text = "bAe 1!\u00e9x"  # consonant, vowel, vowel, space, digit, punctuation, two bytes of e-acute, consonant
  ids = np.frombuffer(text.encode(), np.uint8).astype(np.int32)[None]
  valid = np.ones_like(ids, bool)
  valid[0, -1] = False  # padding is not counted
  keep = np.array([[True, False, True, False, True, False, False, True, True]])
  counts = dict(zip(CLASS_NAMES, class_counts(ids, valid, keep).tolist()))
  assert counts == {
    "vowel": [2, 1],
    "consonant": [1, 0],
    "digit": [1, 0],
    "whitespace": [1, 1],
    "punctuation": [1, 1],
    "other": [2, 1],
  }
