"""Both Pallas kernel families vs the XLA reference, run on CPU by interpreters: the GPU (Triton) kernels of
pallas_gpu.py by Pallas's generic interpreter (`interpret=True`), the TPU kernels of pallas_tpu.py by the TPU
interpreter (`pltpu.InterpretParams()`: out-of-bounds reads raise, uninitialised memory reads as NaN).
Backend-specific checks are in test_kernels_gpu_interpret.py and test_kernels_tpu_interpret.py."""

import jax.numpy as jnp
import pytest
from hypothesis import given

from chunklm.kernels import api
from chunklm.kernels.tuning import Tiles
from kernel_cases import (
  FUZZ,
  OPS,
  PATTERNS,
  SHAPE,
  TINY,
  assert_matches_reference,
  keep_pattern,
  keep_strategy,
  p_strategy,
)

BACKENDS = {
  # GPU block_scan = EMA rows per program: M = 11 makes 3 row chunks, the last one partial.
  "gpu": api.Backend("gpu", interpret=True, tiles=Tiles(TINY.block_l, TINY.block_m, TINY.block_d, block_scan=4)),
  "tpu": api.Backend("tpu", interpret=True, tiles=TINY),
}
backends = pytest.mark.parametrize("backend", sorted(BACKENDS))


@backends
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("op", OPS)
def test_op_and_vjp_vs_reference(backend, op, dtype):
  assert_matches_reference(op, BACKENDS[backend], keep_pattern("random", SHAPE[0], SHAPE[1]), dtype=dtype)


@backends
@pytest.mark.parametrize("pattern", PATTERNS)
def test_boundary_patterns_vs_reference(backend, pattern):
  keep = keep_pattern(pattern, SHAPE[0], SHAPE[1], seed=3)
  for op in ("downsample", "upsample", "segment_pool"):
    assert_matches_reference(op, BACKENDS[backend], keep, seed=3)


@backends
@FUZZ
@given(keep=keep_strategy(SHAPE[0], SHAPE[1]))
def test_fuzz_pool_unpool_gather(backend, keep):
  for op in ("downsample", "upsample", "segment_pool_mean"):
    assert_matches_reference(op, BACKENDS[backend], keep, seed=1)


@backends
@FUZZ
@given(p=p_strategy(SHAPE[0], SHAPE[3]))
def test_fuzz_ema_scan(backend, p):
  assert_matches_reference("ema_scan", BACKENDS[backend], keep_pattern("random", SHAPE[0], SHAPE[1]), p_BxM=p)
