"""Pallas GPU (Triton) kernels (pallas_gpu.py) vs the XLA reference, run on CPU by Pallas's generic interpreter
(`interpret=True`)."""

import jax.numpy as jnp
import pytest
from hypothesis import given

from chunklm.kernels import api
from chunklm.kernels.tuning import Tiles
from kernel_cases import FUZZ, OPS, PATTERNS, SHAPE, TINY, assert_matches_reference, keep_pattern, keep_strategy, \
    p_strategy

# block_scan = EMA rows per program: M = 11 makes 3 row chunks, the last one partial.
GPU = api.Backend("gpu", interpret=True, tiles=Tiles(TINY.block_l, TINY.block_m, TINY.block_d, block_scan=4))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("op", OPS)
def test_op_and_vjp_vs_reference(op, dtype):
  assert_matches_reference(op, GPU, keep_pattern("random", SHAPE[0], SHAPE[1]), dtype=dtype)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_boundary_patterns_vs_reference(pattern):
  keep = keep_pattern(pattern, SHAPE[0], SHAPE[1], seed=3)
  for op in ("downsample", "upsample", "segment_pool"):
    assert_matches_reference(op, GPU, keep, seed=3)


@FUZZ
@given(keep=keep_strategy(SHAPE[0], SHAPE[1]))
def test_fuzz_pool_unpool_gather(keep):
  for op in ("downsample", "upsample", "segment_pool_mean"):
    assert_matches_reference(op, GPU, keep, seed=1)


@FUZZ
@given(p=p_strategy(SHAPE[0], SHAPE[3]))
def test_fuzz_ema_scan(p):
  assert_matches_reference("ema_scan", GPU, keep_pattern("random", SHAPE[0], SHAPE[1]), p_BxM=p)


def test_default_tiles():
  """The GPU defaults (one tile covers these shapes; power-of-two blocks wider than the arrays). The EMA scan's
  default unrolling is slow to interpret; its lowering is checked in test_kernels_lowering.py."""
  keep = keep_pattern("docs", 2, 32)
  for op in ("downsample", "upsample", "segment_pool"):
    assert_matches_reference(op, api.Backend("gpu", interpret=True), keep, shape=(2, 32, 24, 12))
