"""The compiled kernels (impl 'pallas') vs the XLA reference on a real accelerator: run with `pytest -m gpu` on an
NVIDIA GPU (Triton kernels) or `pytest -m tpu` on a TPU (Mosaic kernels); skipped elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chunklm.kernels import api
from kernel_cases import OPS, PATTERNS, assert_matches_reference, keep_pattern

FAMILY = {"gpu": "gpu", "tpu": "tpu"}.get(jax.default_backend())
pytestmark = [
  pytest.mark.gpu,
  pytest.mark.tpu,
  pytest.mark.skipif(FAMILY is None, reason="needs a GPU or TPU (compiled Pallas kernels)"),
]
SHAPE = (4, 1000, 256, 300)  # B, L, D, M: several default tiles, partial last tiles


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("op", OPS)
def test_compiled_op_and_vjp_vs_reference(op, dtype):
  assert_matches_reference(op, api.Backend(FAMILY), keep_pattern("random", SHAPE[0], SHAPE[1]), SHAPE, dtype)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_compiled_boundary_patterns(pattern):
  for op in ("downsample", "upsample", "segment_pool"):
    assert_matches_reference(op, api.Backend(FAMILY), keep_pattern(pattern, SHAPE[0], SHAPE[1]), SHAPE)


def test_hnet_step_with_compiled_kernels():
  from test_kernels_api import hnet_loss_and_grads

  v_xla, _, g_xla = hnet_loss_and_grads("xla")
  v_k, _, g_k = hnet_loss_and_grads("pallas")
  np.testing.assert_allclose(v_k, v_xla, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_k), jax.tree.leaves(g_xla)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
