"""Tile sizes of the kernels, per backend, and how a tile size is fitted to an array dimension.

Chunk ops: `block_l` positions (L axis), `block_m` chunk slots (M axis), `block_d` features (D axis), `block_scan`
chunk rows per step of the EMA scan. TPU tiles respect Mosaic's (8, 128) rule for float32 and (16, 128) for bfloat16
once fitted (`fit`): a block is either the whole dimension or the given size, so on TPU block_l must be a multiple of
128 (it is the lane axis of segment_pool's index rows) and block_m of 16. GPU tiles are powers of two (Triton), at
least 16 wherever they feed a `dot`. Interpret-mode tests use tiny tiles (8) to cross many tile edges on tiny
shapes; Mosaic would reject those.

SSD scan: `ssd_chunk` positions per kernel step (the scan's result does not depend on it, so the kernels need not
use the model's `mamba.chunk_size`; 0 = use it) and `ssd_heads` heads per TPU program. From first principles:
  TPU: Q = 128 fills the 128 x 128 MXU of v5e/v5p in every Q x Q and Q x N matmul; the backward keeps about six
       Q x Q float32 matrices live per head (0.4 MiB) beside the tiles, far inside the default scoped VMEM (16 MiB
       on v5e, 32 MiB on v5p); 2 heads of 64 channels fill the 128 lanes of x's block.
  GPU: a Triton program holds the whole chunk's Q x Q matrices in registers. At Q = 64 the forward's three
       4096-float matrices are about 96 registers per thread at 4 warps; the backward keeps about five plus six
       Q x 64 tiles, about 350 registers, past the 255 a thread has, so it spills at any Q >= 64 (Q = 32 would not,
       but halves the dots' depth). 64 is the guess to measure; a split backward (as mamba_ssm's several kernels)
       is the fix if spilling costs.
The defaults are starting points, not measurements: `chunklm bench kernels` (and `scripts/device_check.sh`) measure
them on a device.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Tiles:
  block_l: int  # positions per tile
  block_m: int  # chunk slots per tile
  block_d: int  # features per tile
  block_scan: int  # chunk rows per step of the EMA scan (TPU: rows of one in-tile log-step scan; GPU: rows per program)
  ssd_heads: int = 2  # heads per program of the TPU SSD kernels (raised until they fill 128 lanes; GPU: always 1)
  ssd_chunk: int = 0  # positions per SSD kernel step (0: the model's mamba.chunk_size)

  def __post_init__(self):
    for f in dataclasses.fields(self):
      if getattr(self, f.name) < (0 if f.name == "ssd_chunk" else 1):
        raise ValueError(f"Tiles.{f.name} must be positive, got {getattr(self, f.name)}")


TPU = Tiles(block_l=512, block_m=128, block_d=512, block_scan=64, ssd_heads=2, ssd_chunk=128)
GPU = Tiles(block_l=64, block_m=32, block_d=128, block_scan=64, ssd_chunk=64)


def fit(dim: int, block: int) -> int:
  """The block used for an axis of length `dim`: the whole axis if it fits in `block`, else `block`."""
  return min(dim, block)


def fit_lanes(dim: int, block: int) -> int:
  """A feature-axis block that divides `dim`: the whole axis if it fits in `block`, else `block` if it divides `dim`,
  else the largest multiple of 128 below `block` that does, else the whole axis."""
  if dim <= block:
    return dim
  if dim % block == 0:
    return block
  for size in range(block // 128 * 128, 0, -128):
    if dim % size == 0:
      return size
  return dim
