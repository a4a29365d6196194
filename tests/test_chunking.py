"""Chunk ops and the chunk/dechunk/ratio-loss math against slow, obvious references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chunklm.kernels import reference as ref
from chunklm.model import chunking
from chunklm.model.routing import Routing, document_starts
from chunklm.model.stage_output import stage_output


def naive_ema(z, p):
  out = np.zeros_like(z)
  for b in range(z.shape[0]):
    prev = np.zeros(z.shape[-1])
    for c in range(z.shape[1]):
      prev = p[b, c] * z[b, c] + (1 - p[b, c]) * prev
      out[b, c] = prev
  return out


def test_ema_scan_equals_python_loop():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(3, 37, 5))
  p = rng.uniform(0, 1, size=(3, 37))
  p[:, [0, 11, 30]] = 1.0  # restarts
  np.testing.assert_allclose(
    ref.ema_scan(jnp.asarray(z, jnp.float32), jnp.asarray(p, jnp.float32)), naive_ema(z, p), rtol=1e-5, atol=1e-5
  )


def test_downsample_upsample_pool_by_hand():
  x = jnp.arange(2 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 1)
  keep = jnp.array([[1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  z, lens, valid = ref.downsample(x, keep, 4)
  assert z[0, :, 0].tolist() == [0, 2, 3, 0] and valid[0].tolist() == [1, 1, 1, 0]
  assert lens[0].tolist() == [2, 1, 3, 0]
  assert z[1, :, 0].tolist() == [6, 7, 8, 9] and lens[1].tolist() == [1, 1, 1, 3]  # overflow joins the last chunk
  idx = ref.chunk_index(keep, 4)
  assert idx.tolist() == [[0, 0, 1, 2, 2, 2], [0, 1, 2, 3, 3, 3]]
  assert ref.upsample(z, idx)[0, :, 0].tolist() == [0, 0, 2, 3, 3, 3]
  assert ref.segment_pool(x, idx, 4, "sum")[0, :, 0].tolist() == [1, 2, 12, 0]
  assert ref.segment_pool(x, idx, 4, "mean")[0, :, 0].tolist() == [0.5, 2, 4, 0]


def routing_of(p, segment_ids):
  p = jnp.asarray(p, jnp.float32)
  starts = document_starts(jnp.asarray(segment_ids))
  p = jnp.where(starts, 1.0, p)
  return Routing(p, (p > 0.5) | starts, jnp.zeros(()))


def test_all_boundaries_with_p_one_is_identity():
  """b_t = 1 and p_t = 1 everywhere: dechunk(main(chunk(x))) == main output at every position."""
  b, length, d = 2, 9, 4
  seg = jnp.array([[1] * 4 + [2] * 5, [1] * 9])
  h = jax.random.normal(jax.random.key(0), (b, length, d))
  r = routing_of(jnp.ones((b, length)), seg)
  ch = chunking.chunk(h, r, seg, seg > 0, capacity=length, doc_slots=1, exact=True)
  main_out = jnp.tanh(ch.z_BxMxD) * 3.0  # any per-chunk function stands in for the main network
  y = chunking.dechunk(main_out, ch, r)
  # P is clamped to 1 - 1e-4 inside documents (as in the paper's code), so each chunk keeps 1e-4 of the previous one
  np.testing.assert_allclose(y, jnp.tanh(h) * 3.0, atol=3 * 2e-4)
  starts = np.asarray(document_starts(seg))
  np.testing.assert_array_equal(np.asarray(y)[starts], np.asarray(jnp.tanh(h) * 3.0)[starts])


def test_overflow_drops_only_the_last_boundaries_and_keeps_document_starts():
  seg = jnp.array([[1] * 6 + [2] * 6])
  b = jnp.array([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1]], bool)
  starts = document_starts(seg)
  keep = chunking.keep_within_capacity(b, starts, capacity=5, doc_slots=2)
  # 3 slots for non-start boundaries: positions 1, 2, 3; both document starts (0 and 6) stay
  assert np.flatnonzero(keep[0]).tolist() == [0, 1, 2, 3, 6]
  r = Routing(b.astype(jnp.float32), b, jnp.zeros(()))
  ch = chunking.chunk(jnp.ones((1, 12, 2)), r, seg, seg > 0, capacity=5, doc_slots=2, exact=False)
  st = stage_output(r, ch, seg > 0, learnable_p=True, target_ratio=2.0)
  assert float(st.boundaries) == 11 and float(st.kept) == 5
  assert ch.chunk_idx_BxL[0].tolist() == [0, 1, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4]
  assert ch.segment_ids_BxM[0].tolist() == [1, 1, 1, 1, 2]
  exact = chunking.chunk(jnp.ones((1, 12, 2)), r, seg, seg > 0, capacity=12, doc_slots=2, exact=True)
  assert int(exact.valid_BxM.sum()) == 11  # evaluation capacity never drops a boundary


def test_ratio_loss_minimum_at_target():
  n = 6.0
  assert float(chunking.ratio_loss(jnp.float32(1 / n), jnp.float32(1 / n), n)) == pytest.approx(1.0)
  grid = jnp.linspace(0.01, 0.99, 99)
  vals = chunking.ratio_loss(grid, grid, n)
  assert float(grid[jnp.argmin(vals)]) == pytest.approx(1 / n, abs=0.01)
  assert float(chunking.ratio_loss(jnp.float32(0.5), jnp.float32(0.5), n)) > 1.2


def test_ste_is_one_forward_identity_backward():
  c = jnp.array([0.6, 0.9, 0.51])
  assert chunking.ste_one(c).tolist() == [1.0, 1.0, 1.0]
  g = jax.grad(lambda c: jnp.sum(chunking.ste_one(c) * jnp.array([1.0, 2.0, 3.0])))(c)
  assert g.tolist() == [1.0, 2.0, 3.0]


def test_ste_is_exactly_one_for_every_confidence():
  # (1 + x) - x rounds away from 1 for many x in float32 (e.g. 1 +- 6e-8); 1 + (x - x) never does
  c = jnp.linspace(0.5, 1.0, 10001, dtype=jnp.float32)
  assert bool(jnp.all(chunking.ste_one(c) == 1.0))
  assert not bool(jnp.all((1.0 + c) - c == 1.0))  # the form it replaces: the test above can fail


def test_dechunk_restarts_at_document_starts():
  """A chunk that starts a document ignores earlier chunks entirely (no leak across documents)."""
  seg = jnp.array([[1, 1, 1, 2, 2, 2]])
  r = routing_of(jnp.array([[1, 0.2, 0.9, 1, 0.1, 0.7]]), seg)
  h = jax.random.normal(jax.random.key(1), (1, 6, 3))
  ch = chunking.chunk(h, r, seg, seg > 0, capacity=6, doc_slots=2, exact=True)
  y1 = chunking.dechunk(ch.z_BxMxD, ch, r)
  ch2 = ch._replace(z_BxMxD=ch.z_BxMxD.at[:, :2].set(100.0))  # change document 1's chunks
  y2 = chunking.dechunk(ch2.z_BxMxD, ch2, r)
  np.testing.assert_array_equal(y1[:, 3:], y2[:, 3:])
