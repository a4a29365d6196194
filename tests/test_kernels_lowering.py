"""The kernels lower for real hardware, checked on CPU: the Triton kernels to Triton IR for CUDA (`jax.export`), the
Mosaic kernels to Mosaic IR for TPU, and — when libtpu is importable (the `tpu` extra) — compiled by libtpu for a v5e
chip ahead of time, which catches Mosaic's layout errors that lowering alone and interpret mode cannot."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from chunklm.kernels import pallas_gpu, pallas_tpu

SHAPES = ((2, 1024, 256, 300), (2, 32, 16, 12))  # B, L, D, M: several default tiles (M a multiple of none); tiny


def kernel_calls(k, dtype, shape):
  """(name, function, abstract args) of every kernel (forward and backward) of module k."""
  b, l, d, m = shape  # noqa: E741

  def s(shape, dt=dtype):
    return jax.ShapeDtypeStruct(shape, dt)

  idx, keep, p = s((b, l), jnp.int32), s((b, l), jnp.bool_), s((b, m), jnp.float32)
  x, z = s((b, l, d)), s((b, m, d))
  return [
    ("downsample", lambda x, kp: k.downsample(x, kp, m)[0], (x, keep)),
    ("upsample", lambda z, i: k.upsample(z, i), (z, idx)),
    ("upsample_masked", lambda z, i, kp: k.upsample(z, i, kp), (z, idx, keep)),
    ("segment_pool_sum", lambda x, i: k.segment_pool(x, i, m, "sum"), (x, idx)),
    ("segment_pool_mean", lambda x, i: k.segment_pool(x, i, m, "mean"), (x, idx)),
    ("ema_scan", lambda z, q: k.ema_scan(z, q), (z, p)),
    ("ema_scan_bwd", lambda z, q, zb, g: k.ema_scan_bwd(z, q, zb, g), (z, p, z, z)),
  ]


@pytest.mark.parametrize("shape", SHAPES, ids=["tiles", "tiny"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_triton_kernels_lower_for_cuda(dtype, shape):
  checks = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  for name, f, args in kernel_calls(pallas_gpu, dtype, shape):
    exported = jax.export.export(jax.jit(f), platforms=("cuda",), disabled_checks=checks)(*args)
    assert "xla.gpu.triton" in exported.mlir_module(), name


@pytest.mark.parametrize("shape", SHAPES, ids=["tiles", "tiny"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_mosaic_kernels_lower_for_tpu(dtype, shape):
  for name, f, args in kernel_calls(pallas_tpu, dtype, shape):
    exported = jax.export.export(jax.jit(f), platforms=("tpu",))(*args)
    assert "tpu_custom_call" in exported.mlir_module(), name


AOT_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp
    from jax.experimental import topologies
    from chunklm.kernels import pallas_tpu
    import test_kernels_lowering as t
    device = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    for shape in t.SHAPES:
      for dtype in (jnp.float32, jnp.bfloat16):
        for name, f, args in t.kernel_calls(pallas_tpu, dtype, shape):
          args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for a in args]
          jax.jit(f).lower(*args).compile()
          print("compiled", name, dtype.__name__, shape, flush=True)
""")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (the `tpu` extra)")
def test_mosaic_kernels_compile_for_v5e_ahead_of_time():
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))
  run = subprocess.run([sys.executable, "-c", AOT_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  assert run.stdout.count("compiled") == 28
