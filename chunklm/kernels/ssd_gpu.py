"""Pallas GPU (Triton) kernels of the Mamba2 SSD scan, forward and backward (operands: `ssd_layout.py`, one head per
block, G = 1).

Grid (B, H): a program walks its head's chunks in order (forward) or in reverse (backward) with a `fori_loop`,
keeping the P x N state in registers, loading each chunk's tiles straight from global memory and writing y (and the
entering states, the backward's residual). The chunk's arithmetic is `ssd_chunk.py`: its matmuls become Triton dots
on the tensor cores (float32 accumulation), so Q, P and N must be powers of two of at least 16 (checked).

Parallelism is B x H programs (the S model's Mamba2 layers at batch 8: 8 x 16 = 128 programs, under one wave of an
H100's 132 SMs), and one program holds a whole chunk's Q x Q matrices, so it steps by its own tile (`ssd_chunk`, 64;
the backward still keeps about five of them and will spill: see tuning.py). The official
Mamba2 (mamba_ssm) splits the chunk into sub-tiles and the scan into several kernels for that reason; this kernel is
the simple form, correct and lowering for CUDA, whose speed has not been measured (no GPU was lent when it was
written), so `kernels.impl=auto` keeps the XLA SSD on GPUs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from chunklm.kernels import ssd_chunk
from chunklm.kernels.ssd_layout import Dims, backward_shapes, cost, forward_shapes

F32 = jnp.float32
ANY = pl.BlockSpec(memory_space=pl.ANY)


def check(n: Dims) -> None:
  """Triton's dots need power-of-two tiles of at least 16 in every dimension."""
  for name, v in (("chunk_size", n.chunk), ("head_dim", n.head_dim), ("d_state", n.state)):
    if v < 16 or v & (v - 1):
      raise ValueError(f"the GPU SSD kernel needs {name} a power of two >= 16, got {v}; use kernels.impl=xla")
  if n.group != 1:
    raise ValueError(f"the GPU SSD kernel runs one head per program (group 1), got {n.group}")


def _tiles(refs, b, h, c, n: Dims):
  """Chunk c of head h of row b: (x, dt, doc, b, c, a, d, prev) as float32 tiles."""
  x_ref, dt_ref, doc_ref, prev_ref, b_ref, c_ref, a_ref, d_ref = refs
  rows = pl.ds(c * n.chunk, n.chunk)
  one = pl.ds(0, 1)
  return (
    plgpu.load(x_ref.at[b, rows, pl.ds(h * n.head_dim, n.head_dim)]).astype(F32),
    plgpu.load(dt_ref.at[b, h, one, rows]).astype(F32),
    plgpu.load(doc_ref.at[b, one, rows]),
    plgpu.load(b_ref.at[b, rows, pl.ds(0, n.state)]).astype(F32),
    plgpu.load(c_ref.at[b, rows, pl.ds(0, n.state)]).astype(F32),
    plgpu.load(a_ref.at[h, one, one]),
    plgpu.load(d_ref.at[h, one, one]),
    plgpu.load(prev_ref.at[b, c, one, one]),
  )


def _fwd_kernel(*refs, n: Dims):
  ins, (y_ref, states_ref) = refs[:8], refs[8:]
  b, h = pl.program_id(0), pl.program_id(1)
  cols = pl.ds(h * n.head_dim, n.head_dim)

  def body(c, carry_PxN):
    x, dt, doc, bq, cq, a, d, prev = _tiles(ins, b, h, c, n)
    y_QxP, carry_out = ssd_chunk.forward(x, dt, doc, bq, cq, a, d, prev, carry_PxN)
    plgpu.store(y_ref.at[b, pl.ds(c * n.chunk, n.chunk), cols], y_QxP.astype(y_ref.dtype))
    plgpu.store(states_ref.at[b, c, h, pl.ds(0, n.head_dim), pl.ds(0, n.state)], carry_PxN)
    return carry_out

  jax.lax.fori_loop(0, n.chunks, body, jnp.zeros((n.head_dim, n.state), F32))


def _bwd_kernel(*refs, n: Dims):
  ins, (states_ref, dy_ref), (dx_ref, ddt_ref, da_ref, db_ref, dc_ref) = refs[:8], refs[8:10], refs[10:]
  b, h = pl.program_id(0), pl.program_id(1)
  cols, state = pl.ds(h * n.head_dim, n.head_dim), (pl.ds(0, n.head_dim), pl.ds(0, n.state))

  def body(i, g_PxN):
    c = n.chunks - 1 - i
    rows = pl.ds(c * n.chunk, n.chunk)
    carry_PxN = plgpu.load(states_ref.at[b, c, h, *state])
    dy_QxP = plgpu.load(dy_ref.at[b, rows, cols]).astype(F32)
    x, dt, doc, bq, cq, a, d, prev = _tiles(ins, b, h, c, n)
    dx, ddt, da, db, dc, dcarry = ssd_chunk.backward(x, dt, doc, bq, cq, a, d, prev, carry_PxN, dy_QxP, g_PxN)
    plgpu.store(dx_ref.at[b, rows, cols], dx.astype(dx_ref.dtype))
    plgpu.store(ddt_ref.at[b, h, pl.ds(0, 1), rows], ddt)
    plgpu.store(da_ref.at[b, h, pl.ds(0, 1), rows], da)
    plgpu.store(db_ref.at[b, h, rows, pl.ds(0, n.state)], db)
    plgpu.store(dc_ref.at[b, h, rows, pl.ds(0, n.state)], dc)
    return dcarry

  jax.lax.fori_loop(0, n.chunks, body, jnp.zeros((n.head_dim, n.state), F32))


def _params():
  return plgpu.CompilerParams(num_warps=4, num_stages=1)


@functools.partial(jax.jit, static_argnames=("n", "interpret"))
def forward(operands: tuple[jax.Array, ...], *, n: Dims, interpret=False) -> tuple[jax.Array, jax.Array]:
  """(y_BxLxI, states_BxCxHxPxN), as `ssd_tpu.forward`."""
  check(n)
  return pl.pallas_call(
    functools.partial(_fwd_kernel, n=n),
    out_shape=forward_shapes(operands[0], n),
    grid=(n.batch, n.heads),
    in_specs=[ANY] * 8,
    out_specs=(ANY, ANY),
    compiler_params=_params(),
    cost_estimate=cost(n, operands, backward=False),
    interpret=interpret,
    name="ssd_fwd",
  )(*operands)


@functools.partial(jax.jit, static_argnames=("n", "interpret"))
def backward(
  operands: tuple[jax.Array, ...], states_BxCxHxPxN: jax.Array, dy_BxLxI: jax.Array, *, n: Dims, interpret=False
) -> tuple[jax.Array, ...]:
  """Raw cotangents, as `ssd_tpu.backward`."""
  check(n)
  return pl.pallas_call(
    functools.partial(_bwd_kernel, n=n),
    out_shape=backward_shapes(operands[0], n, bc_blocks=n.heads),
    grid=(n.batch, n.heads),
    in_specs=[ANY] * 10,
    out_specs=(ANY,) * 5,
    compiler_params=_params(),
    cost_estimate=cost(n, (*operands, states_BxCxHxPxN, dy_BxLxI), backward=True),
    interpret=interpret,
    name="ssd_bwd",
  )(*operands, states_BxCxHxPxN, dy_BxLxI)
