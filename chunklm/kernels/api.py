"""Public chunk ops used by the model: one signature per op, several backends, chosen by `impl`.

impl (config `kernels.impl`):
  auto       Pallas kernels on GPU and TPU, the XLA reference elsewhere (CPU).
  xla        `reference.py`, differentiated by JAX: the ground truth.
  pallas     the compiled kernels of the target devices: `pallas_tpu.py` (Mosaic) on TPU, `pallas_gpu.py` (Triton) on
             NVIDIA GPUs. An error on CPU, which has no Pallas compiler.
The target is the platform of the mesh the computation is traced under (`jax.set_mesh`), else JAX's default backend:
compiling for a TPU slice on a CPU host (`chunklm bench compile`) gets the TPU kernels.
  interpret  the same kernels run by the Pallas interpreter, on any backend: on a GPU host the Triton kernels with
             `interpret=True` (they run as plain XLA on the GPU); elsewhere the TPU kernels with
             `pltpu.InterpretParams()` (on CPU: out-of-bounds reads raise, uninitialised memory reads as NaN).
             Slow; for tests and debugging.
Tests and benchmarks may pass a `Backend` instead (an explicit kernel family, interpret flag and tile sizes).

Under a mesh of several devices every Pallas op runs per shard (`mesh.context.per_shard`: a `shard_map` over the
batch axes, the feature axis replicated; Mosaic and Triton kernels cannot be partitioned automatically); forward and
backward kernels both run inside it. The XLA path is partitioned by XLA.
Every Pallas op is a `jax.custom_vjp` whose backward reuses the kernels: upsample and segment_pool (sum) are each
other's transpose; downsample's transpose is upsample masked to the kept positions; ema_scan's backward is the reverse
scan (`ema_scan_bwd`). Integer bookkeeping (`chunk_index`, `chunk_positions`, chunk lengths) is plain JAX for every
backend. The XLA path keeps JAX's own derivative of the reference, so the reference stays the ground truth.
"""

from __future__ import annotations

import dataclasses
import functools
import typing

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

from chunklm.config import KernelImpl
from chunklm.kernels import pallas_gpu, pallas_tpu, reference
from chunklm.kernels.bookkeeping import chunk_counts, kept_rows
from chunklm.kernels.tuning import Tiles
from chunklm.mesh.context import per_shard
from chunklm.mesh.context import platform as target_platform

IMPLS = typing.get_args(KernelImpl)  # the backend names, defined once: the type of kernels.impl
chunk_index = reference.chunk_index  # cheap integer bookkeeping: the same for every backend
chunk_positions = reference.chunk_positions


@dataclasses.dataclass(frozen=True)
class Backend:
  """A Pallas kernel family: 'tpu' (pallas_tpu.py) or 'gpu' (pallas_gpu.py), compiled or interpreted."""

  kernels: str
  interpret: bool = False
  tiles: Tiles | None = None  # None: the family's defaults (tuning.py)

  def __post_init__(self):
    if self.kernels not in ("tpu", "gpu"):
      raise ValueError(f"Backend.kernels must be 'tpu' or 'gpu', got {self.kernels!r}")

  @property
  def module(self):
    return pallas_tpu if self.kernels == "tpu" else pallas_gpu

  def kwargs(self) -> dict:
    interpret: bool | pltpu.InterpretParams  # the TPU interpreter takes its settings, the GPU one a flag
    if not self.interpret:
      interpret = False
    elif self.kernels == "tpu":
      interpret = pltpu.InterpretParams()
    else:
      interpret = True
    return {"interpret": interpret, **({"tiles": self.tiles} if self.tiles is not None else {})}


def resolve(impl: str | Backend) -> Backend | None:
  """The backend `impl` names for the target devices (None: the XLA reference)."""
  if isinstance(impl, Backend):
    return impl
  if impl not in IMPLS:
    raise ValueError(f"unknown chunk-op implementation {impl!r}; valid: {', '.join(IMPLS)}")
  platform = target_platform()
  family = {"tpu": "tpu", "gpu": "gpu"}.get(platform)
  if impl == "auto":
    impl = "pallas" if family else "xla"
  if impl == "xla":
    return None
  if impl == "pallas":
    if family is None:
      raise ValueError(
        f"chunk-op impl 'pallas' needs a GPU or TPU, but the target devices are {platform!r}; "
        "use 'interpret' (the kernels, interpreted) or 'xla'"
      )
    return Backend(family)
  return Backend("gpu" if family == "gpu" else "tpu", interpret=True)


def _shape(x, name: str, ndim: int, lead: tuple[int, ...] = ()):
  if x.ndim != ndim or tuple(x.shape[: len(lead)]) != lead:
    want = "x".join(str(s) for s in lead) + ("x..." if ndim > len(lead) else "")
    raise ValueError(f"{name} must have {ndim} dimensions{f' starting {want}' if lead else ''}, got shape {x.shape}")


def _capacity(capacity) -> int:
  if not isinstance(capacity, int) or capacity <= 0:
    raise ValueError(f"capacity must be a positive int (static chunk slots M), got {capacity!r}")
  return capacity


# ----------------------------------------------------------------------------------------------------- public ops


def downsample(x_BxLxD: jax.Array, keep_BxL: jax.Array, capacity: int, *, impl: str | Backend = "xla"):
  """(z_BxMxD, chunk_lens_BxM, valid_BxM): the kept rows of x in order, in M = `capacity` slots.

  keep_BxL is the boundary mask after the model's overflow policy. If more than M positions are kept, the first M
  (in order) get slots and the later ones join chunk M-1. Empty slots are zero with length 0 and valid False.
  Gradient: to x only (the cotangent rows go back to the kept positions, zeros elsewhere).
  """
  _shape(x_BxLxD, "x_BxLxD", 3)
  _shape(keep_BxL, "keep_BxL", 2, x_BxLxD.shape[:2])
  backend = resolve(impl)
  if backend is None:
    return reference.downsample(x_BxLxD, keep_BxL, _capacity(capacity))
  capacity = _capacity(capacity)
  return per_shard(functools.partial(_downsample, backend, capacity), x_BxLxD, keep_BxL.astype(bool))


def upsample(z_BxMxD: jax.Array, chunk_idx_BxL: jax.Array, *, impl: str | Backend = "xla") -> jax.Array:
  """x_BxLxD with x[b, t] = z[b, chunk_idx[b, t]]; chunk_idx non-decreasing along L, in [0, M) (`chunk_index`)."""
  _shape(z_BxMxD, "z_BxMxD", 3)
  _shape(chunk_idx_BxL, "chunk_idx_BxL", 2, z_BxMxD.shape[:1])
  backend = resolve(impl)
  if backend is None:
    return reference.upsample(z_BxMxD, chunk_idx_BxL)
  return per_shard(functools.partial(_upsample, backend, z_BxMxD.shape[1]), z_BxMxD, chunk_idx_BxL.astype(jnp.int32))


def segment_pool(
  x_BxLxD: jax.Array, chunk_idx_BxL: jax.Array, capacity: int, mode: str = "sum", *, impl: str | Backend = "xla"
) -> jax.Array:
  """z_BxMxD: sum or mean of the rows of each chunk (chunk_idx as for `upsample`); empty chunks are zero."""
  if mode not in ("sum", "mean"):
    raise ValueError(f"segment_pool mode must be 'sum' or 'mean', got {mode!r}")
  _shape(x_BxLxD, "x_BxLxD", 3)
  _shape(chunk_idx_BxL, "chunk_idx_BxL", 2, x_BxLxD.shape[:2])
  backend = resolve(impl)
  if backend is None:
    return reference.segment_pool(x_BxLxD, chunk_idx_BxL, _capacity(capacity), mode)
  return per_shard(
    functools.partial(_segment_pool, backend, _capacity(capacity), mode), x_BxLxD, chunk_idx_BxL.astype(jnp.int32)
  )


def ema_scan(z_BxMxD: jax.Array, p_BxM: jax.Array, *, impl: str | Backend = "xla") -> jax.Array:
  """zbar_BxMxD, zbar_c = p_c z_c + (1 - p_c) zbar_{c-1} (zbar_{-1} = 0), in float32, returned in z's dtype;
  p_c = 1 restarts the average (document starts, empty slots). Gradients to z and p."""
  _shape(z_BxMxD, "z_BxMxD", 3)
  _shape(p_BxM, "p_BxM", 2, z_BxMxD.shape[:2])
  backend = resolve(impl)
  if backend is None:
    return reference.ema_scan(z_BxMxD, p_BxM)
  return per_shard(functools.partial(_ema_scan, backend), z_BxMxD, p_BxM)


# ------------------------------------------------------------------------------------------- custom VJPs (Pallas only)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _downsample(backend, capacity, x_BxLxD, keep_BxL):
  return backend.module.downsample(x_BxLxD, keep_BxL, capacity, **backend.kwargs())


def _downsample_fwd(backend, capacity, x_BxLxD, keep_BxL):
  return _downsample(backend, capacity, x_BxLxD, keep_BxL), keep_BxL


def _downsample_bwd(backend, capacity, keep_BxL, cotangents):  # the transpose of a gather: rows back, zeros elsewhere
  dz_BxMxD = cotangents[0]
  idx_BxL = reference.chunk_index(keep_BxL, capacity)
  dx_BxLxD = backend.module.upsample(dz_BxMxD, idx_BxL, kept_rows(keep_BxL, capacity), **backend.kwargs())
  return dx_BxLxD, None


_downsample.defvjp(_downsample_fwd, _downsample_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _upsample(backend, capacity, z_BxMxD, chunk_idx_BxL):
  return backend.module.upsample(z_BxMxD, chunk_idx_BxL, **backend.kwargs())


def _upsample_fwd(backend, capacity, z_BxMxD, chunk_idx_BxL):
  return _upsample(backend, capacity, z_BxMxD, chunk_idx_BxL), chunk_idx_BxL


def _upsample_bwd(backend, capacity, chunk_idx_BxL, dx_BxLxD):  # the transpose of a broadcast: a segment sum
  return backend.module.segment_pool(dx_BxLxD, chunk_idx_BxL, capacity, "sum", **backend.kwargs()), None


_upsample.defvjp(_upsample_fwd, _upsample_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _segment_pool(backend, capacity, mode, x_BxLxD, chunk_idx_BxL):
  return backend.module.segment_pool(x_BxLxD, chunk_idx_BxL, capacity, mode, **backend.kwargs())


def _segment_pool_fwd(backend, capacity, mode, x_BxLxD, chunk_idx_BxL):
  return _segment_pool(backend, capacity, mode, x_BxLxD, chunk_idx_BxL), chunk_idx_BxL


def _segment_pool_bwd(backend, capacity, mode, chunk_idx_BxL, dz_BxMxD):  # the transpose of a segment sum: broadcast
  if mode == "mean":
    counts_BxM = chunk_counts(chunk_idx_BxL, capacity, jnp.float32)
    dz_BxMxD = (dz_BxMxD / jnp.maximum(counts_BxM, 1.0)[..., None]).astype(dz_BxMxD.dtype)
  return backend.module.upsample(dz_BxMxD, chunk_idx_BxL, **backend.kwargs()), None


_segment_pool.defvjp(_segment_pool_fwd, _segment_pool_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ema_scan(backend, z_BxMxD, p_BxM):
  return backend.module.ema_scan(z_BxMxD, p_BxM, **backend.kwargs())


def _ema_scan_fwd(backend, z_BxMxD, p_BxM):
  zbar_BxMxD = _ema_scan(backend, z_BxMxD, p_BxM)
  return zbar_BxMxD, (z_BxMxD, p_BxM, zbar_BxMxD)


def _ema_scan_bwd(backend, res, g_BxMxD):
  z_BxMxD, p_BxM, zbar_BxMxD = res
  dz_BxMxD, dp_BxM = backend.module.ema_scan_bwd(z_BxMxD, p_BxM, zbar_BxMxD, g_BxMxD, **backend.kwargs())
  return dz_BxMxD.astype(z_BxMxD.dtype), dp_BxM.astype(p_BxM.dtype)


_ema_scan.defvjp(_ema_scan_fwd, _ema_scan_bwd)
