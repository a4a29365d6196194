"""The Mamba2 SSD scan as one public op with the chunk ops' backends (`kernels.impl`, see `api.py`).

  xla        `ssd_reference.ssd`, differentiated by JAX: the ground truth.
  pallas     the fused kernels of the target devices: `ssd_tpu.py` (Mosaic) on TPU, `ssd_gpu.py` (Triton) on NVIDIA
             GPUs; an error on CPU.
  interpret  the same kernels in the Pallas interpreter (tests, any backend).
  auto       the XLA SSD everywhere, for now: the kernels are tested against the reference (interpret mode) and lower
             for both targets, but no GPU or TPU has yet measured them faster, so nothing picks them unasked.
The kernels make one pass over the sequence per head (the state carried between chunks inside the kernel, never
written to HBM except as the backward's residual), where the XLA form materialises the per-chunk states, the decay
matrices and their pads and transposes. Like the chunk ops, a Pallas SSD runs per batch shard under a mesh
(`per_shard`) and is a `jax.custom_vjp` whose backward is the reverse-order kernel (`ssd_chunk.backward`), given the
states entering each chunk, which the forward saves (B x C x H x P x N float32, as the XLA form keeps too).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from chunklm.kernels import ssd_gpu, ssd_layout, ssd_reference, ssd_tpu
from chunklm.kernels.api import Backend, resolve
from chunklm.kernels.tuning import GPU, TPU
from chunklm.mesh.context import per_shard


def heads_per_program(backend: Backend, heads: int, head_dim: int) -> int:
  """G: 1 on GPU; on TPU the fewest heads, from `ssd_heads` up, whose channels fill whole 128-lane rows and that
  divide the heads (else all heads: a block as wide as the array is always allowed)."""
  if backend.kernels == "gpu":
    return 1
  want = (backend.tiles or TPU).ssd_heads
  for g in range(max(1, want), heads + 1):
    if heads % g == 0 and (g * head_dim) % 128 == 0:
      return g
  return heads


def kernel_chunk(backend: Backend, model_chunk: int) -> int:
  """Positions per kernel step: the family's `ssd_chunk` tile (the scan's result does not depend on it; see
  tuning.py), or the model's chunk size where the tile is 0."""
  tiles = backend.tiles or (TPU if backend.kernels == "tpu" else GPU)
  return tiles.ssd_chunk or model_chunk


def ssd(
  x_BxLxHxP: jax.Array,
  dt_BxLxH: jax.Array,
  a_H: jax.Array,
  b_BxLxN: jax.Array,
  c_BxLxN: jax.Array,
  d_H: jax.Array,
  doc_BxL: jax.Array,
  chunk_size: int,
  *,
  impl: str | Backend = "xla",
) -> jax.Array:
  """y_BxLxHxP: the SSD scan with document resets (doc_BxL non-decreasing) plus the D skip, in x's dtype.

  x: per-head inputs; dt: step sizes (> 0); a_H: A (< 0); b, c: B and C (one group); d_H: the skip weights.
  Gradients to all of them (not to doc). The kernels accumulate in float32 whatever the input dtype."""
  batch, length, heads, _ = x_BxLxHxP.shape
  want = {"dt_BxLxH": (batch, length, heads), "a_H": (heads,), "d_H": (heads,), "doc_BxL": (batch, length)}
  given = {"dt_BxLxH": dt_BxLxH, "a_H": a_H, "d_H": d_H, "doc_BxL": doc_BxL}
  for name, shape in want.items():
    if given[name].shape != shape:
      raise ValueError(f"{name} must have shape {shape} for x_BxLxHxP {x_BxLxHxP.shape}, got {given[name].shape}")
  if b_BxLxN.shape != c_BxLxN.shape or b_BxLxN.shape[:2] != (batch, length):
    raise ValueError(f"b and c must both be {batch}x{length}xN, got {b_BxLxN.shape} and {c_BxLxN.shape}")
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
  backend = None if impl == "auto" else resolve(impl)
  if backend is None:
    y = ssd_reference.ssd(x_BxLxHxP, dt_BxLxH, a_H, b_BxLxN, c_BxLxN, d_H, doc_BxL, chunk_size)
    return y.astype(x_BxLxHxP.dtype)
  group = heads_per_program(backend, heads, x_BxLxHxP.shape[-1])
  chunk_size = kernel_chunk(backend, chunk_size)
  a_BxH, d_BxH = (jnp.broadcast_to(v[None], (batch, heads)) for v in (a_H, d_H))  # per_shard splits every arg by rows
  fn = functools.partial(_per_shard, backend, chunk_size, group)
  return per_shard(fn, x_BxLxHxP, dt_BxLxH, a_BxH, b_BxLxN, c_BxLxN, d_BxH, doc_BxL.astype(jnp.int32))


def _per_shard(backend, chunk, group, x, dt, a_BxH, b, c, d_BxH, doc):
  return _ssd(backend, chunk, group, x, dt, a_BxH[0], b, c, d_BxH[0], doc)


def _call(backend: Backend, name: str, *args, n):
  module = ssd_tpu if backend.kernels == "tpu" else ssd_gpu
  return getattr(module, name)(*args, n=n, interpret=backend.kwargs()["interpret"])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _ssd(backend, chunk, group, x, dt, a, b, c, d, doc):
  return _ssd_fwd(backend, chunk, group, x, dt, a, b, c, d, doc)[0]


def _ssd_fwd(backend, chunk, group, x, dt, a, b, c, d, doc):
  n = ssd_layout.dims(x, b, chunk, group)
  operands = ssd_layout.operands(x, dt, a, b, c, d, doc, n)
  y_BxLxI, states = _call(backend, "forward", operands, n=n)
  return ssd_layout.per_head(y_BxLxI, n, x.shape[1]), (x, dt, a, b, c, d, doc, states)


def _ssd_bwd(backend, chunk, group, res, dy_BxLxHxP):
  x, dt, a, b, c, d, doc, states = res
  n = ssd_layout.dims(x, b, chunk, group)
  operands = ssd_layout.operands(x, dt, a, b, c, d, doc, n)  # layout only: recomputed rather than kept
  length = x.shape[1]
  dy_BxLxI = jnp.pad(dy_BxLxHxP, ((0, 0), (0, n.length - length), (0, 0), (0, 0))).reshape(n.batch, n.length, -1)
  raw = _call(backend, "backward", operands, states, dy_BxLxI, n=n)
  dx, ddt, da, db, dc, dd = ssd_layout.gradients(raw, dt, a, x, dy_BxLxHxP, n)
  return dx, ddt, da, db.astype(b.dtype), dc.astype(c.dtype), dd.astype(d.dtype), None


_ssd.defvjp(_ssd_fwd, _ssd_bwd)
