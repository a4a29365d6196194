"""What one H-Net stage reports besides its output: routing decisions, exact counts and its losses, as a typed record.

Per stage s (over the stage's own positions: bytes at s = 0, stage-(s-1) chunks deeper):
  F_s = boundaries / positions (the router's own decisions, before overflow), G_s = p_sum / positions (mean p);
  ratio loss L_s = N/(N-1) ((N-1) F G + (1-F)(1-G)) with the stage's target N (chunking.ratio_loss; under a ratio
  curriculum the training step passes the N of its step, train/step.py's ratio_targets), for routers
  with a learnable p only (for the others it would have no gradient; it reads as 0); with model.ratio_loss hinge
  only while F > 1/N (compressing more than N is free: a one-sided bound, the idea of FLEXITOKENS);
  uncertainty U_s = mean 4 p (1 - p) over valid positions (1 when every p is 0.5, 0 when all are 0 or 1);
  router_aux: the predictor's own loss (0 for the H-Net router).
The training step assembles loss = NLL + ratio_loss_weight * sum_s L_s + confidence_loss_weight * sum_s U_s
+ sum_s router_aux_s from these records (the U_s term for learnable-p routers only).

Counts are sums (not means) so batches add up exactly. On disk (metrics.jsonl, eval outputs) they keep their string
names '<name>_s<stage>_sum'; `counts` writes them and `routing_metrics` turns (summed) counts into readable figures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from chunklm.model import chunking
from chunklm.model.routing import Routing

COUNTS = ("positions", "boundaries", "kept", "p_sum")  # the summable fields of StageOutput


@struct.dataclass
class StageOutput:
  boundaries_BxL: jax.Array  # router decisions (bool) over this stage's positions
  probs_BxL: jax.Array  # boundary probabilities p (float32) over this stage's positions
  chunk_positions_BxM: jax.Array  # position (of this stage) where each kept chunk starts
  positions: jax.Array  # valid positions (float32 count)
  boundaries: jax.Array  # boundaries the router chose among them
  kept: jax.Array  # chunks kept (boundaries minus overflow)
  p_sum: jax.Array  # summed p over valid positions
  router_aux: jax.Array  # the router's own loss (scalar)
  uncertainty: jax.Array  # mean 4 p (1 - p) over valid positions (scalar)
  learnable_p: bool = struct.field(pytree_node=False)  # the ratio loss applies
  target_ratio: float = struct.field(pytree_node=False)  # N
  ratio_loss_kind: str = struct.field(pytree_node=False, default="hnet")  # hnet | hinge (RATIO_LOSSES)

  def ratio_loss(self, target=None) -> jax.Array:
    """The unweighted ratio loss L_s (0 when the router has no learnable p; under hinge, 0 while F <= 1/N) toward
    `target` N (a float or a traced scalar: a ratio curriculum's target at this step), default target_ratio."""
    if not self.learnable_p:
      return jnp.zeros((), jnp.float32)
    n = self.target_ratio if target is None else target
    f = self.boundaries / jnp.maximum(self.positions, 1.0)
    g = self.p_sum / jnp.maximum(self.positions, 1.0)
    loss = chunking.ratio_loss(f, g, n)
    if self.ratio_loss_kind == "hinge":
      loss = jnp.where(f > 1.0 / n, loss, 0.0)
    return loss


def stage_output(
  routing: Routing,
  chunks: chunking.Chunks,
  valid_BxL: jax.Array,
  *,
  learnable_p: bool,
  target_ratio: float,
  ratio_loss_kind: str = "hnet",
) -> StageOutput:
  v = valid_BxL.astype(jnp.float32)
  p_BxL = routing.p_BxL.astype(jnp.float32)
  return StageOutput(
    boundaries_BxL=routing.b_BxL,
    probs_BxL=routing.p_BxL,
    chunk_positions_BxM=chunks.positions_BxM,
    positions=v.sum(),
    boundaries=(routing.b_BxL.astype(jnp.float32) * v).sum(),
    kept=chunks.valid_BxM.astype(jnp.float32).sum(),
    p_sum=(routing.p_BxL * v).sum(),
    router_aux=routing.aux_loss,
    uncertainty=(4.0 * p_BxL * (1.0 - p_BxL) * v).sum() / jnp.maximum(v.sum(), 1.0),
    learnable_p=learnable_p,
    target_ratio=target_ratio,
    ratio_loss_kind=ratio_loss_kind,
  )


def counts(stages: tuple[StageOutput, ...]) -> dict[str, jax.Array]:
  """The summable counts of every stage (outermost first) by their on-disk names '<name>_s<stage>_sum'."""
  return {f"{name}_s{s}_sum": getattr(st, name) for s, st in enumerate(stages) for name in COUNTS}


def routing_metrics(sums: dict, num_stages: int) -> dict[str, jax.Array]:
  """Readable per-stage figures from (summed) `counts` (level-0 positions = bytes).

  bytes_per_chunk_s{s}: bytes per boundary chosen by stage s (the paper's 1/F, compounded over stages);
  bytes_per_position_l{s+1}: bytes per position the next level actually runs on (after overflow);
  overflow_s{s}: fraction of stage s's boundaries dropped for lack of capacity; mean_p_s{s}: G;
  reduction_s{s}: sequence reduction of stage s, 1 - kept chunks / its positions (MrT5's deletion rate).
  """
  n_bytes = jnp.maximum(sums["positions_s0_sum"], 1.0)
  out = {}
  for s in range(num_stages):
    boundaries = jnp.maximum(sums[f"boundaries_s{s}_sum"], 1.0)
    out[f"bytes_per_chunk_s{s}"] = n_bytes / boundaries
    out[f"bytes_per_position_l{s + 1}"] = n_bytes / jnp.maximum(sums[f"kept_s{s}_sum"], 1.0)
    out[f"overflow_s{s}"] = 1.0 - sums[f"kept_s{s}_sum"] / boundaries
    out[f"mean_p_s{s}"] = sums[f"p_sum_s{s}_sum"] / jnp.maximum(sums[f"positions_s{s}_sum"], 1.0)
    out[f"reduction_s{s}"] = 1.0 - sums[f"kept_s{s}_sum"] / jnp.maximum(sums[f"positions_s{s}_sum"], 1.0)
  return out


def stage_metrics(stages: tuple[StageOutput, ...], targets: tuple | None = None) -> dict[str, jax.Array]:
  """Scalar metrics of one batch: each stage's unweighted ratio loss (toward `targets`, default each stage's
  target_ratio) and router loss, then routing_metrics (none for a plain stack)."""
  out = {}
  for s, st in enumerate(stages):
    out[f"ratio_loss_s{s}"] = st.ratio_loss(None if targets is None else targets[s])
    out[f"router_aux_s{s}"] = st.router_aux
    out[f"uncertainty_s{s}"] = st.uncertainty
  if stages:
    out.update(routing_metrics(counts(stages), len(stages)))
  return out
