"""The recursive H-Net backbone (Hwang, Wang & Gu 2025): encoder -> route -> chunk -> main -> dechunk -> decoder.

The main network of a stage is a plain layer stack (innermost) or another H-Net, as the nested layout says:
('m4', ('T22',), 'm4') is 1-stage, ('m4', ('T1m4', ('T27',), 'm4T1'), 'm4') 2-stage. A wider inner level gets a
shared learned vector (zero-initialised) appended to each chunk vector on the way in and is cut back to the outer
width on the way out; there are no projections between levels. The decoder input is
y_t = dechunk(main(chunk(x_hat)))_t * STE(c_t) + W_res x_hat_t, computed in float32 with W_res zero-initialised.
Attention positions count within each level's own (compressed) sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.config import ModelConfig
from chunklm.model import chunking
from chunklm.model.layers import Linear, param
from chunklm.model.routing import make_router
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
    self.router = make_router(cfg.router[level], dim, rngs=rngs)
    self.residual_proj = Linear(dim, (dim,), ("embed", "embed_out"), rngs=rngs, std=0.0)  # zero init
    if len(inner) == 1:
      self.main = Stack(inner[0], cfg, level + 1, rngs=rngs, n_residuals=residuals + stack_height(inner[0]))
    else:
      self.main = HNet(cfg, level + 1, rngs=rngs, outer_residuals=residuals, kernel_impl=kernel_impl)
    self.pad = param(None, lambda k, s, d: jnp.zeros(s, d), (inner_dim - dim,), ("embed",)) if inner_dim > dim \
        else None
    self.decoder = Stack(dec, cfg, level, rngs=rngs, n_residuals=outer_residuals + stack_height(dec))

  def __call__(self, x_BxLxD: jax.Array, segment_ids_BxL: jax.Array, valid_BxL: jax.Array, ids_BxL: jax.Array | None,
               *, capacities: tuple[int, ...], doc_slots: int, exact: bool) -> tuple[jax.Array, dict]:
    """y_BxLxD and aux: per-stage sums ('<name>_s<stage>_sum'), unweighted ratio losses ('ratio_loss_s<stage>'),
    router decisions and probabilities ('boundaries_s<stage>', 'probs_s<stage>', over this stage's positions) and
    chunk start positions ('chunk_positions_s<stage>')."""
    positions_BxL = _positions(x_BxLxD)
    h_BxLxD = self.encoder(x_BxLxD, segment_ids_BxL, positions_BxL)
    routing = self.router(h_BxLxD, ids_BxL, segment_ids_BxL, valid_BxL)
    capacity = x_BxLxD.shape[1] if exact else capacities[0]
    chunks = chunking.chunk(h_BxLxD, routing, segment_ids_BxL, valid_BxL, capacity, doc_slots, exact,
                            impl=self.kernel_impl)
    z_BxMxD = chunks.z_BxMxD
    if self.pad is not None:
      pad_BxMxE = jnp.broadcast_to(self.pad[...].astype(z_BxMxD.dtype), (*z_BxMxD.shape[:2], self.pad.shape[0]))
      z_BxMxD = jnp.concatenate([z_BxMxD, pad_BxMxE], axis=-1)
    if isinstance(self.main, HNet):
      zhat_BxMxD, aux = self.main(z_BxMxD, chunks.segment_ids_BxM, chunks.valid_BxM, None,
                                  capacities=capacities[1:], doc_slots=doc_slots, exact=exact)
    else:
      zhat_BxMxD, aux = self.main(z_BxMxD, chunks.segment_ids_BxM, _positions(z_BxMxD)), {}
    zhat_BxMxD = zhat_BxMxD[..., : x_BxLxD.shape[-1]]
    y_BxLxD = (chunking.dechunk(zhat_BxMxD, chunks, routing, impl=self.kernel_impl)
               + self.residual_proj(h_BxLxD.astype(jnp.float32)))
    out_BxLxD = self.decoder(y_BxLxD, segment_ids_BxL, positions_BxL)
    sums = chunking.stage_sums(routing, chunks, valid_BxL)
    s = self.level
    aux = dict(aux, **{f"{k}_s{s}_sum": v for k, v in sums.items()})
    f = sums["boundaries"] / jnp.maximum(sums["positions"], 1.0)
    g = sums["p_sum"] / jnp.maximum(sums["positions"], 1.0)
    aux[f"ratio_loss_s{s}"] = chunking.ratio_loss(f, g, self.target_ratio)
    aux[f"router_aux_s{s}"] = routing.aux_loss
    aux[f"boundaries_s{s}"] = routing.b_BxL  # per-position arrays, for pictures (not metrics)
    aux[f"probs_s{s}"] = routing.p_BxL
    aux[f"chunk_positions_s{s}"] = chunks.positions_BxM
    return out_BxLxD, aux
