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

from chunklm.kernels import pallas_gpu, pallas_tpu, ssd_gpu, ssd_layout, ssd_tpu

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


# The SSD kernels: B, L, H, P, N, Q (an S model's chunk and state; an L model's; a tiny one), for either family.
SSD_SHAPES = ((2, 512, 8, 64, 64, 128), (1, 1024, 4, 64, 128, 256), (1, 16, 2, 64, 16, 16))  # tiny: Q = L


def ssd_calls(module, dtype, shape, group: int):
  """(name, function, abstract args) of the SSD forward and backward kernels of `module` on operands of `shape`."""
  b, l, h, p, n, q = shape  # noqa: E741
  dims = ssd_layout.Dims(b, l, h, p, n, q, group)
  f32 = jnp.float32
  s = jax.ShapeDtypeStruct
  k = h // group
  operands = (
    s((b, l, h * p), dtype),
    s((b, k, group, l), f32),
    s((b, 1, l), f32),
    s((b, l // q, 1, 1), f32),
    s((b, l, n), dtype),
    s((b, l, n), dtype),
    s((k, 1, group), f32),
    s((k, 1, group), f32),
  )
  states, dy = s((b, l // q, h, p, n), f32), s((b, l, h * p), dtype)
  return [
    ("ssd_fwd", lambda o: module.forward(o, n=dims), (operands,)),
    ("ssd_bwd", lambda o, st, g: module.backward(o, st, g, n=dims), (operands, states, dy)),
  ]


@pytest.mark.parametrize("shape", SSD_SHAPES, ids=["S", "L", "tiny"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_ssd_kernels_lower_for_cuda_and_tpu(dtype, shape):
  checks = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  for name, f, args in ssd_calls(ssd_gpu, dtype, shape, group=1):
    exported = jax.export.export(jax.jit(f), platforms=("cuda",), disabled_checks=checks)(*args)
    assert "xla.gpu.triton" in exported.mlir_module(), name
  for name, f, args in ssd_calls(ssd_tpu, dtype, shape, group=2):
    assert "tpu_custom_call" in jax.export.export(jax.jit(f), platforms=("tpu",))(*args).mlir_module(), name


SSD_AOT_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp
    from jax.experimental import topologies
    from chunklm.kernels import ssd_tpu
    import test_kernels_lowering as t
    device = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    for shape in t.SSD_SHAPES:
      for dtype in (jnp.float32, jnp.bfloat16):
        for name, f, args in t.ssd_calls(ssd_tpu, dtype, shape, group=2):
          args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), args)
          jax.jit(f).lower(*args).compile()
          print("compiled", name, dtype.__name__, shape, flush=True)
""")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (the `tpu` extra)")
def test_ssd_mosaic_kernels_compile_for_v5e_ahead_of_time():
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))
  env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"  # another process (a compile beside the tests) may hold libtpu's lock
  run = subprocess.run([sys.executable, "-c", SSD_AOT_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  assert run.stdout.count("compiled") == 12
