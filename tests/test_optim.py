import jax
import numpy as np
import pytest
from flax import nnx

from chunklm.config import TrainConfig
from chunklm.model.functional import split_model
from chunklm.model.lm import build_model
from chunklm.train.optim import decay_mask, lr_schedule
from conftest import tiny_config


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_schedules_warm_up_then_decay_to_the_floor(schedule):
  cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, schedule=schedule, min_lr_ratio=0.1, decay_fraction=0.2)
  lr = [float(lr_schedule(cfg)(s)) for s in range(100)]
  assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
  assert all(a <= b + 1e-6 for a, b in zip(lr[:10], lr[1:10]))
  if schedule == "constant":
    assert lr[-1] == pytest.approx(1.0)
  else:
    assert lr[-1] == pytest.approx(0.1, abs=0.02)
    assert all(a >= b - 1e-6 for a, b in zip(lr[10:], lr[11:]))
  if schedule == "wsd":
    assert lr[79] == pytest.approx(1.0)  # stable until the last 20%


def test_weight_decay_mask_skips_norms_and_embeddings():
  _, params = split_model(build_model(tiny_config(), 0))
  mask = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(decay_mask(params))}
  assert not any(m for k, m in mask.items() if "table" in k or "scale" in k)
  assert all(m for k, m in mask.items() if "kernel" in k)


def test_every_parameter_has_logical_axes():
  from test_hnet import hnet_config

  for cfg in (tiny_config(), hnet_config(2)):
    model = build_model(cfg, 0)
    for path, var in nnx.iter_graph(model):
      if isinstance(var, nnx.Param):
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == np.ndim(var[...]), path
