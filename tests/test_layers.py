import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chunklm.model.layers import Attention, RMSNorm, attention_mask, rope


def test_rmsnorm_unit_rms():
  x = jax.random.normal(jax.random.key(0), (2, 5, 16)) * 7
  y = RMSNorm(16)(x)
  np.testing.assert_allclose(jnp.sqrt(jnp.mean(y ** 2, -1)), 1.0, rtol=1e-4)


def test_rope_is_relative():
  """Scores q(i).k(j) after RoPE depend only on i - j."""
  q = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.key(2), (1, 1, 1, 8))
  def score(i, j):
    return float(jnp.sum(rope(q, jnp.array([[i]]), 8, 1e4) * rope(k, jnp.array([[j]]), 8, 1e4)))
  assert abs(score(5, 2) - score(13, 10)) < 1e-4
  assert abs(score(5, 2) - score(5, 3)) > 1e-4
  # partial RoPE leaves the tail dims untouched
  out = rope(q, jnp.array([[7]]), 4, 1e4)
  np.testing.assert_array_equal(out[..., 4:], q[..., 4:])


def test_attention_mask_causal_segments_window():
  seg = jnp.array([[1, 1, 1, 2, 2, 0]])
  m = np.asarray(attention_mask(seg)[0, 0])
  assert m[2, :3].all() and not m[2, 3:].any()
  assert not m[3, :3].any() and m[3, 3] and not m[3, 4]
  assert m[5].tolist() == [0, 0, 0, 0, 0, 1]  # padding sees only itself
  w = np.asarray(attention_mask(jnp.ones((1, 6), jnp.int32), window=2)[0, 0])
  assert w[5].tolist() == [0, 0, 0, 1, 1, 1]


def make_attention(window=0):
  return Attention(16, 2, rngs=nnx.Rngs(0), rotary_fraction=0.5, rope_theta=1e4, window=window, std=0.2, out_std=0.2)


def test_attention_does_not_cross_documents():
  att = make_attention()
  x = jax.random.normal(jax.random.key(0), (1, 10, 16))
  seg = jnp.array([[1] * 4 + [2] * 6])
  pos = jnp.array([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]])
  x2 = x.at[:, :4].set(jax.random.normal(jax.random.key(9), (1, 4, 16)))
  y, y2 = att(x, seg, pos), att(x2, seg, pos)
  np.testing.assert_array_equal(y[:, 4:], y2[:, 4:])
  assert not np.allclose(y[:, :4], y2[:, :4])


def test_sliding_window_limits_reach():
  att = make_attention(window=3)
  x = jax.random.normal(jax.random.key(0), (1, 12, 16))
  seg, pos = jnp.ones((1, 12), jnp.int32), jnp.arange(12)[None]
  jac = jax.jacobian(lambda x: att(x, seg, pos)[0, 11].sum())(x)[0]
  reach = np.abs(np.asarray(jac)).sum(-1) > 0
  assert reach.tolist() == [False] * 8 + [True] * 4


def test_params_carry_logical_axes():
  att = make_attention()
  for path, p in nnx.iter_graph(att):
    if isinstance(p, nnx.Param):
      axes = p.get_metadata()["out_sharding"]
      assert len(axes) == p[...].ndim, path
