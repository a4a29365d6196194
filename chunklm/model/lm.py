"""The causal language model: embedding -> backbone (a layer stack or a recursive H-Net) -> RMSNorm'd output -> head.

One class serves every model kind: a byte Transformer is the layout ('T4',), a 1-stage H-Net ('m4', ('T9',), 'm4'),
a token Transformer the same stack with the tokenizer's vocabulary. Embedding and LM head are untied.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.config import AttentionImpl, Config, KernelImpl, ModelConfig
from chunklm.config.capacity import capacities
from chunklm.model.hnet import HNet
from chunklm.model.layers import Embed, Linear
from chunklm.model.plan import ChunkPlan, ChunkStates, sown_chunk_states
from chunklm.model.stack import Stack
from chunklm.model.stage_output import StageOutput


class CausalLM(nnx.Module):
  """`doc_slots` bounds the documents in one training window (chunk slots reserved for document starts);
  `kernel_impl` picks the H-Net's chunk-op and SSD backend (config `kernels.impl`), `attention_impl` the softmax
  attention's (`kernels.attention`), set here once on every stack the backbone runs."""

  def __init__(
    self,
    cfg: ModelConfig,
    *,
    rngs: nnx.Rngs,
    doc_slots: int = 1,
    kernel_impl: KernelImpl = "auto",
    attention_impl: AttentionImpl = "auto",
  ):
    self.cfg, self.doc_slots, self.kernel_impl = cfg, doc_slots, kernel_impl
    dim, dtype = cfg.d_model[0], jnp.dtype(cfg.dtype)
    self.embed = Embed(cfg.vocab_size, dim, rngs=rngs, dtype=dtype)
    self.backbone: Stack | HNet
    if cfg.num_stages == 0:
      self.backbone = Stack(cfg.layout[0], cfg, 0, rngs=rngs)
    else:
      self.backbone = HNet(cfg, 0, rngs=rngs)
    for stack in [self.backbone] if isinstance(self.backbone, Stack) else self.backbone.stacks():
      stack.set_attention_impl(attention_impl)
      stack.set_ssd_impl(kernel_impl)
    self.head = Linear(dim, (cfg.vocab_size,), ("embed", "vocab"), rngs=rngs, std=cfg.init_std, dtype=dtype)

  def __call__(
    self,
    ids_BxL: jax.Array,
    segment_ids_BxL: jax.Array,
    positions_BxL: jax.Array,
    *,
    exact: bool = False,
    train: bool = False,
    rng: jax.Array | None = None,
  ) -> tuple[jax.Array, tuple[StageOutput, ...]]:
    """Returns float32 logits_BxLxV and the H-Net's stage records, outermost first (() for a plain stack); the
    training step turns them into the ratio and router losses and the routing metrics.

    exact=True gives every H-Net stage a chunk capacity equal to its input length (no overflow), for evaluation.
    train=True (the training step) lets routers add noise from `rng` and update their running statistics.
    """
    h_BxLxD, stages = self.hidden(ids_BxL, segment_ids_BxL, positions_BxL, exact=exact, train=train, rng=rng)
    return self.head(h_BxLxD).astype(jnp.float32), stages

  def plan(self, length: int, *, exact: bool = False, train: bool = False, sow: bool = False) -> ChunkPlan:
    """The H-Net's chunking plan for windows of `length` positions: training capacities for this model's doc_slots
    (config.capacities), its chunk-op backend; `exact`, `train` and `sow` as in ChunkPlan."""
    return ChunkPlan(
      capacities(self.cfg, length, self.doc_slots),
      self.doc_slots,
      exact=exact,
      train=train,
      kernel_impl=self.kernel_impl,
      sow=sow,
    )

  def hidden(
    self,
    ids_BxL: jax.Array,
    segment_ids_BxL: jax.Array,
    positions_BxL: jax.Array,
    *,
    exact: bool = False,
    train: bool = False,
    rng: jax.Array | None = None,
    sow: bool = False,
  ) -> tuple[jax.Array, tuple[StageOutput, ...]]:
    """The last hidden states h_BxLxD (before the output head) and the stage records, as `__call__`; sow=True has
    each H-Net stage sow its ChunkStates (use `hidden_and_chunk_states`, which captures them)."""
    x_BxLxD = self.embed(ids_BxL)
    if isinstance(self.backbone, Stack):  # num_stages == 0
      return self.backbone(x_BxLxD, segment_ids_BxL, positions_BxL), ()
    plan = self.plan(ids_BxL.shape[1], exact=exact, train=train, sow=sow)
    return self.backbone(x_BxLxD, segment_ids_BxL, segment_ids_BxL > 0, plan, ids_BxL=ids_BxL, rng=rng)


def hidden_and_chunk_states(
  model: CausalLM, ids_BxL: jax.Array, segment_ids_BxL: jax.Array, positions_BxL: jax.Array
) -> tuple[jax.Array, tuple[StageOutput, ...], tuple[ChunkStates, ...]]:
  """`model.hidden` (training capacities, no router noise) and each H-Net stage's ChunkStates, outermost first
  (() for a plain stack): the stages sow them as nnx.Intermediate and nnx.capture gathers them, leaving the model
  holding nothing new."""
  (h_BxLxD, stages), sown = nnx.capture(CausalLM.hidden, nnx.Intermediate)(
    model, ids_BxL, segment_ids_BxL, positions_BxL, sow=True
  )
  return h_BxLxD, stages, sown_chunk_states(sown)


def build_model(cfg: Config, seed: int | None = None) -> CausalLM:
  seed = cfg.train.seed if seed is None else seed
  return CausalLM(
    cfg.model,
    rngs=nnx.Rngs(params=seed),
    doc_slots=cfg.data.doc_slots,
    kernel_impl=cfg.kernels.impl,
    attention_impl=cfg.kernels.attention,
  )


def count_params(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
