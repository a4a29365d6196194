"""What one call of an H-Net fixes before tracing: how its windows are chunked, as one small frozen record.

A `ChunkPlan` holds everything per call and static (Python values, not arrays): each stage's chunk capacity M_s
(config.capacity: slots sized for windows of one length), the document slots K every stage keeps for document starts,
whether every stage instead takes its input length as capacity (`exact`: evaluation, which can never overflow),
whether routers run in training mode (noise from the call's rng, running statistics), the chunk-op backend
(`kernels.api.IMPLS`) and whether each stage sows its chunk states for `nnx.capture` (`ChunkStates`). A stage reads
its own capacity and hands `inner()` (the capacities of the deeper stages) to its main network.

The plan is frozen and hashable, so it may be a static argument of jax.jit; equal plans trace the same computation.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx, struct

from chunklm.config import KernelImpl

SOW_NAME = "chunk_states"  # the nnx.Intermediate each stage sows under when plan.sow


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
  capacities: tuple[int, ...]  # M_s of this stage and the deeper ones, outermost first (unused when exact)
  doc_slots: int = 1  # K: chunk slots kept for document starts (the packer bounds a window's documents by K)
  exact: bool = False  # every stage's capacity = its input length (evaluation)
  train: bool = False  # routers add noise and update their running statistics
  kernel_impl: KernelImpl = "auto"  # chunk-op backend of every stage
  sow: bool = False  # each stage sows its ChunkStates (nnx.Intermediate SOW_NAME)

  def capacity(self, length: int) -> int:
    """M of this stage for an input of `length` positions."""
    return length if self.exact else self.capacities[0]

  def inner(self) -> ChunkPlan:
    """The plan of this stage's main network: the same, less this stage's capacity."""
    return dataclasses.replace(self, capacities=self.capacities[1:])


@struct.dataclass
class ChunkStates:
  """One stage's main-network output over its chunks (cut to the stage's width, before dechunking) and which chunk
  slots hold a chunk: the chunk states a classifier pools (chunklm classify)."""

  main_BxMxD: jax.Array
  valid_BxM: jax.Array


def sown_chunk_states(sown: nnx.State) -> tuple[ChunkStates, ...]:
  """The ChunkStates in `nnx.capture`'s Intermediate state, outermost stage first (each stage's module path is one
  `main` longer than its parent's)."""
  flat = sorted(((path, v) for path, v in nnx.to_flat_state(sown) if path[-1] == SOW_NAME), key=lambda pv: len(pv[0]))
  return tuple(v.get_value()[0] for _, v in flat)
