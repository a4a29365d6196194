"""What a config's model is, without allocating it: parameters, training FLOPs per byte, chunk capacities."""

from __future__ import annotations

import math

import jax
from flax import nnx

from chunklm.config import Config, capacities
from chunklm.model.flops import train_flops_per_byte
from chunklm.model.lm import build_model


def describe_config(cfg: Config) -> dict:
  """{'params', 'flops_per_byte' (nominal: training FLOPs at the target chunk ratios), 'capacities' (chunk slots
  per stage), 'executed_flops_per_byte' (what the static shapes compute: every stage runs on all its slots),
  'executed_ratio' (innermost slots / innermost chunks at the targets; 1 for a plain stack)}."""
  abstract = nnx.eval_shape(lambda: build_model(cfg))
  length = cfg.data.seq_len
  caps = capacities(cfg.model, length, cfg.data.doc_slots)
  nominal_chunks = length / math.prod(cfg.model.target_ratio) if caps else length
  return {
    "params": sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))),
    "flops_per_byte": train_flops_per_byte(cfg.model, length),
    "capacities": caps,
    "executed_flops_per_byte": train_flops_per_byte(cfg.model, length, (1.0, *(length / c for c in caps)))
    if caps
    else train_flops_per_byte(cfg.model, length),
    "executed_ratio": caps[-1] / nominal_chunks if caps else 1.0,
  }
