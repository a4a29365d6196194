"""The recursive H-Net backbone (Hwang, Wang & Gu 2025): encoder -> route -> chunk -> main -> dechunk -> decoder.

The main network of a stage is a plain layer stack (innermost) or another H-Net, as the nested layout says:
('m4', ('T22',), 'm4') is 1-stage, ('m4', ('T1m4', ('T27',), 'm4T1'), 'm4') 2-stage. A wider inner level gets a
shared learned vector (zero-initialised) appended to each chunk vector on the way in and is cut back to the outer
width on the way out; there are no projections between levels. The decoder input is
y_t = dechunk(main(chunk(x_hat)))_t * STE(c_t) + W_res x_hat_t, computed in float32 with W_res zero-initialised.
Attention positions count within each level's own (compressed) sequence.

Pooling (`model.pooling` per stage): `select` (H-Net) takes the encoder state at each chunk's first byte, which is
causal for every byte of the chunk. `mean` averages the chunk's encoder states (kernels.api.segment_pool); that mean
contains bytes after t, so to stay causal the bytes of chunk c read the main network's output of chunk c - 1, and
the first chunk of each document a learned "null" vector (dynamic pooling, Nawrot et al. 2023).
A router may return an attention key bias (the MrT5 delete gate): it is gathered at the chunks and added to the
key logits of every attention layer of the main stack (Mamba layers cannot take one; a nested H-Net ignores it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.config import ModelConfig
from chunklm.model import chunking
from chunklm.model.layers import Linear, param
from chunklm.model.routers import make_router
from chunklm.model.stack import Stack, stack_height


def _positions(x_BxLxD: jax.Array) -> jax.Array:
  return jnp.broadcast_to(jnp.arange(x_BxLxD.shape[1], dtype=jnp.int32), x_BxLxD.shape[:2])


class HNet(nnx.Module):
  """One routing stage at `level`; `outer_residuals` counts the residual adds of the enclosing stacks;
  `kernel_impl` is the chunk-op backend of every stage (`kernels.api.IMPLS`)."""

  def __init__(self, cfg: ModelConfig, level: int, *, rngs: nnx.Rngs, outer_residuals: int = 0,
               kernel_impl: str = "auto"):
    enc, inner, dec = cfg.level_layout(level)
    dim, inner_dim = cfg.d_model[level], cfg.d_model[level + 1]
    self.level, self.target_ratio = level, cfg.target_ratio[level]
    self.kernel_impl = kernel_impl
    residuals = outer_residuals + stack_height(enc) + stack_height(dec)
    self.encoder = Stack(enc, cfg, level, rngs=rngs, n_residuals=outer_residuals + stack_height(enc))
    self.router = make_router(cfg, level, dim, rngs=rngs)
    self.pooling = cfg.pooling[level]
    self.null = param(None, lambda k, s, d: jnp.zeros(s, d), (dim,), ("embed",)) if self.pooling == "mean" else None
    self.residual_proj = Linear(dim, (dim,), ("embed", "embed_out"), rngs=rngs, std=0.0)  # zero init
    if len(inner) == 1:
      self.main = Stack(inner[0], cfg, level + 1, rngs=rngs, n_residuals=residuals + stack_height(inner[0]))
    else:
      self.main = HNet(cfg, level + 1, rngs=rngs, outer_residuals=residuals, kernel_impl=kernel_impl)
    self.pad = param(None, lambda k, s, d: jnp.zeros(s, d), (inner_dim - dim,), ("embed",)) if inner_dim > dim \
        else None
    self.decoder = Stack(dec, cfg, level, rngs=rngs, n_residuals=outer_residuals + stack_height(dec))

  def __call__(self, x_BxLxD: jax.Array, segment_ids_BxL: jax.Array, valid_BxL: jax.Array, ids_BxL: jax.Array | None,
               *, capacities: tuple[int, ...], doc_slots: int, exact: bool, train: bool = False,
               rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """y_BxLxD and aux: per-stage sums ('<name>_s<stage>_sum'), unweighted ratio losses ('ratio_loss_s<stage>'),
    router decisions and probabilities ('boundaries_s<stage>', 'probs_s<stage>', over this stage's positions) and
    chunk start positions ('chunk_positions_s<stage>'). `train` and `rng` reach the routers (noise, statistics)."""
    positions_BxL = _positions(x_BxLxD)
    h_BxLxD = self.encoder(x_BxLxD, segment_ids_BxL, positions_BxL)
    rng_here = None if rng is None else jax.random.fold_in(rng, self.level)
    routing = self.router(h_BxLxD, ids_BxL, segment_ids_BxL, valid_BxL, train=train, rng=rng_here)
    capacity = x_BxLxD.shape[1] if exact else capacities[0]
    chunks = chunking.chunk(h_BxLxD, routing, segment_ids_BxL, valid_BxL, capacity, doc_slots, exact,
                            impl=self.kernel_impl, pooling=self.pooling)
    z_BxMxD = chunks.z_BxMxD
    bias_BxM = None
    if routing.key_bias_BxL is not None:
      bias_BxM = jnp.where(chunks.valid_BxM, jnp.take_along_axis(routing.key_bias_BxL, chunks.positions_BxM, axis=1),
                           0.0)
    if self.pad is not None:
      pad_BxMxE = jnp.broadcast_to(self.pad[...].astype(z_BxMxD.dtype), (*z_BxMxD.shape[:2], self.pad.shape[0]))
      z_BxMxD = jnp.concatenate([z_BxMxD, pad_BxMxE], axis=-1)
    if isinstance(self.main, HNet):
      zhat_BxMxD, aux = self.main(z_BxMxD, chunks.segment_ids_BxM, chunks.valid_BxM, None,
                                  capacities=capacities[1:], doc_slots=doc_slots, exact=exact, train=train, rng=rng)
    else:
      zhat_BxMxD, aux = self.main(z_BxMxD, chunks.segment_ids_BxM, _positions(z_BxMxD), key_bias_BxL=bias_BxM), {}
    zhat_BxMxD = zhat_BxMxD[..., : x_BxLxD.shape[-1]]
    if self.pooling == "mean":  # chunk c reads chunk c - 1 (its own mean holds later bytes); documents start at null
      prev_BxMxD = jnp.pad(zhat_BxMxD[:, :-1], ((0, 0), (1, 0), (0, 0)))
      null_BxMxD = jnp.broadcast_to(self.null[...].astype(zhat_BxMxD.dtype), zhat_BxMxD.shape)
      zhat_BxMxD = jnp.where(chunks.starts_BxM[..., None], null_BxMxD, prev_BxMxD)
    y_BxLxD = (chunking.dechunk(zhat_BxMxD, chunks, routing, impl=self.kernel_impl)
               + self.residual_proj(h_BxLxD.astype(jnp.float32)))
    out_BxLxD = self.decoder(y_BxLxD, segment_ids_BxL, positions_BxL)
    sums = chunking.stage_sums(routing, chunks, valid_BxL)
    s = self.level
    aux = dict(aux, **{f"{k}_s{s}_sum": v for k, v in sums.items()})
    f = sums["boundaries"] / jnp.maximum(sums["positions"], 1.0)
    g = sums["p_sum"] / jnp.maximum(sums["positions"], 1.0)
    # routers with no learnable p (stride, word starts, entropy) get no ratio loss: it would have no gradient
    aux[f"ratio_loss_s{s}"] = chunking.ratio_loss(f, g, self.target_ratio) if self.router.ratio_loss \
        else jnp.zeros((), jnp.float32)
    aux[f"router_aux_s{s}"] = routing.aux_loss
    aux[f"boundaries_s{s}"] = routing.b_BxL  # per-position arrays, for pictures (not metrics)
    aux[f"probs_s{s}"] = routing.p_BxL
    aux[f"chunk_positions_s{s}"] = chunks.positions_BxM
    return out_BxLxD, aux
