import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chunklm.model.layers import Attention, RMSNorm, attention_mask, rope


def test_rmsnorm_unit_rms():
  x = jax.random.normal(jax.random.key(0), (2, 5, 16)) * 7
  y = RMSNorm(16)(x)
  np.testing.assert_allclose(jnp.sqrt(jnp.mean(y**2, -1)), 1.0, rtol=1e-4)


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


def test_blockwise_attention_equals_dense_with_gradients():
  from chunklm.model.layers import masked_attention

  key = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(kk, (2, 13, 2, 8)) for kk in key)
  seg = jnp.array([[1] * 5 + [2] * 8, [1] * 13])
  for window in (0, 4):
    dense = lambda q: masked_attention(q, k, v, seg, window, 0)
    blocked = lambda q: masked_attention(q, k, v, seg, window, 4)  # 13 rows: 3 full blocks + a padded one
    np.testing.assert_allclose(blocked(q), dense(q), atol=1e-5)
    g1 = jax.grad(lambda q: jnp.sum(dense(q) ** 2))(q)
    g2 = jax.grad(lambda q: jnp.sum(blocked(q) ** 2))(q)
    np.testing.assert_allclose(g1, g2, atol=1e-5)


def test_fused_attention_form_equals_the_masked_one_with_gradients():
  """The arguments cuDNN gets (causal and window as flags, the document mask as an array), run through XLA here,
  give the plain masked attention, with gradients; the auto backend is XLA off a GPU or TPU, an impossible cudnn an
  error."""
  from chunklm.model.layers import attention_backend, fused_attention, masked_attention

  key = jax.random.split(jax.random.key(1), 3)
  q, k, v = (jax.random.normal(kk, (2, 13, 2, 8)) for kk in key)
  seg = jnp.array([[1] * 5 + [2] * 6 + [3] * 2, [1] * 13])
  for window in (0, 3):
    plain = lambda q, k, v: masked_attention(q, k, v, seg, window, 0)
    fused = lambda q, k, v: fused_attention(q, k, v, seg, window, "xla")
    np.testing.assert_allclose(fused(q, k, v), plain(q, k, v), atol=1e-5)
    g1 = jax.grad(lambda *a: jnp.sum(jnp.sin(plain(*a))), argnums=(0, 1, 2))(q, k, v)
    g2 = jax.grad(lambda *a: jnp.sum(jnp.sin(fused(*a))), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g1, g2):
      np.testing.assert_allclose(a, b, atol=1e-5)
  backend = jax.default_backend()  # on a TPU auto takes Splash where it applies (tests/test_splash.py)
  picked = {"gpu": "cudnn", "tpu": "splash"}.get(backend, "xla")
  assert attention_backend("auto", jnp.bfloat16, 64, 256, False) == picked
  for args in ((jnp.float32, 64, 256, False), (jnp.bfloat16, 64, 255, False), (jnp.bfloat16, 64, 256, True)):
    assert attention_backend("auto", *args) == ("splash" if backend == "tpu" and not args[-1] else "xla")
    with pytest.raises(ValueError, match="kernels.attention cudnn needs"):
      attention_backend("cudnn", *args)
  assert attention_backend("xla", jnp.bfloat16, 64, 256, False) == "xla"


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (cuDNN flash attention)")
def test_cudnn_attention_equals_xla_on_gpu():
  from chunklm.model.layers import masked_attention

  key = jax.random.split(jax.random.key(2), 3)
  q, k, v = (jax.random.normal(kk, (2, 256, 4, 64), jnp.bfloat16) for kk in key)
  seg = jnp.concatenate([jnp.ones((2, 100), jnp.int32), 2 * jnp.ones((2, 156), jnp.int32)], 1)
  for window in (0, 63):
    outs = {
      impl: jax.jit(lambda q, k, v, impl=impl: masked_attention(q, k, v, seg, window, 0, None, impl))
      for impl in ("xla", "cudnn")
    }
    np.testing.assert_allclose(
      np.asarray(outs["cudnn"](q, k, v), np.float32), np.asarray(outs["xla"](q, k, v), np.float32), atol=2e-2, rtol=2e-2
    )
    grads = {
      impl: jax.grad(lambda *a, f=f: jnp.sum(f(*a).astype(jnp.float32) ** 2), argnums=(0, 1, 2))(q, k, v)
      for impl, f in outs.items()
    }
    for a, b in zip(grads["cudnn"], grads["xla"]):
      np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=5e-2, rtol=5e-2)


def test_remat_gives_the_same_gradients():
  from chunklm.model.functional import split_model
  from chunklm.model.lm import build_model
  from chunklm.train.step import loss_fn
  from conftest import tiny_config

  ids = jax.random.randint(jax.random.key(1), (2, 32), 0, 256)
  batch = {
    "ids": ids,
    "targets": jnp.roll(ids, -1, 1),
    "segment_ids": jnp.ones_like(ids),
    "positions": jnp.broadcast_to(jnp.arange(32), (2, 32)),
    "loss_mask": jnp.ones((2, 32), bool),
  }
  grads = []
  for extra in ([], ["model.remat=true", "model.attention_block=8"]):
    graphdef, params = split_model(build_model(tiny_config(*extra), 0))
    grads.append(jax.jit(jax.grad(lambda p: loss_fn(p, graphdef, batch)[0]))(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), *grads)
