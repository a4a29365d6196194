"""Splash attention (kernels/splash.py) against XLA's masked attention: outputs and gradients on CPU, the kernel
interpreted; the window's mapping onto Splash's LocalMask; the backend choice; and (with libtpu) the Attention layer
exported and compiled for a TPU v5e slice with the kernel in it."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from chunklm.kernels import splash
from chunklm.model.layers import Attention, attention_backend, attention_mask, masked_attention

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
BLOCK = 128  # the smallest Splash block: a 256-position row crosses a block edge


def documents(length: int, *rows: tuple[int, ...]) -> jax.Array:
  """segment_ids_BxL: row b holds documents of the given lengths (ids 0, 1, ...), the last one filling the row."""
  ids = [np.repeat(np.arange(len(r) + 1), [*r, length - sum(r)]) for r in rows]
  return jnp.asarray(np.stack(ids), jnp.int32)


def positions(segment_ids_BxL: jax.Array) -> jax.Array:
  """positions_BxL: each position's offset in its document."""
  seg = np.asarray(segment_ids_BxL)
  index = np.broadcast_to(np.arange(seg.shape[1]), seg.shape)
  starts = np.maximum.accumulate(np.where(np.diff(seg, axis=1, prepend=-1) != 0, index, 0), axis=1)
  return jnp.asarray(index - starts, jnp.int32)


def qkv(shape: tuple[int, ...], dtype=jnp.float32, seed: int = 0) -> tuple[jax.Array, ...]:
  return tuple(
    jax.random.normal(k, shape, jnp.float32).astype(dtype) for k in jax.random.split(jax.random.key(seed), 3)
  )


def value_and_vjp(attend, q, k, v):
  """attend(q, k, v) and its gradients for a fixed cotangent, in float32; one jit (interpreted kernels compile
  slowly: once is enough)."""

  def both(q, k, v):
    out, vjp = jax.vjp(attend, q, k, v)
    cotangent = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape).astype(out.dtype)
    return out, *vjp(cotangent)

  return [np.asarray(x, np.float32) for x in jax.jit(both)(q, k, v)]


def splash_vs_xla(q, k, v, seg, window: int):
  splash_fn = lambda q, k, v: splash.splash_attention(q, k, v, seg, window=window, block=BLOCK, interpret=True)
  xla_fn = lambda q, k, v: masked_attention(q, k, v, seg, window)
  return value_and_vjp(splash_fn, q, k, v), value_and_vjp(xla_fn, q, k, v)


# Two rows of several documents; row 0's second document (positions 100..159) crosses the block edge at 128.
# Length 256 is two blocks; 200 is padded to 256, then cut. Each case compiles interpreted kernels (~5 s): the other
# two pairings are slow tests.
@pytest.mark.parametrize(
  "length,window",
  [(256, 0), (200, 40), pytest.param(256, 40, marks=pytest.mark.slow), pytest.param(200, 0, marks=pytest.mark.slow)],
)
def test_splash_equals_xla_with_gradients_float32(length, window):
  seg = documents(length, (100, 60), (150,))
  got, want = splash_vs_xla(*qkv((2, length, 2, 16)), seg, window)
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5, err_msg=name)


def test_splash_equals_xla_with_gradients_bfloat16():
  """bfloat16 in and out (both paths accumulate in float32; Splash also rounds its scaled q): the two agree within
  1.6e-2 (two bfloat16 steps at the values' scale, ~2; measured: one step, 7.8e-3), and Splash is as close as XLA to
  float32 attention on the same rounded inputs (at most twice XLA's error plus 2^-8)."""
  seg = documents(200, (100, 60), (150,))
  q, k, v = qkv((2, 200, 2, 16), jnp.bfloat16)
  got, want = splash_vs_xla(q, k, v, seg, 40)
  exact = value_and_vjp(lambda *a: masked_attention(*a, seg, 40), *(x.astype(jnp.float32) for x in (q, k, v)))
  for name, a, b, c in zip(("out", "dq", "dk", "dv"), got, want, exact, strict=True):
    np.testing.assert_allclose(a, b, atol=1.6e-2, rtol=1.6e-2, err_msg=name)
    assert np.abs(a - c).max() <= 2 * np.abs(b - c).max() + 2**-8, name


@pytest.mark.parametrize("window", [0, 1, 5, 127, 300])
def test_window_maps_onto_splash_masks_exactly(window):
  """Key k is visible to query q iff k <= q and q - k <= window (window > 0): Splash's mask, read out densely,
  equals attention_mask's (one document)."""
  length = 256
  mask = splash.causal_window_mask(length, window)
  want = np.asarray(attention_mask(jnp.zeros((1, length), jnp.int32), window)[0, 0])
  np.testing.assert_array_equal(np.asarray(mask[0:length, 0:length]), want)


def test_blocks_are_multiples_of_128_that_divide_the_padded_length():
  assert splash.fit_block(128, 512) == 128
  assert splash.fit_block(1024, 512) == 512
  assert splash.fit_block(384, 512) == 384
  assert splash.fit_block(384, 256) == 128
  assert splash.fit_block(640, 512) == 128
  assert splash.fit_block(8192, 512) == 512
  with pytest.raises(ValueError, match="multiple of 128"):
    splash.fit_block(200, 512)


def test_bad_arguments_are_clear_errors():
  q, k, v = qkv((2, 200, 2, 16))
  seg = documents(200, (100,), ())
  cases = [
    ((q[0], k, v, seg), {}, "q_BxLxHxK must have 4 dimensions"),
    ((q, k[:, :100], v, seg), {}, "k_BxLxHxK must match q"),
    ((q, k, v.astype(jnp.bfloat16), seg), {}, "v_BxLxHxK must match q"),
    ((q, k, v, seg[:, :100]), {}, "segment_ids_BxL must be integers of shape"),
    ((q, k, v, seg.astype(jnp.float32)), {}, "segment_ids_BxL must be integers"),
    ((q, k, v, seg), {"window": -1}, "window must be an int >= 0"),
    ((q, k, v, seg), {"block": 100}, "block must be a positive multiple of 128"),
  ]
  for args, kwargs, message in cases:
    with pytest.raises(ValueError, match=message):
      splash.splash_attention(*args, interpret=True, **kwargs)
  with pytest.raises(ValueError, match="takes no key bias"):
    masked_attention(q, k, v, seg, 0, key_bias_BxL=jnp.zeros((2, 200)), impl="splash")


def test_backend_choice_off_a_tpu():
  """auto never takes Splash off a TPU; an explicit splash runs on CPU (interpreted) and is an error where it does
  not apply."""
  if jax.default_backend() != "cpu":
    pytest.skip("checks the CPU target")
  assert attention_backend("auto", jnp.bfloat16, 64, 1024, False) == "xla"
  assert attention_backend("splash", jnp.float32, 64, 200, False) == "splash"
  for args in ((jnp.bfloat16, 64, 1024, True), (jnp.bfloat16, 1024, 1024, False)):
    with pytest.raises(ValueError, match="kernels.attention splash needs a TPU .* no key bias"):
      attention_backend("splash", *args)


def attention_layer(impl: str, window: int, dtype=jnp.float32) -> Attention:
  return Attention(
    32,
    2,
    rngs=nnx.Rngs(3),
    rotary_fraction=0.5,
    rope_theta=1e4,
    window=window,
    std=0.2,
    out_std=0.2,
    dtype=dtype,
    impl=impl,
  )


def test_attention_layer_with_splash_equals_xla_with_gradients():
  """The whole layer (projections, RoPE, attention) with impl 'splash' (interpreted on CPU) and 'xla', the same
  parameters: outputs and parameter gradients agree."""
  length = 200
  x = jax.random.normal(jax.random.key(4), (2, length, 32))
  seg = documents(length, (30, 110), (190,))
  pos = positions(seg)

  @nnx.jit
  def value_and_grad(layer):
    return nnx.value_and_grad(lambda m: jnp.sum(jnp.sin(m(x, seg, pos))))(layer)

  (loss_splash, grads_splash), (loss_xla, grads_xla) = (
    value_and_grad(attention_layer(i, 50)) for i in ("splash", "xla")
  )
  np.testing.assert_allclose(loss_splash, loss_xla, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_splash), jax.tree.leaves(grads_xla), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def tpu_mesh():
  from chunklm.bench.compile import topology_devices  # imports libtpu's topology support: only where used

  return jax.sharding.Mesh(np.array(topology_devices("v5e:2x2")), ("data",))


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (the tpu extra) to target TPU devices from a CPU host")
def test_auto_takes_splash_under_a_tpu_mesh():
  with jax.set_mesh(tpu_mesh()):
    assert attention_backend("auto", jnp.bfloat16, 64, 1024, False) == "splash"
    assert attention_backend("auto", jnp.float32, 128, 200, False) == "splash"
    assert attention_backend("auto", jnp.bfloat16, 64, 1024, True) == "xla"  # the delete gate's key bias
    assert attention_backend("auto", jnp.bfloat16, 1024, 1024, False) == "xla"  # head_dim past VMEM
    assert attention_backend("auto", jnp.bfloat16, 64, 64, False) == "xla"  # shorter than one block
    with pytest.raises(ValueError, match="kernels.attention cudnn needs a GPU"):
      attention_backend("cudnn", jnp.bfloat16, 64, 1024, False)


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (the tpu extra) to target TPU devices from a CPU host")
def test_attention_layer_exports_and_compiles_with_splash_for_tpu():
  """The layer's gradient, traced under a 4-chip v5e mesh (the kernel runs per shard): its export for TPU holds the
  forward and both backward Splash kernels, and libtpu compiles it (Mosaic's own checks)."""
  mesh = tpu_mesh()
  graphdef, state = nnx.split(attention_layer("auto", window=100, dtype=jnp.bfloat16))
  grad = jax.jit(jax.grad(lambda s, x, seg, pos: jnp.sum(nnx.merge(graphdef, s)(x, seg, pos).astype(jnp.float32))))
  rows, whole = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  args = (
    jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=whole), state),
    jax.ShapeDtypeStruct((4, 300, 32), jnp.float32, sharding=rows),  # 300: padded to 384 inside
    jax.ShapeDtypeStruct((4, 300), jnp.int32, sharding=rows),
    jax.ShapeDtypeStruct((4, 300), jnp.int32, sharding=rows),
  )
  with jax.set_mesh(mesh):
    module = jax.export.export(grad, platforms=("tpu",))(*args).mlir_module()
    assert module.count("tpu_custom_call") == 3 and "splash_mha" in module
    grad.lower(*args).compile()
