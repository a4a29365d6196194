"""The SSD kernels' operand layout, shared by the TPU and GPU families, built in plain JAX outside the kernels.

Every per-chunk tile a kernel reads is a block whose last two dimensions are either whole array dimensions or
multiples of Mosaic's (8, 128) tile, so the TPU kernels need no relayout and the Triton kernels load them as 2-D
blocks. With L padded to a multiple of the chunk Q (padded positions form a document of their own, after every real
one, so they reach no real output), C = L / Q chunks, K = H / G head blocks of G heads:
  x_BxLxI          x as it comes (I = H P: a reshape, no copy); head h of a block is the lane slice [hP, (h+1)P)
  dt_BxKxGxL       dt per head block, positions last (a small transpose)
  doc_Bx1xL        the document index as float32 (exact below 2^24)
  prev_BxCx1x1     the document of the previous chunk's last position (-1 before the first chunk)
  b_BxLxN, c_BxLxN B and C, shared by the heads
  a_Kx1xG, d_Kx1xG A_h and D_h per head block
Per-position scalars keep positions in the minor dimension: a TPU lays the minor dimension out in 128 lanes, so a
B x L x 1 column would take 128x its bytes in HBM. Backward outputs come per head block (dt's and A's cotangents as
BxKxGxL) and B's and C's as J partial sums
(BxJxLxN: J = 1 on TPU, whose kernel sums over every head; J = H on GPU, one per program), summed here (`gradients`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


@dataclasses.dataclass(frozen=True)
class Dims:
  batch: int
  length: int  # padded to a multiple of chunk
  heads: int
  head_dim: int
  state: int
  chunk: int
  group: int  # heads per kernel program (G)

  @property
  def chunks(self) -> int:
    return self.length // self.chunk

  @property
  def blocks(self) -> int:
    return self.heads // self.group


def dims(x_BxLxHxP: jax.Array, b_BxLxN: jax.Array, chunk: int, group: int) -> Dims:
  batch, length, heads, head_dim = x_BxLxHxP.shape
  if heads % group:
    raise ValueError(f"heads per SSD program ({group}) must divide the number of heads ({heads})")
  padded = length + (-length % chunk)
  return Dims(batch, padded, heads, head_dim, b_BxLxN.shape[-1], chunk, group)


def flops(n: Dims, backward: bool) -> int:
  """FLOPs of the chunked scan: C B^T and M xdt per position (2 Q (N + P)), the state in and out (4 P N); the
  backward about 3x the forward."""
  per_position = 2 * n.chunk * (n.state + n.head_dim) + 4 * n.head_dim * n.state
  return (3 if backward else 1) * n.batch * n.length * n.heads * per_position


def cost(n: Dims, operands, backward: bool) -> pl.CostEstimate:
  """What a SSD kernel call costs: `flops`; one exp per decay entry; every operand read (the backward's include the
  saved states and dy), and the outputs written: y and the entering states forward, about twice the operands
  backward."""
  read = sum(v.nbytes for v in operands)
  states = 4 * n.batch * n.chunks * n.heads * n.head_dim * n.state
  written = 2 * read if backward else operands[0].nbytes + states
  transcendentals = n.batch * n.length * n.heads * n.chunk
  return pl.CostEstimate(flops=flops(n, backward), transcendentals=transcendentals, bytes_accessed=read + written)


def forward_shapes(x_BxLxI: jax.Array, n: Dims) -> tuple[jax.ShapeDtypeStruct, ...]:
  """A forward kernel's outputs: y_BxLxI (x's dtype) and the state entering each chunk, states_BxCxHxPxN (float32)."""
  states = jax.ShapeDtypeStruct((n.batch, n.chunks, n.heads, n.head_dim, n.state), jnp.float32)
  return jax.ShapeDtypeStruct(x_BxLxI.shape, x_BxLxI.dtype), states


def backward_shapes(x_BxLxI: jax.Array, n: Dims, bc_blocks: int) -> tuple[jax.ShapeDtypeStruct, ...]:
  """A backward kernel's raw outputs (dx_BxLxI, ddtx_BxKxGxL, da_BxKxGxL, db_BxJxLxN, dc_BxJxLxN), see `gradients`;
  J = `bc_blocks` partial sums of B's and C's cotangents (1 where the kernel sums over the heads itself)."""
  row = jax.ShapeDtypeStruct((n.batch, n.blocks, n.group, n.length), jnp.float32)
  by_block = jax.ShapeDtypeStruct((n.batch, bc_blocks, n.length, n.state), jnp.float32)
  return jax.ShapeDtypeStruct(x_BxLxI.shape, x_BxLxI.dtype), row, row, by_block, by_block


def _pad(v: jax.Array, length: int) -> jax.Array:
  return jnp.pad(v, ((0, 0), (0, length - v.shape[1])) + ((0, 0),) * (v.ndim - 2))


def operands(x_BxLxHxP, dt_BxLxH, a_H, b_BxLxN, c_BxLxN, d_H, doc_BxL, n: Dims) -> tuple[jax.Array, ...]:
  """(x_BxLxI, dt_BxKxGxL, doc_Bx1xL, prev_BxCx1x1, b_BxLxN, c_BxLxN, a_Kx1xG, d_Kx1xG), L padded."""
  length = x_BxLxHxP.shape[1]
  tail = (jnp.arange(n.length) >= length)[None, :]
  doc_BxL = _pad(doc_BxL, n.length)
  doc_BxL = jnp.where(tail, doc_BxL[:, length - 1 : length] + 1, doc_BxL).astype(jnp.float32)
  x_BxLxI = _pad(x_BxLxHxP, n.length).reshape(n.batch, n.length, n.heads * n.head_dim)
  dt_BxKxGxL = _pad(dt_BxLxH, n.length).reshape(n.batch, n.length, n.blocks, n.group).transpose(0, 2, 3, 1)
  ends_BxC = doc_BxL[:, n.chunk - 1 :: n.chunk]
  prev_BxC = jnp.concatenate([jnp.full((n.batch, 1), -1.0, jnp.float32), ends_BxC[:, :-1]], axis=1)
  heads = lambda v: v.astype(jnp.float32).reshape(n.blocks, 1, n.group)  # noqa: E731
  return (
    x_BxLxI,
    dt_BxKxGxL,
    doc_BxL[:, None, :],
    prev_BxC[..., None, None],
    _pad(b_BxLxN, n.length),
    _pad(c_BxLxN, n.length),
    heads(a_H),
    heads(d_H),
  )


def per_head(v_BxLxI: jax.Array, n: Dims, length: int) -> jax.Array:
  """A kernel's x-shaped output back to B x L x H x P, without the padding."""
  return v_BxLxI.reshape(n.batch, n.length, n.heads, n.head_dim)[:, :length]


def gradients(raw: tuple[jax.Array, ...], dt_BxLxH, a_H, x_BxLxHxP, dy_BxLxHxP, n: Dims):
  """The SSD op's cotangents (dx, ddt, da, db, dc, dd) from a backward kernel's raw outputs
  (dx_BxLxI, ddtx_BxKxGxL, da_BxKxGxL, db_BxJxLxN, dc_BxJxLxN): dt's through x dt and through a = dt A."""
  dx_BxLxI, ddtx_BxKxGxL, da_BxKxGxL, db_BxJxLxN, dc_BxJxLxN = raw
  length = x_BxLxHxP.shape[1]

  def heads_last(v_BxKxGxL):
    return v_BxKxGxL.transpose(0, 3, 1, 2).reshape(n.batch, n.length, n.heads)[:, :length]

  da_BxLxH = heads_last(da_BxKxGxL)
  dt_f32 = dt_BxLxH.astype(jnp.float32)
  ddt_BxLxH = heads_last(ddtx_BxKxGxL) + a_H.astype(jnp.float32)[None, None, :] * da_BxLxH
  dx_BxLxHxP = per_head(dx_BxLxI, n, length)
  dd_H = jnp.einsum("blhp,blhp->h", dy_BxLxHxP.astype(jnp.float32), x_BxLxHxP.astype(jnp.float32))
  return (
    dx_BxLxHxP.astype(x_BxLxHxP.dtype),
    ddt_BxLxH.astype(dt_BxLxH.dtype),
    jnp.einsum("blh,blh->h", dt_f32, da_BxLxH).astype(a_H.dtype),
    db_BxJxLxN.sum(axis=1)[:, :length],
    dc_BxJxLxN.sum(axis=1)[:, :length],
    dd_H,
  )
