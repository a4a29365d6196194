"""Mamba2 (SSD) mixer: chunked parallel form and recurrent step vs a naive per-token reference, document isolation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chunklm.model.mamba2 import Mamba2

DIM = 16
CFG = dict(d_state=8, d_conv=4, expand=2, head_dim=8, std=0.5, out_std=0.2)


def make(chunk_size: int = 4, dtype=jnp.float32, seed: int = 0) -> Mamba2:
  return Mamba2(DIM, rngs=nnx.Rngs(seed), chunk_size=chunk_size, dtype=dtype, **CFG)


def reference(m: Mamba2, x_BxLxD: jax.Array, seg_BxL: jax.Array) -> jax.Array:
  """Slow, obvious Mamba2: one token at a time, clearing conv inputs and SSM state whenever the segment id changes."""
  i, n, h, p = m.d_inner, m.d_state, m.n_heads, m.head_dim
  proj_BxLxF = x_BxLxD.astype(jnp.float32) @ m.in_proj.kernel[...]
  z_BxLxI, xbc_BxLxC, dt_raw_BxLxH = proj_BxLxF[..., :i], proj_BxLxF[..., i : 2 * i + 2 * n], proj_BxLxF[..., -h:]
  w_KxC, b_C = m.conv_w[...], m.conv_b[...]
  a_H, d_H, dt_bias_H = -jnp.exp(m.a_log[...]), m.d_skip[...], m.dt_bias[...]

  def one_sequence(xbc_LxC, dt_raw_LxH, seg_L):
    def token(carry, inputs):
      window_KxC, state_HxPxN, prev_seg = carry
      xbc_C, dt_raw_H, seg, t = inputs
      new_doc = (t == 0) | (seg != prev_seg)
      window_KxC = jnp.where(new_doc, 0.0, window_KxC)
      state_HxPxN = jnp.where(new_doc, 0.0, state_HxPxN)
      window_KxC = jnp.concatenate([window_KxC[1:], xbc_C[None]], axis=0)  # oldest first, current last
      u_C = jax.nn.silu(jnp.sum(window_KxC * w_KxC, axis=0) + b_C)
      x_HxP, b_N, c_N = u_C[:i].reshape(h, p), u_C[i : i + n], u_C[i + n :]
      dt_H = jax.nn.softplus(dt_raw_H + dt_bias_H)
      state_HxPxN = (
        jnp.exp(dt_H * a_H)[:, None, None] * state_HxPxN + dt_H[:, None, None] * x_HxP[:, :, None] * b_N[None, None, :]
      )
      y_HxP = jnp.sum(state_HxPxN * c_N[None, None, :], axis=-1) + d_H[:, None] * x_HxP
      return (window_KxC, state_HxPxN, seg), y_HxP.reshape(i)

    length = seg_L.shape[0]
    init = (jnp.zeros(w_KxC.shape), jnp.zeros((h, p, n)), seg_L[0])
    _, y_LxI = jax.lax.scan(token, init, (xbc_LxC, dt_raw_LxH, seg_L, jnp.arange(length)))
    return y_LxI

  y_BxLxI = jax.vmap(one_sequence)(xbc_BxLxC, dt_raw_BxLxH, seg_BxL)
  g_BxLxI = y_BxLxI * jax.nn.silu(z_BxLxI)
  g_BxLxI = g_BxLxI / jnp.sqrt(jnp.mean(g_BxLxI**2, axis=-1, keepdims=True) + 1e-5) * m.norm.scale[...][None, None, :]
  return g_BxLxI @ m.out_proj.kernel[...]


def apply_fn(forward):
  """jitted (params, x, seg) -> y for a forward(module, x, seg), so params can be differentiated."""

  @functools.partial(jax.jit, static_argnums=0)
  def run(graphdef, params, x, seg):
    return forward(nnx.merge(graphdef, params), x, seg)

  return run


parallel = apply_fn(lambda m, x, seg: m(x, seg))
naive = apply_fn(reference)


@functools.partial(jax.jit, static_argnums=0)
def step(graphdef, params, x_BxD, cache, reset_B):
  return nnx.merge(graphdef, params).step(x_BxD, cache, reset_B)


def layout(*runs: tuple[int, int]) -> list[int]:
  """Segment ids from (id, length) runs."""
  return [s for s, count in runs for _ in range(count)]


# name: (chunk_size, segment ids of row 0, segment ids of row 1); both rows have the same length.
CASES = {
  "one_token": (4, layout((1, 1)), layout((0, 1))),
  "shorter_than_chunk": (8, layout((1, 2), (2, 1)), layout((2, 1), (1, 2))),
  "one_document_and_changes_at_chunk_boundaries": (4, layout((1, 24)), layout((1, 8), (2, 4), (3, 12))),
  "not_chunk_multiple_and_id_reappears": (4, layout((1, 5), (2, 8)), layout((1, 4), (2, 4), (1, 5))),
  "single_token_doc_padding_and_many_chunks": (
    8,
    layout((3, 10), (1, 1), (2, 20), (0, 6)),
    layout((0, 2), (5, 1), (6, 28), (0, 6)),
  ),
}


def inputs(name: str, seed: int = 1):
  """(model, x_BxLxD, segment_ids_BxL) for a case; batch of 2 rows with different layouts."""
  chunk_size, seg0, seg1 = CASES[name]
  seg_BxL = jnp.array([seg0, seg1], jnp.int32)
  x_BxLxD = jax.random.normal(jax.random.key(seed), (2, len(seg0), DIM))
  return make(chunk_size), x_BxLxD, seg_BxL


@pytest.mark.parametrize("name", list(CASES))
def test_parallel_vs_reference(name):
  m, x, seg_BxL = inputs(name)
  graphdef, params = nnx.split(m, nnx.Param)
  y = parallel(graphdef, params, x, seg_BxL)
  y_ref = naive(graphdef, params, x, seg_BxL)
  assert y.shape == x.shape and y.dtype == x.dtype
  assert float(jnp.max(jnp.abs(y_ref))) > 0.1  # the comparison is not between two near-zero tensors
  np.testing.assert_allclose(y, y_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["single_token_doc_padding_and_many_chunks", "not_chunk_multiple_and_id_reappears"])
def test_gradients_vs_reference(name):
  """d <probe, y> / d (x, every parameter): chunked form == naive loop; all finite and not all zero."""
  m, x, seg_BxL = inputs(name)
  graphdef, params = nnx.split(m, nnx.Param)
  probe = jax.random.normal(jax.random.key(7), x.shape)  # random linear functional of the output

  def grads(fn):
    return jax.grad(lambda p, xx: jnp.sum(probe * fn(graphdef, p, xx, seg_BxL)), argnums=(0, 1))(params, x)

  (gp, gx), (gp_ref, gx_ref) = grads(parallel), grads(naive)
  flat, flat_ref = nnx.to_flat_state(gp), nnx.to_flat_state(gp_ref)
  assert len(flat) == len(flat_ref) == len(nnx.to_flat_state(params)) == 8
  pairs = [("x", gx, gx_ref)] + [(path, g[...], g_ref[...]) for (path, g), (_, g_ref) in zip(flat, flat_ref)]
  for what, g, g_ref in pairs:
    g, g_ref = np.asarray(g), np.asarray(g_ref)
    assert np.all(np.isfinite(g)) and np.any(g != 0), what
    scale = np.max(np.abs(g_ref))
    assert np.max(np.abs(g - g_ref)) <= 1e-4 * scale, (what, np.max(np.abs(g - g_ref)), scale)


@pytest.mark.parametrize("name", ["single_token_doc_padding_and_many_chunks", "not_chunk_multiple_and_id_reappears"])
def test_step_matches_parallel(name):
  m, x, seg_BxL = inputs(name)
  graphdef, params = nnx.split(m, nnx.Param)
  y_parallel = parallel(graphdef, params, x, seg_BxL)
  cache = m.init_cache(x.shape[0])
  assert cache.conv_state_BxKxC.shape == (2, CFG["d_conv"] - 1, m.d_inner + 2 * m.d_state)
  assert cache.ssm_state_BxHxPxN.shape == (2, m.n_heads, m.head_dim, m.d_state)
  ys = []
  for t in range(x.shape[1]):
    reset_B = seg_BxL[:, t] != seg_BxL[:, max(t - 1, 0)]
    y_BxD, cache = step(graphdef, params, x[:, t], cache, reset_B)
    ys.append(y_BxD)
  np.testing.assert_allclose(jnp.stack(ys, axis=1), y_parallel, atol=1e-4, rtol=1e-4)
  assert cache.conv_state_BxKxC.dtype == cache.ssm_state_BxHxPxN.dtype == jnp.float32


def test_step_reset_clears_state():
  graphdef, params = nnx.split(make(), nnx.Param)
  x_BxD = jax.random.normal(jax.random.key(3), (2, DIM))
  no_reset_B = jnp.zeros(2, bool)
  cache = fresh = make().init_cache(2)
  for _ in range(3):
    _, cache = step(graphdef, params, x_BxD, cache, no_reset_B)
  y_fresh, _ = step(graphdef, params, x_BxD, fresh, no_reset_B)
  y_reset, _ = step(graphdef, params, x_BxD, cache, jnp.array([True, False]))
  np.testing.assert_array_equal(y_reset[0], y_fresh[0])
  assert not np.allclose(y_reset[1], y_fresh[1])


def test_perturbing_one_document_leaves_the_next_unchanged():
  seg = layout((1, 9), (2, 15), (0, 4))  # boundary mid-chunk, padding at the end
  graphdef, params = nnx.split(make(4), nnx.Param)
  seg_BxL = jnp.array([seg, seg], jnp.int32)
  x = jax.random.normal(jax.random.key(1), (2, len(seg), DIM))
  x2 = x.at[:, :9].add(jax.random.normal(jax.random.key(5), (2, 9, DIM)) * 3.0)
  y, y2 = parallel(graphdef, params, x, seg_BxL), parallel(graphdef, params, x2, seg_BxL)
  assert np.all(np.asarray(y[:, :9] != y2[:, :9]))
  np.testing.assert_array_equal(y[:, 9:], y2[:, 9:])  # exactly: no information crosses the boundary


def test_jacobian_isolation_and_causality():
  """d y_t / d x_s is nonzero exactly when s <= t in the same document (not even rounding-level leaks)."""
  seg = layout((1, 8), (2, 7), (3, 3), (0, 2))  # changes at a chunk boundary (8), mid-chunk (15) and to padding (18)
  graphdef, params = nnx.split(make(4), nnx.Param)
  x = jax.random.normal(jax.random.key(2), (1, len(seg), DIM))
  seg_BxL = jnp.array([seg], jnp.int32)
  jac_LxDxLxD = jax.jit(jax.jacrev(lambda xx: parallel(graphdef, params, xx, seg_BxL)[0]))(x)[:, :, 0]
  assert np.all(np.isfinite(np.asarray(jac_LxDxLxD)))
  reach_LxL = np.asarray(jnp.any(jac_LxDxLxD != 0, axis=(1, 3)))  # [t, s]: does x_s influence y_t at all?
  seg_np = np.array(seg)
  t, s = np.meshgrid(np.arange(len(seg)), np.arange(len(seg)), indexing="ij")
  np.testing.assert_array_equal(reach_LxL, (s <= t) & (seg_np[s] == seg_np[t]))


def test_parameters_have_logical_axes():
  flat_params = nnx.to_flat_state(nnx.state(make(), nnx.Param))
  assert len(flat_params) == 8
  for path, p in flat_params:
    axes = p.get_metadata()["out_sharding"]
    assert len(axes) == p[...].ndim and all(isinstance(a, str) for a in axes), (path, axes)


def test_initialisation():
  m = make()
  dt = jax.nn.softplus(m.dt_bias[...])
  assert np.all((dt >= 1e-3 * 0.999) & (dt <= 1e-1 * 1.001))
  a = jnp.exp(m.a_log[...])
  assert np.all((a >= 1.0) & (a <= 16.0))
  np.testing.assert_array_equal(m.d_skip[...], 1.0)
  with pytest.raises(ValueError, match="head_dim"):
    Mamba2(DIM, rngs=nnx.Rngs(0), chunk_size=4, **{**CFG, "head_dim": 5})


def test_bfloat16_close_to_float32():
  m32, x, seg_BxL = inputs("single_token_doc_padding_and_many_chunks")
  m16 = make(m32.chunk_size, dtype=jnp.bfloat16)  # same seed: same parameters
  y32 = parallel(*nnx.split(m32, nnx.Param), x, seg_BxL)
  y16 = parallel(*nnx.split(m16, nnx.Param), x.astype(jnp.bfloat16), seg_BxL)
  assert y16.dtype == jnp.bfloat16
  y16 = np.asarray(y16.astype(jnp.float32))
  assert np.all(np.isfinite(y16))
  err = np.max(np.abs(y16 - np.asarray(y32)))
  assert 0 < err <= 0.05 * np.max(np.abs(np.asarray(y32))), err
