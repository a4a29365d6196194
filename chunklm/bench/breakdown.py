"""Where an H-Net training step spends its time: forward+backward of each part, timed alone on this machine.

Parts: embedding + LM head, every encoder and decoder stack, the innermost main stack, and each stage's routing +
chunk + dechunk (with the main network replaced by the identity). Inputs have the shapes of a training step
(chunk capacities as in training). Times are medians after warm-up; their sum is close to, but not exactly, the
fused step time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.bench.timing import median_time
from chunklm.config import Config
from chunklm.config.capacity import capacities
from chunklm.model import chunking
from chunklm.model.hnet import HNet, MainStack
from chunklm.model.lm import build_model
from chunklm.model.plan import ChunkPlan
from chunklm.model.stack import Stack


def _time(fn, args, repeats: int) -> float:
  return median_time(jax.jit(fn), args, repeats)


def _fwd_bwd(module: nnx.Module, call, wrt_input: bool = True):
  """(gradient function of a dummy loss w.r.t. params (and the input), params) for `call(module, x)`."""
  graphdef, params = nnx.split(module)

  def loss(params, x):
    return jnp.sum(call(nnx.merge(graphdef, params), x).astype(jnp.float32) ** 2)

  return jax.grad(loss, argnums=(0, 1) if wrt_input else 0), params


def breakdown(cfg: Config, repeats: int = 5) -> list[tuple[str, float]]:
  """[(part, seconds per forward+backward)] for one training batch of `cfg`."""
  model = build_model(cfg)
  b, length = cfg.train.batch_size, cfg.data.seq_len
  caps = capacities(cfg.model, length, cfg.data.doc_slots)
  key = jax.random.key(0)
  rows = []
  ids = jax.random.randint(key, (b, length), 0, 256)

  def embed_head(m, ids):
    return m.head(m.embed(ids))

  g, params = _fwd_bwd(model, embed_head, wrt_input=False)
  rows.append(("embedding + LM head", _time(lambda p: g(p, ids), (params,), repeats)))
  net: Stack | MainStack | HNet = model.backbone
  level, seq = 0, length
  while isinstance(net, HNet):
    d = cfg.model.d_model[level]
    x = jax.random.normal(key, (b, seq, d))
    seg = jnp.ones((b, seq), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(seq), (b, seq))
    for name in ("encoder", "decoder"):
      stack = getattr(net, name)
      g, params = _fwd_bwd(stack, lambda m, x: m(x, seg, pos))
      rows.append(
        (
          f"stage {level} {name} ({cfg.model.level_layout(level)[0 if name == 'encoder' else 2]}, {seq} x {d})",
          _time(lambda p, x: g(p, x), (params, x), repeats),
        )
      )

    def route_chunk_dechunk(m, h, cap=caps[level], seg=seg):
      r = m.router(h, None, seg, seg > 0)
      ch = chunking.chunk(h.astype(m.moved_dtype), r, seg, seg > 0, cap, cfg.data.doc_slots, exact=False)
      return chunking.dechunk(ch.z_BxMxD, ch, r, compat=m.compat) + m.residual(h)

    g, params = _fwd_bwd(net, route_chunk_dechunk)
    rows.append(
      (
        f"stage {level} route + chunk + dechunk ({seq} -> {caps[level]})",
        _time(lambda p, x: g(p, x), (params, x), repeats),
      )
    )
    net, seq, level = net.main, caps[level], level + 1
  d = cfg.model.d_model[level]
  x = jax.random.normal(key, (b, seq, d))
  seg = jnp.ones((b, seq), jnp.int32)
  g, params = _fwd_bwd(net, lambda m, x: m(x, seg, seg > 0, ChunkPlan(()))[0])
  rows.append(
    (f"main stack ({cfg.model.level_layout(level)[0]}, {seq} x {d})", _time(lambda p, x: g(p, x), (params, x), repeats))
  )
  return rows
