"""Public chunk ops used by the model. Every backend implements exactly these signatures (see reference.py).

The model calls only these functions, so faster backends (Pallas kernels) can replace the XLA reference without
touching model code. `impl` selects the backend; today the XLA reference is the one implementation.
"""

from __future__ import annotations

import jax

from chunklm.kernels import reference

IMPLS = ("xla",)

chunk_index = reference.chunk_index  # cheap integer bookkeeping: the same for every backend
chunk_positions = reference.chunk_positions


def _check(impl: str) -> None:
  if impl not in IMPLS:
    raise ValueError(f"unknown chunk-op implementation {impl!r}; available: {', '.join(IMPLS)}")


def downsample(x_BxLxD: jax.Array, keep_BxL: jax.Array, capacity: int, *, impl: str = "xla"):
  """(z_BxMxD, chunk_lens_BxM, valid_BxM): the kept rows of x in order, in `capacity` slots."""
  _check(impl)
  return reference.downsample(x_BxLxD, keep_BxL, capacity)


def upsample(z_BxMxD: jax.Array, chunk_idx_BxL: jax.Array, *, impl: str = "xla") -> jax.Array:
  """x_BxLxD with x[b, t] = z[b, chunk_idx[b, t]]."""
  _check(impl)
  return reference.upsample(z_BxMxD, chunk_idx_BxL)


def segment_pool(x_BxLxD: jax.Array, chunk_idx_BxL: jax.Array, capacity: int, mode: str = "sum", *,
                 impl: str = "xla") -> jax.Array:
  """z_BxMxD: sum or mean of the rows of each chunk."""
  _check(impl)
  return reference.segment_pool(x_BxLxD, chunk_idx_BxL, capacity, mode)


def ema_scan(z_BxMxD: jax.Array, p_BxM: jax.Array, *, impl: str = "xla") -> jax.Array:
  """zbar_c = p_c z_c + (1 - p_c) zbar_{c-1}; p_c = 1 restarts the average (document starts)."""
  _check(impl)
  return reference.ema_scan(z_BxMxD, p_BxM)
