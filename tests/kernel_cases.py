"""Shared cases of the kernel tests (test_kernels_*.py): boundary patterns, ops by name, and the comparison of a
backend's output and VJP with the XLA reference's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from chunklm.kernels import api
from chunklm.kernels.tuning import Tiles

OPS = ("downsample", "upsample", "segment_pool", "segment_pool_mean", "ema_scan")
# Tiny tiles: tiny shapes still cross many tile edges (legal in interpret mode only; Mosaic/Triton need larger ones).
TINY = Tiles(block_l=8, block_m=8, block_d=8, block_scan=8)
# B, L, D, M: L and M not multiples of 8 (partial last tiles), M < L (overflow when most positions are boundaries).
SHAPE = (2, 27, 8, 11)
FUZZ = settings(
  max_examples=12,
  deadline=None,
  derandomize=True,
  database=None,
  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def keep_pattern(kind: str, b: int, length: int, seed: int = 0) -> np.ndarray:
  """A boundary mask keep_BxL of a named kind."""
  rng = np.random.default_rng(seed)
  keep = np.zeros((b, length), bool)
  if kind == "random":
    keep = rng.uniform(size=(b, length)) < 0.3
  elif kind == "all":  # chunks of length 1; overflow when M < L
    keep[:] = True
  elif kind == "one":  # one chunk spanning every tile
    pass
  elif kind == "long":  # chunks spanning tiles
    keep[:, ::11] = True
  elif kind == "docs":  # several documents per row: their starts, plus a few boundaries inside
    keep[:, [0, 5, 6, 19]] = True
    keep |= rng.uniform(size=(b, length)) < 0.15
  elif kind == "late_start":  # no boundary at position 0: the leading positions join chunk 0
    keep[:, 4::3] = True
    return keep
  else:
    raise ValueError(kind)
  keep[:, 0] = True
  return keep


PATTERNS = ("random", "all", "one", "long", "docs", "late_start")


def keep_strategy(b: int, length: int):
  """Hypothesis boundary masks: a named pattern, or arbitrary bits (dense, sparse, runs) with or without a boundary
  at position 0."""
  bits = st.lists(st.lists(st.booleans(), min_size=length, max_size=length), min_size=b, max_size=b)
  named = st.sampled_from(PATTERNS).map(lambda k: keep_pattern(k, b, length))
  return st.one_of(named, bits.map(lambda v: np.asarray(v, bool)))


def p_strategy(b: int, m: int):
  """Hypothesis EMA coefficients: restarts (1), near-restarts, the model's clamps and ordinary values."""
  values = st.sampled_from([1.0, 1.0 - 1e-4, 0.5, 0.9, 0.1, 1e-4])
  return st.lists(st.lists(values, min_size=m, max_size=m), min_size=b, max_size=b).map(
    lambda v: np.asarray(v, np.float32)
  )


def call(op: str, impl, args: tuple, keep_BxL, capacity: int):
  """The op on its differentiable args, with the integer inputs derived from keep."""
  idx_BxL = api.chunk_index(keep_BxL, capacity)
  if op == "downsample":
    return api.downsample(args[0], keep_BxL, capacity, impl=impl)[0]
  if op == "upsample":
    return api.upsample(args[0], idx_BxL, impl=impl)
  if op.startswith("segment_pool"):
    return api.segment_pool(args[0], idx_BxL, capacity, "mean" if op.endswith("mean") else "sum", impl=impl)
  return api.ema_scan(args[0], args[1], impl=impl)


def inputs(op: str, shape, dtype, seed: int = 0, p_BxM=None) -> tuple:
  b, length, d, m = shape
  rng = np.random.default_rng(seed)
  rows = m if op in ("upsample", "ema_scan") else length
  x = jnp.asarray(rng.normal(size=(b, rows, d)), dtype)
  if op != "ema_scan":
    return (x,)
  if p_BxM is None:
    p_BxM = rng.uniform(0.05, 0.95, size=(b, m)).astype(np.float32)
    p_BxM[:, [0, m // 2]] = 1.0
  return x, jnp.asarray(p_BxM)


def tolerance(op: str, dtype) -> dict:
  if jnp.dtype(dtype) == jnp.float32:
    return {"rtol": 1e-5, "atol": 2e-5}
  return {"rtol": 2e-2, "atol": 5e-2 if op == "ema_scan" else 2e-2}


def sum_slack(dtype, magnitudes):
  """Extra absolute tolerance for float32 sums, per element: an op that adds n terms in another order than the
  reference may differ by a few ulps of the sum of the terms' magnitudes Σ|t| (up to n·eps·Σ|t| in the worst case;
  the kernels' tiles and Triton's reductions do reorder). `magnitudes` is Σ|t| per element (the linear ops applied
  to absolute values); we allow 4·eps·Σ|t|, far below what one dropped or doubled term of a bug would change. Zero
  for bfloat16, whose tolerance already covers it."""
  eps = float(jnp.finfo(jnp.float32).eps) if jnp.dtype(dtype) == jnp.float32 else 0.0
  return jax.tree.map(lambda m: 4 * eps * np.abs(np.asarray(m, np.float32)), magnitudes)


def assert_close(actual, desired, rtol: float, atol, what: str):
  """|actual - desired| <= atol + rtol·|desired| elementwise, with `atol` an array (numpy's assert_allclose takes a
  scalar only); the message names the worst element."""
  actual, desired = np.asarray(actual, np.float32), np.asarray(desired, np.float32)
  excess = np.abs(actual - desired) - (atol + rtol * np.abs(desired))
  if np.isnan(actual).any() != np.isnan(desired).any() or (excess > 0).any():
    i = np.unravel_index(np.nanargmax(excess), excess.shape)
    raise AssertionError(
      f"{what}: {(excess > 0).sum()} of {excess.size} elements off; worst at {i}: "
      f"{actual[i]} vs {desired[i]} (allowed {np.broadcast_to(atol, excess.shape)[i]} + "
      f"{rtol} x |desired|)"
    )


def assert_matches_reference(
  op: str, backend: api.Backend, keep_BxL, shape=SHAPE, dtype=jnp.float32, seed=0, p_BxM=None
):
  """Output and VJP (random cotangent) of `backend` equal the reference's, computed in float32 from the same
  (dtype-rounded) inputs, within the dtype's tolerance (plus, in float32, the slack of reordered sums)."""
  capacity = shape[3]
  keep_BxL = jnp.asarray(keep_BxL)
  args = inputs(op, shape, dtype, seed, p_BxM)
  ref_args = tuple(a.astype(jnp.float32) for a in args)
  ref = lambda *a: call(op, "xla", a, keep_BxL, capacity)
  out_ref, vjp_ref = jax.vjp(ref, *ref_args)
  out, vjp = jax.vjp(lambda *a: call(op, backend, a, keep_BxL, capacity), *args)
  assert out.shape == out_ref.shape and out.dtype == args[0].dtype
  ct = jnp.asarray(np.random.default_rng(seed + 1).normal(size=out.shape), dtype)
  tol = tolerance(op, dtype)
  abs_ct = jnp.abs(ct).astype(jnp.float32)
  slack, grad_slack = sum_slack(dtype, (ref(*(jnp.abs(a) for a in ref_args)), vjp_ref(abs_ct)))
  assert_close(out, out_ref, tol["rtol"], tol["atol"] + slack, f"{op} output")
  for i, (g, g_ref) in enumerate(zip(vjp(ct), vjp_ref(ct.astype(jnp.float32)))):
    assert g.dtype == args[i].dtype, f"{op} gradient {i} has dtype {g.dtype}, input {args[i].dtype}"
    assert_close(g, g_ref, tol["rtol"], tol["atol"] + grad_slack[i], f"{op} gradient {i}")
