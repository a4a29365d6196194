"""What a config's model is, without allocating it: parameters, training FLOPs per byte, chunk capacities."""

from __future__ import annotations

import jax
from flax import nnx

from chunklm.config import Config
from chunklm.config import capacities
from chunklm.model.flops import train_flops_per_byte
from chunklm.model.lm import build_model


def describe_config(cfg: Config) -> dict:
  """{'params', 'flops_per_byte' (training, at the target chunk ratios), 'capacities' (chunk slots per stage)}."""
  abstract = nnx.eval_shape(lambda: build_model(cfg))
  return {
      "params": sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))),
      "flops_per_byte": train_flops_per_byte(cfg.model, cfg.data.seq_len),
      "capacities": capacities(cfg.model, cfg.data.seq_len, cfg.data.max_docs_per_window),
  }
