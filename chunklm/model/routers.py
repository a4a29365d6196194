"""Boundary predictor classes: the names of config.routers.ROUTERS -> class with the routing.py interface."""

from __future__ import annotations

from flax import nnx

from chunklm.model.delete_gate import DeleteGateRouter
from chunklm.model.entropy_router import EntropyRouter
from chunklm.model.gumbel_router import GumbelRouter
from chunklm.model.routing import CosineRouter, Router
from chunklm.model.rule_routers import StrideRouter, WhitespaceRouter

ROUTERS = {
  "cosine": CosineRouter,
  "stride": StrideRouter,
  "whitespace": WhitespaceRouter,
  "gumbel": GumbelRouter,
  "entropy": EntropyRouter,
  "delete_gate": DeleteGateRouter,
}


def make_router(cfg, level: int, dim: int, *, rngs: nnx.Rngs) -> Router:
  """The router of stage `level` as `cfg.router[level]` names it, for encoder states of width `dim`."""
  name = cfg.router[level]
  if name not in ROUTERS:
    raise ValueError(f"unknown router {name!r}; available: {', '.join(ROUTERS)}")
  return ROUTERS[name](cfg, level, dim, rngs=rngs)
