"""Pallas TPU (Mosaic) kernels of the Mamba2 SSD scan, forward and backward (operands: `ssd_layout.py`).

Grid (B, C chunks, K head blocks): rows 'parallel'; chunks in order (forward) or in reverse (backward), and inside a
chunk the head blocks, both 'arbitrary'. A program holds one chunk of G heads: x, B, C and dt tiles in VMEM, the
Q x Q decay and C B^T matrices of one head at a time, and every head's state carried between chunks in a VMEM scratch
(H x P x N float32: 1 MiB for 32 heads of 64 x 128), so the scan is one pass over the sequence with nothing but y
(and the entering states, the backward's residual) written out. With the head blocks innermost, a chunk's B and C
stay in VMEM across them (read once) and the backward sums their cotangents over all heads in place (one B x L x N
output each, not one per head block).
The chunk's arithmetic is `ssd_chunk.py`; matmuls run on the MXU in float32.

VMEM per program (an estimate, in float32 words): about 3 Q^2 per head at a time (decay, C B^T, their product; the
backward about 6 Q^2) plus double-buffered tiles of Q (G P + 2 N) words (with dy and dx backward) and the G P N
state: for the default Q = 128 with G = 2, P = 64, N = 128 about 1 MiB forward and 2 MiB backward (Q = 256: about 3
and 5 MiB), inside every TPU's default scoped VMEM (16 MiB on v5e, 32 MiB on v5p).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from chunklm.kernels import ssd_chunk
from chunklm.kernels.ssd_layout import Dims, backward_shapes, cost, forward_shapes

F32 = jnp.float32


def _tiles(refs, j: int, p: int):
  """Head j's tiles (x, dt, doc, b, c, a, d, prev) of one program, as float32."""
  x_ref, dt_ref, doc_ref, prev_ref, b_ref, c_ref, a_ref, d_ref = refs
  return (
    x_ref[0, :, j * p : (j + 1) * p].astype(F32),
    dt_ref[0, 0, j : j + 1, :].astype(F32),
    doc_ref[0],
    b_ref[0].astype(F32),
    c_ref[0].astype(F32),
    a_ref[0, :, j : j + 1],
    d_ref[0, :, j : j + 1],
    prev_ref[0, 0],
  )


def _fwd_kernel(*refs, group: int, p: int):
  ins, (y_ref, states_ref, carry_ref) = refs[:8], refs[8:]
  k = pl.program_id(2)

  @pl.when(pl.program_id(1) == 0)
  def _init():
    carry_ref[k] = jnp.zeros(carry_ref.shape[1:], F32)

  for j in range(group):
    x, dt, doc, b, c, a, d, prev = _tiles(ins, j, p)
    carry = carry_ref[k, j]
    y, carry_out = ssd_chunk.forward(x, dt, doc, b, c, a, d, prev, carry)
    y_ref[0, :, j * p : (j + 1) * p] = y.astype(y_ref.dtype)
    states_ref[0, 0, j] = carry
    carry_ref[k, j] = carry_out


def _bwd_kernel(*refs, group: int, p: int):
  ins, (states_ref, dy_ref), outs = refs[:8], refs[8:10], refs[10:]
  dx_ref, ddt_ref, da_ref, db_ref, dc_ref, g_ref = outs
  k = pl.program_id(2)

  @pl.when(pl.program_id(1) == 0)
  def _init():
    g_ref[k] = jnp.zeros(g_ref.shape[1:], F32)

  @pl.when(k == 0)  # the chunk's B and C cotangents are summed over every head block, in place
  def _zero():
    db_ref[...] = jnp.zeros_like(db_ref)
    dc_ref[...] = jnp.zeros_like(dc_ref)

  for j in range(group):
    x, dt, doc, b, c, a, d, prev = _tiles(ins, j, p)
    dy = dy_ref[0, :, j * p : (j + 1) * p].astype(F32)
    dx, ddt, da, db, dc, dcarry = ssd_chunk.backward(x, dt, doc, b, c, a, d, prev, states_ref[0, 0, j], dy, g_ref[k, j])
    dx_ref[0, :, j * p : (j + 1) * p] = dx.astype(dx_ref.dtype)
    ddt_ref[0, 0, j : j + 1, :] = ddt
    da_ref[0, 0, j : j + 1, :] = da
    db_ref[0, 0] += db
    dc_ref[0, 0] += dc
    g_ref[k, j] = dcarry


def _specs(n: Dims, reverse: bool):
  """BlockSpecs of the eight operands, the states and the B/C cotangents, for grid (b, i, k): chunk i (C - 1 - i in
  reverse), head block k innermost, so B and C are read once per chunk and their cotangents summed in place."""
  q, g, p = n.chunk, n.group, n.head_dim
  ch = (lambda i: n.chunks - 1 - i) if reverse else (lambda i: i)
  rows = lambda width: pl.BlockSpec((1, q, width), lambda b, i, k: (b, ch(i), 0))  # noqa: E731
  x_spec = pl.BlockSpec((1, q, g * p), lambda b, i, k: (b, ch(i), k))
  per_block = pl.BlockSpec((1, 1, g, q), lambda b, i, k: (b, k, 0, ch(i)))
  doc = pl.BlockSpec((1, 1, q), lambda b, i, k: (b, 0, ch(i)))
  heads = pl.BlockSpec((1, 1, g), lambda b, i, k: (k, 0, 0))
  prev = pl.BlockSpec((1, 1, 1, 1), lambda b, i, k: (b, ch(i), 0, 0))
  states = pl.BlockSpec((1, 1, g, p, n.state), lambda b, i, k: (b, ch(i), k, 0, 0))
  summed_n = pl.BlockSpec((1, 1, q, n.state), lambda b, i, k: (b, 0, ch(i), 0))
  return x_spec, per_block, doc, prev, rows(n.state), rows(n.state), heads, heads, states, summed_n


def check(n: Dims, interpret) -> None:
  """Mosaic's block rule for the position rows (dt, doc, their cotangents): Q a multiple of 128 or the whole L."""
  if not interpret and n.chunk % 128 and n.chunk != n.length:
    raise ValueError(
      f"the TPU SSD kernel steps by a multiple of 128 positions (Tiles.ssd_chunk; the default is 128), got {n.chunk}"
    )


# Only rows are independent: chunks carry the state, and head blocks add into one B/C cotangent per chunk.
_PARAMS = pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary", "arbitrary"))


@functools.partial(jax.jit, static_argnames=("n", "interpret"))
def forward(operands: tuple[jax.Array, ...], *, n: Dims, interpret=False) -> tuple[jax.Array, jax.Array]:
  """(y_BxLxI, states_BxCxHxPxN): the outputs and the state entering each chunk (the backward's residual)."""
  check(n, interpret)
  x_spec, *_, states_spec, _ = _specs(n, reverse=False)
  return pl.pallas_call(
    functools.partial(_fwd_kernel, group=n.group, p=n.head_dim),
    out_shape=forward_shapes(operands[0], n),
    grid=(n.batch, n.chunks, n.blocks),
    in_specs=list(_specs(n, reverse=False)[:8]),
    out_specs=(x_spec, states_spec),
    scratch_shapes=[pltpu.VMEM((n.blocks, n.group, n.head_dim, n.state), F32)],
    compiler_params=_PARAMS,
    cost_estimate=cost(n, operands, backward=False),
    interpret=interpret,
    name="ssd_fwd",
  )(*operands)


@functools.partial(jax.jit, static_argnames=("n", "interpret"))
def backward(
  operands: tuple[jax.Array, ...], states_BxCxHxPxN: jax.Array, dy_BxLxI: jax.Array, *, n: Dims, interpret=False
) -> tuple[jax.Array, ...]:
  """Raw cotangents (dx_BxLxI, ddtx_BxKxGxL, da_BxKxGxL, db_Bx1xLxN, dc_Bx1xLxN); `ssd_layout.gradients` finishes."""
  check(n, interpret)
  specs = _specs(n, reverse=True)
  x_spec, per_block, summed_n = specs[0], specs[1], specs[9]
  return pl.pallas_call(
    functools.partial(_bwd_kernel, group=n.group, p=n.head_dim),
    out_shape=backward_shapes(operands[0], n, bc_blocks=1),
    grid=(n.batch, n.chunks, n.blocks),
    in_specs=[*specs[:8], specs[8], x_spec],
    out_specs=(x_spec, per_block, per_block, summed_n, summed_n),
    scratch_shapes=[pltpu.VMEM((n.blocks, n.group, n.head_dim, n.state), F32)],
    compiler_params=_PARAMS,
    cost_estimate=cost(n, (*operands, states_BxCxHxPxN, dy_BxLxI), backward=True),
    interpret=interpret,
    name="ssd_bwd",
  )(*operands, states_BxCxHxPxN, dy_BxLxI)
