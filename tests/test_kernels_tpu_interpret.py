"""Pallas TPU kernels (pallas_tpu.py): checks of their own, run on CPU by the TPU interpreter
(`pltpu.InterpretParams()`: out-of-bounds reads raise, uninitialised memory reads as NaN). The op/VJP,
boundary-pattern and fuzz checks shared with the GPU kernels are in test_kernels_interpret.py."""

import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from chunklm.kernels import api, pallas_tpu, reference
from chunklm.kernels.schedule import ACTIVE, FIRST, LAST, schedule
from kernel_cases import TINY, assert_matches_reference, keep_pattern

TPU = api.Backend("tpu", interpret=True, tiles=TINY)


def test_bfloat16_downsample_takes_the_pool_kernel_and_gather_rows_refuses_it():
  x = jnp.ones((1, 16, 8), jnp.bfloat16)
  with pytest.raises(ValueError, match="32-bit"):
    pallas_tpu.gather_rows(x, jnp.zeros((1, 4), jnp.int32), jnp.ones((1,), jnp.int32), 4, interpret=True)
  keep = jnp.asarray(keep_pattern("random", 1, 16))
  z, lens, valid = pallas_tpu.downsample(x * 3, keep, 4, tiles=TINY, interpret=pltpu.InterpretParams())
  ref = reference.downsample(x * 3, keep, 4)
  for a, b in zip((z, lens, valid), ref):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_schedule_visits_each_overlapping_pair_once_in_order():
  """Output tiles [0, 1, 2, 3] read input tiles 0..1, 1..1, none, 1..3: 2 + 1 + 1 + 3 = 7 <= 4 + 4 - 1 steps."""
  lo, hi = jnp.array([[0, 1, 2, 1]]), jnp.array([[1, 1, 1, 3]])
  out_t, in_t, flags = (np.asarray(a[0]) for a in schedule(lo, hi, 4))
  active = (flags & ACTIVE) != 0
  assert list(zip(out_t[active], in_t[active])) == [(0, 0), (0, 1), (1, 1), (3, 1), (3, 2), (3, 3)]
  assert out_t[(flags & FIRST) != 0].tolist() == [0, 1, 2, 3] and out_t[(flags & LAST) != 0].tolist() == [0, 1, 2, 3]
  assert flags[7:].tolist() == [] and len(flags) == 7  # the static bound is exactly used here
  lo, hi = jnp.array([[0, 0, 0, 0]]), jnp.array([[0, -1, -1, -1]])  # only the first output tile reads anything
  out_t, in_t, flags = (np.asarray(a[0]) for a in schedule(lo, hi, 4))
  assert flags[4:].tolist() == [0, 0, 0] and out_t[4:].tolist() == [3, 3, 3]  # past the end: idle on the last tile
  assert in_t[3:].tolist() == [in_t[3]] * 4  # ... and on its input tile (no new block copies)


def test_whole_tiles():
  """L and M multiples of the tile (no partial last tile): the schedule's last step is a full tile."""
  keep = keep_pattern("docs", 2, 32)
  for op in ("upsample", "segment_pool"):
    assert_matches_reference(op, TPU, keep, shape=(2, 32, 8, 16))
