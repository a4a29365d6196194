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


# The SSD: an S model's Mamba2 layer (Q 128, N 64), ragged length, documents inside and across chunks. The kernels'
# float32 matmuls run at the platform's default precision, as XLA's do (TF32 on NVIDIA tensor cores, bfloat16 passes
# on a TPU), in another order: within 2 % of each output's largest value, a bound that a wrong term would exceed.
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_compiled_ssd_and_vjp_vs_reference(dtype):
  from test_ssd_kernels import assert_matches, inputs

  args = inputs(2, 1000, 4, 64, 64, cuts=(100, 128, 129, 700), dtype=dtype)
  assert_matches(api.Backend(FAMILY), args, chunk=128, rtol=2e-2, atol=2e-2)


def test_hnet_step_with_compiled_ssd():
  from test_kernels_api import hnet_loss_and_grads
  from test_ssd_kernels import MAMBA_HNET

  big = (*MAMBA_HNET[:1], "model.mamba.head_dim=16", "model.mamba.d_state=16", "model.mamba.chunk_size=16")
  v_xla, _, g_xla = hnet_loss_and_grads("xla", big)
  v_k, _, g_k = hnet_loss_and_grads("pallas", big)
  np.testing.assert_allclose(v_k, v_xla, rtol=1e-3)
  for a, b in zip(jax.tree.leaves(g_k), jax.tree.leaves(g_xla)):
    np.testing.assert_allclose(a, b, rtol=2e-2, atol=1e-3)
