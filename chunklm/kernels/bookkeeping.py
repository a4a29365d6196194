"""Integer bookkeeping of the chunk ops that every backend shares (cheap next to moving rows of D features)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from chunklm.kernels import reference


def check_ndim(x, name: str, ndim: int) -> None:
  """The one input check of both kernel families: `name` must have `ndim` dimensions."""
  if x.ndim != ndim:
    raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")


def kept_rows(keep_BxL: jax.Array, capacity: int) -> jax.Array:
  """The kept positions that got a slot: keep minus the boundaries past `capacity` (overflow)."""
  return keep_BxL & (jnp.cumsum(keep_BxL.astype(jnp.int32), axis=1) <= capacity)


def chunk_counts(chunk_idx_BxL: jax.Array, capacity: int, dtype=jnp.int32) -> jax.Array:
  """Positions per chunk slot, counts_BxM (chunk_idx sorted along L)."""
  add = lambda i: jnp.zeros((capacity,), dtype).at[i].add(1, indices_are_sorted=True)  # noqa: E731
  return jax.vmap(add)(chunk_idx_BxL)


def chunk_lens(keep_BxL: jax.Array, capacity: int, valid_BxM: jax.Array) -> jax.Array:
  """Positions per chunk slot (int32; 0 for empty slots), as reference.downsample counts them."""
  lens_BxM = chunk_counts(reference.chunk_index(keep_BxL, capacity), capacity)
  return jnp.where(valid_BxM, lens_BxM, 0)
