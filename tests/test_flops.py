"""FLOPs per byte: hand-checked pieces and agreement with XLA's own count of the compiled model."""

import jax
import jax.numpy as jnp
import pytest

from chunklm.model.flops import attention_flops, mean_keys, train_flops_per_byte
from chunklm.model.functional import forward, split_model
from chunklm.model.lm import build_model
from conftest import tiny_config


def test_mean_keys():
  assert mean_keys(4, 0) == pytest.approx(2.5)  # (1 + 2 + 3 + 4) / 4
  assert mean_keys(6, 1) == pytest.approx((1 + 2 * 5) / 6)  # window 1: self + one key back
  assert mean_keys(6, 10) == mean_keys(6, 0)


def test_attention_flops_by_hand():
  d, length = 8, 4
  assert attention_flops(d, length, 0) == 2 * d * 3 * d + 2 * d * d + 4 * d * 2.5


def test_forward_flops_match_xla_count():
  """Our count (excluding attention scores, which XLA counts unmasked) is within 2% of XLA's matmul FLOPs."""
  cfg = tiny_config("model.d_model=64", "model.n_heads=2", "data.seq_len=16")
  graphdef, params = split_model(build_model(cfg, 0))
  b, length = 4, cfg.data.seq_len
  batch = {
    "ids": jnp.zeros((b, length), jnp.int32),
    "segment_ids": jnp.ones((b, length), jnp.int32),
    "positions": jnp.zeros((b, length), jnp.int32),
  }
  cost = jax.jit(lambda p: forward(graphdef, p, batch)[0]).lower(params).compile().cost_analysis()
  xla_flops = cost["flops"] if isinstance(cost, dict) else cost[0]["flops"]
  ours = train_flops_per_byte(cfg.model, length) / 3 * b * length
  d, layers = 64, 2
  dense_attention = layers * 4 * d * length * length * b  # XLA multiplies the masked half too
  causal_attention = layers * 4 * d * (length + 1) / 2 * length * b
  assert ours - causal_attention + dense_attention == pytest.approx(xla_flops, rel=0.05)


def test_hnet_flops_scale_with_the_chunk_ratio():
  from test_hnet import hnet_config

  cfg = hnet_config(1)
  coarse = train_flops_per_byte(cfg.model, 32, (1.0, 8.0))
  fine = train_flops_per_byte(cfg.model, 32, (1.0, 2.0))
  assert fine > coarse > 0
  assert train_flops_per_byte(cfg.model, 32) == train_flops_per_byte(cfg.model, 32, (1.0, 3.0))
