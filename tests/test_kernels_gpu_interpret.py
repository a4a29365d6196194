"""Pallas GPU (Triton) kernels (pallas_gpu.py): checks of their own, run on CPU by Pallas's generic interpreter.
The op/VJP, boundary-pattern and fuzz checks shared with the TPU kernels are in test_kernels_interpret.py."""

from chunklm.kernels import api
from kernel_cases import assert_matches_reference, keep_pattern


def test_default_tiles():
  """The GPU defaults (one tile covers these shapes; power-of-two blocks wider than the arrays). The EMA scan's
  default unrolling is slow to interpret; its lowering is checked in test_kernels_lowering.py."""
  keep = keep_pattern("docs", 2, 32)
  for op in ("downsample", "upsample", "segment_pool"):
    assert_matches_reference(op, api.Backend("gpu", interpret=True), keep, shape=(2, 32, 24, 12))
