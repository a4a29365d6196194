"""The recursive H-Net backbone (Hwang, Wang & Gu 2025): encoder -> route -> chunk -> main -> dechunk -> decoder.

The main network of a stage is a plain layer stack (innermost) or another H-Net, as the nested layout says:
('m4', ('T22',), 'm4') is 1-stage, ('m4', ('T1m4', ('T27',), 'm4T1'), 'm4') 2-stage. A wider inner level gets a
shared learned vector (zero-initialised) appended to each chunk vector on the way in and is cut back to the outer
width on the way out; there are no projections between levels. The decoder input is
y_t = dechunk(main(chunk(x_hat)))_t * STE(c_t) + W_res x_hat_t, summed in float32 with W_res zero-initialised.
Precision: the chunk ops move rows in the compute dtype (`model.dtype`): x_hat is rounded to it before chunking, the
main network's output before dechunking, and the EMA (float32 inside the kernels) returns its average in it, so in a
bfloat16 model the B x L x D upsample result and the B x M x D chunk tensors are half the bytes of float32 (the
official H-Net's dechunk output is bfloat16 too). What stays float32 and why: each stack's residual stream and the
W_res x_hat path (sums of many small updates), the EMA's running average (a recurrence over hundreds of chunks), the
boundary probabilities and the confidence STE (the ratio loss and router gradients).
Attention positions count within each level's own (compressed) sequence.

Pooling (`model.pooling` per stage): `select` (H-Net) takes the encoder state at each chunk's first byte, which is
causal for every byte of the chunk. `mean` averages the chunk's encoder states (kernels.api.segment_pool); that mean
contains bytes after t, so to stay causal the bytes of chunk c read the main network's output of chunk c - 1, and
the first chunk of each document a learned "null" vector (dynamic pooling, Nawrot et al. 2023).
A router may return an attention key bias (the MrT5 delete gate): it is gathered at the chunks and added to the
key logits of every attention layer of the main stack (Mamba layers cannot take one; a nested H-Net ignores it).
The innermost main network (`MainStack`) takes the arguments of a nested H-Net and reports no stages, so a stage never
asks what its main network is. What a call fixes before tracing (capacities, document slots, exact, train, chunk-op
backend) comes as one frozen `ChunkPlan` (model/plan.py); each stage takes its capacity and hands the rest inward.
Each stage returns a `StageOutput` record; the training step assembles the loss. Its chunk states (`ChunkStates`) are
sown as nnx.Intermediate when the plan asks (lm.hidden_and_chunk_states captures them).

Generation (`HNet.step`, beside the forward it must equal): one position per row. `update_B` marks the rows that
receive a position at this level: every row at level 0, and at an inner level only the rows whose router just
started a chunk, so the main network runs (and its caches advance) only when a new chunk starts; other rows keep their
state bit for bit. In a batch the main network runs on the chunk-starting rows only, gathered into a smaller batch
when they are few (cache.run_rows). The dechunk EMA state (the last smoothed chunk vector) is carried between steps,
and bytes inside a chunk reuse it. The step computes exactly what the full-sequence forward (evaluation capacity)
computes at that position. Routers keep their own step state (a byte counter, the last bytes); `step_unsupported`
says why a stage cannot be stepped (mean pooling, a router without a step form).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.config import ModelConfig
from chunklm.model import chunking
from chunklm.model.cache import run_rows, select_rows, stack_init, stack_step
from chunklm.model.layers import Linear, param
from chunklm.model.plan import SOW_NAME, ChunkPlan, ChunkStates
from chunklm.model.routers import make_router
from chunklm.model.stack import LayerStack, Stack, stack_height
from chunklm.model.stage_output import StageOutput, stage_output


def _positions(x_BxLxD: jax.Array) -> jax.Array:
  return jnp.broadcast_to(jnp.arange(x_BxLxD.shape[1], dtype=jnp.int32), x_BxLxD.shape[:2])


class MainStack(LayerStack):
  """The innermost main network, called like a nested H-Net: (y_BxLxD, no stages). Positions count within its
  (compressed) sequence; `key_bias_BxL` reaches its attention layers."""

  def __call__(
    self,
    x_BxLxD: jax.Array,
    segment_ids_BxL: jax.Array,
    valid_BxL: jax.Array,
    plan: ChunkPlan,
    *,
    rng: jax.Array | None = None,
    key_bias_BxL: jax.Array | None = None,
  ) -> tuple[jax.Array, tuple]:
    del valid_BxL, plan, rng  # a layer stack masks by segment ids and chunks nothing
    return self.run(x_BxLxD, segment_ids_BxL, _positions(x_BxLxD), key_bias_BxL), ()

  def init_step_state(self, batch: int, max_len: int) -> list:
    return stack_init(self, batch, max_len)

  def step(
    self, x_BxD: jax.Array, state: list, update_B: jax.Array, ids_B: jax.Array | None = None
  ) -> tuple[jax.Array, list, dict]:
    del ids_B
    y_BxD, state = stack_step(self, x_BxD, state, update_B)
    return y_BxD, state, {}

  def step_unsupported(self) -> str:
    return ""

  def stacks(self) -> list[LayerStack]:
    return [self]

  def stage_levels(self) -> tuple[int, ...]:
    return ()


class HNet(nnx.Module):
  """One routing stage at `level`; `outer_residuals` counts the residual adds of the enclosing stacks. The chunk-op
  backend comes with each call's ChunkPlan; the attention backend is set on `stacks()` by the model (CausalLM)."""

  def __init__(self, cfg: ModelConfig, level: int, *, rngs: nnx.Rngs, outer_residuals: int = 0):
    enc, inner, dec = cfg.level_layout(level)
    dim, inner_dim = cfg.d_model[level], cfg.d_model[level + 1]
    self.level, self.target_ratio = level, cfg.target_ratio[level]
    residuals = outer_residuals + stack_height(enc) + stack_height(dec)
    self.encoder = Stack(enc, cfg, level, rngs=rngs, n_residuals=outer_residuals + stack_height(enc))
    self.router = make_router(cfg, level, dim, rngs=rngs)
    self.pooling = cfg.pooling[level]
    self.null = param(None, lambda k, s, d: jnp.zeros(s, d), (dim,), ("embed",)) if self.pooling == "mean" else None
    self.residual_proj = Linear(dim, (dim,), ("embed", "embed_out"), rngs=rngs, std=0.0)  # zero init
    # the official code's residual_proj has a bias (PyTorch's default init there; zeros here: converted weights set it)
    self.compat = cfg.compat
    # The rows the chunk ops move (chunk vectors in, the main network's output out, its smoothed copy upsampled to
    # every position) travel in the compute dtype; the residual streams, W_res x_hat, the EMA's running average and
    # the boundary probabilities stay float32 (see the module docstring).
    self.moved_dtype = jnp.dtype(cfg.dtype)
    self.ratio_loss_kind = cfg.ratio_loss
    self.residual_bias = (
      param(None, lambda k, s, d: jnp.zeros(s, d), (dim,), ("embed",)) if cfg.compat == "official" else None
    )
    self.main: MainStack | HNet
    if len(inner) == 1:
      self.main = MainStack(inner[0], cfg, level + 1, rngs=rngs, n_residuals=residuals + stack_height(inner[0]))
    else:
      self.main = HNet(cfg, level + 1, rngs=rngs, outer_residuals=residuals)
    self.pad = param(None, lambda k, s, d: jnp.zeros(s, d), (inner_dim - dim,), ("embed",)) if inner_dim > dim else None
    self.decoder = Stack(dec, cfg, level, rngs=rngs, n_residuals=outer_residuals + stack_height(dec))

  def __call__(
    self,
    x_BxLxD: jax.Array,
    segment_ids_BxL: jax.Array,
    valid_BxL: jax.Array,
    plan: ChunkPlan,
    *,
    ids_BxL: jax.Array | None = None,
    rng: jax.Array | None = None,
    key_bias_BxL: jax.Array | None = None,
  ) -> tuple[jax.Array, tuple[StageOutput, ...]]:
    """y_BxLxD and the stage records of this stage and the deeper ones, outermost first. `ids_BxL` (the bytes, level 0
    only) and `rng` reach the routers (noise when plan.train); `key_bias_BxL` is ignored (a delete gate's bias is for
    attention over chunks). Under plan.sow each stage sows its ChunkStates (nnx.Intermediate, model/plan.py)."""
    del key_bias_BxL
    positions_BxL = _positions(x_BxLxD)
    h_BxLxD = self.encoder(x_BxLxD, segment_ids_BxL, positions_BxL)
    rng_here = None if rng is None else jax.random.fold_in(rng, self.level)
    routing = self.router(h_BxLxD, ids_BxL, segment_ids_BxL, valid_BxL, train=plan.train, rng=rng_here)
    chunks = chunking.chunk(
      h_BxLxD.astype(self.moved_dtype),
      routing,
      segment_ids_BxL,
      valid_BxL,
      plan.capacity(x_BxLxD.shape[1]),
      plan.doc_slots,
      plan.exact,
      impl=plan.kernel_impl,
      pooling=self.pooling,
    )
    z_BxMxD = chunks.z_BxMxD
    bias_BxM = None
    if routing.key_bias_BxL is not None:
      bias_BxM = jnp.where(
        chunks.valid_BxM, jnp.take_along_axis(routing.key_bias_BxL, chunks.positions_BxM, axis=1), 0.0
      )
    if self.pad is not None:
      pad_BxMxE = jnp.broadcast_to(self.pad[...].astype(z_BxMxD.dtype), (*z_BxMxD.shape[:2], self.pad.shape[0]))
      z_BxMxD = jnp.concatenate([z_BxMxD, pad_BxMxE], axis=-1)
    zhat_BxMxD, inner = self.main(
      z_BxMxD, chunks.segment_ids_BxM, chunks.valid_BxM, plan.inner(), rng=rng, key_bias_BxL=bias_BxM
    )
    zhat_BxMxD = zhat_BxMxD[..., : x_BxLxD.shape[-1]]
    if plan.sow:  # only when asked: a sow outside nnx.capture would leave state on the module
      self.sow(nnx.Intermediate, SOW_NAME, ChunkStates(zhat_BxMxD, chunks.valid_BxM))
    # mean pooling (null is set): chunk c reads chunk c - 1 (its own mean holds later bytes); documents start at null
    if self.null is not None:
      prev_BxMxD = jnp.pad(zhat_BxMxD[:, :-1], ((0, 0), (1, 0), (0, 0)))
      null_BxMxD = jnp.broadcast_to(self.null[...].astype(zhat_BxMxD.dtype), zhat_BxMxD.shape)
      zhat_BxMxD = jnp.where(chunks.starts_BxM[..., None], null_BxMxD, prev_BxMxD)
    zhat_BxMxD = zhat_BxMxD.astype(self.moved_dtype)
    y_BxLxD = chunking.dechunk(zhat_BxMxD, chunks, routing, impl=plan.kernel_impl, compat=self.compat) + self.residual(
      h_BxLxD
    )
    out_BxLxD = self.decoder(y_BxLxD, segment_ids_BxL, positions_BxL)
    # routers with no learnable p (stride, word starts, entropy) get no ratio loss: it would have no gradient
    here = stage_output(
      routing,
      chunks,
      valid_BxL,
      learnable_p=self.router.ratio_loss,
      target_ratio=self.target_ratio,
      ratio_loss_kind=self.ratio_loss_kind,
    )
    return out_BxLxD, (here, *inner)

  def residual(self, h: jax.Array) -> jax.Array:
    """W_res h (+ b_res under compat official), in float32; h is h_BxLxD (forward) or h_BxD (step)."""
    r = self.residual_proj(h.astype(jnp.float32))
    if self.residual_bias is None:
      return r
    return r + self.residual_bias[...].reshape((1,) * (r.ndim - 1) + self.residual_bias.shape)

  def init_step_state(self, batch: int, max_len: int) -> dict:
    dim = self.residual_proj.kernel.shape[0]
    return {
      "enc": stack_init(self.encoder, batch, max_len),
      "dec": stack_init(self.decoder, batch, max_len),
      "main": self.main.init_step_state(batch, max_len),
      "h_prev": jnp.zeros((batch, dim), jnp.float32),
      "has_prev": jnp.zeros(batch, bool),
      "zbar": jnp.zeros((batch, dim), jnp.float32),
      "router": self.router.init_step_state(batch),
    }

  def step(
    self, x_BxD: jax.Array, state: dict, update_B: jax.Array, ids_B: jax.Array | None = None
  ) -> tuple[jax.Array, dict, dict]:
    """(y_BxD, new state, {stage: boundary_B}) for one position of the rows in `update_B`; `ids_B` are the bytes
    (level 0 only)."""
    h_BxD, enc = stack_step(self.encoder, x_BxD, state["enc"], update_B)
    p_B, chosen_B, router_state = self.router.step(h_BxD, state["h_prev"], state["has_prev"], ids_B, state["router"])
    b_B = chosen_B & update_B
    z_BxE = h_BxD.astype(self.moved_dtype)  # as the forward's chunk ops move it
    if self.pad is not None:
      z_BxE = jnp.concatenate(
        [z_BxE, jnp.broadcast_to(self.pad[...].astype(z_BxE.dtype), (h_BxD.shape[0], self.pad.shape[0]))], axis=-1
      )

    def main_step(z, main_state, update):
      zhat, main_state, inner = self.main.step(z, main_state, update)
      return zhat.astype(self.moved_dtype).astype(jnp.float32), main_state, inner

    zhat_BxE, main, inner = run_rows(main_step, z_BxE, state["main"], b_B, list(self.main.stage_levels()))
    zhat_BxD = zhat_BxE[:, : h_BxD.shape[-1]]
    # at a document start the average restarts; the official code clamps p = 1 there too, as its step does
    start_p = 1 - 1e-4 if self.compat == "official" else 1.0
    p_use = jnp.where(state["has_prev"], jnp.clip(p_B, 1e-4, 1 - 1e-4), start_p)[:, None]
    zbar_BxD = jnp.where(b_B[:, None], p_use * zhat_BxD + (1 - p_use) * state["zbar"], state["zbar"])
    # the forward's EMA keeps its average in float32 and returns it in the moved dtype
    y_BxD = zbar_BxD.astype(self.moved_dtype).astype(jnp.float32) + self.residual(h_BxD)
    out_BxD, dec = stack_step(self.decoder, y_BxD, state["dec"], update_B)
    new_state = {
      "enc": enc,
      "dec": dec,
      "main": main,
      "h_prev": select_rows(update_B, h_BxD.astype(jnp.float32), state["h_prev"]),
      "has_prev": state["has_prev"] | update_B,
      "zbar": zbar_BxD,
      "router": select_rows(update_B, router_state, state["router"]),
    }
    return out_BxD, new_state, {self.level: b_B, **inner}

  def step_unsupported(self) -> str:
    """Why this stage or a deeper one has no cached step ("" when every stage has one)."""
    if self.pooling != "select":
      return f"stage {self.level} uses {self.pooling} pooling, which has no cached step (only select pooling does)"
    if self.router.generation:
      return f"stage {self.level}: {self.router.generation}"
    return self.main.step_unsupported()

  def stacks(self) -> list[LayerStack]:
    """The layer stacks of this stage and the deeper ones (not the routers' own, e.g. the entropy router's byte LM)."""
    return [self.encoder, self.decoder, *self.main.stacks()]

  def stage_levels(self) -> tuple[int, ...]:
    """Routing levels of this stage and the deeper ones."""
    return (self.level, *self.main.stage_levels())
