"""The compression-ratio curriculum (model.ratio_start, model.ratio_warmup_steps): the ratio loss's target N moves
linearly from the start to target_ratio, the training step uses the N of its own step, capacities hold the start."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from chunklm.classify.trainer import _base_model
from chunklm.config import capacities
from chunklm.errors import ConfigError, UserError
from chunklm.model.functional import split_model
from chunklm.model.lm import build_model
from chunklm.train.step import init_train_state, loss_fn, make_train_step, ratio_targets
from conftest import tiny_config
from test_hnet import hnet_config, make_batch

CURRICULUM = ("model.ratio_start=[1.5, 1.25]", "model.ratio_warmup_steps=8")


def test_targets_move_linearly_from_the_start_then_hold():
  cfg = hnet_config(2, *CURRICULUM).model  # target_ratio [2, 2]
  for step, expected in ((0, (1.5, 1.25)), (2, (1.625, 1.4375)), (6, (1.875, 1.8125)), (8, (2, 2)), (50, (2, 2))):
    assert [float(n) for n in ratio_targets(cfg, jnp.int32(step))] == pytest.approx(expected, abs=1e-6)
  assert ratio_targets(cfg, None) is None  # no step (classification): each stage's own target
  assert ratio_targets(hnet_config(2).model, jnp.int32(0)) is None


def test_capacities_hold_the_start_of_the_curriculum():
  cfg = hnet_config(2, *CURRICULUM, "model.capacity_factor=1.5")
  as_start = hnet_config(2, "model.target_ratio=[1.5, 1.25]", "model.capacity_factor=1.5")
  plain = hnet_config(2, "model.capacity_factor=1.5")
  caps = capacities(cfg.model, 64, 2)
  assert caps == capacities(as_start.model, 64, 2) and caps[0] > capacities(plain.model, 64, 2)[0]
  # a start above the target (a decreasing curriculum) keeps the target's capacities
  down = hnet_config(1, "model.ratio_start=[5]", "model.ratio_warmup_steps=4", "model.capacity_factor=1.5")
  assert capacities(down.model, 64, 2) == capacities(hnet_config(1, "model.capacity_factor=1.5").model, 64, 2)


@pytest.mark.parametrize("step", [0, 3, 20])
def test_loss_uses_the_target_of_its_step(step):
  """metrics["ratio_loss_s0"] is N/(N-1) ((N-1) F G + (1-F)(1-G)) with F, G of the batch and N = N(step) by hand."""
  cfg = hnet_config(1, "model.ratio_start=[2]", "model.ratio_warmup_steps=6", "model.ratio_loss_weight=0.5")
  graphdef, params = split_model(build_model(cfg, 0))
  ids = jax.random.randint(jax.random.key(4), (2, 32), 0, 256)
  batch = make_batch(ids, jnp.ones_like(ids))
  loss, m = jax.jit(loss_fn, static_argnums=1)(params, graphdef, batch, jax.random.key(1), jnp.int32(step))
  n = 2 + (3 - 2) * min(step / 6, 1.0)  # hnet_config(1) has target_ratio [3]
  f = 1.0 / float(m["bytes_per_chunk_s0"])  # boundaries / positions
  g = float(m["mean_p_s0"])
  expected = n / (n - 1) * ((n - 1) * f * g + (1 - f) * (1 - g))
  assert float(m["target_ratio_s0"]) == pytest.approx(n, abs=1e-6)
  assert float(m["ratio_loss_s0"]) == pytest.approx(expected, rel=1e-5)
  assert float(loss) == pytest.approx(float(m["nll"]) + 0.5 * expected, rel=1e-5)


def test_the_train_step_passes_its_step():
  cfg = hnet_config(1, "model.ratio_start=[2]", "model.ratio_warmup_steps=4")
  graphdef, params = split_model(build_model(cfg, 0))
  tx = optax.sgd(1e-3)
  state = init_train_state(params, tx, 0)
  step = make_train_step(graphdef, tx)
  ids = jax.random.randint(jax.random.key(4), (2, 32), 0, 256)
  batch = make_batch(ids, jnp.ones_like(ids))
  seen = []
  for _ in range(3):
    state, m = step(state, batch)
    seen.append(float(m["target_ratio_s0"]))
  assert np.allclose(seen, [2.0, 2.25, 2.5])


@pytest.mark.parametrize(
  "overrides, message",
  [
    (("model.ratio_start=[1]", "model.ratio_warmup_steps=5"), "model.ratio_start: target compression N must be > 1"),
    (("model.ratio_start=[2]",), "model.ratio_warmup_steps: the curriculum needs > 0 steps"),
    (("model.ratio_warmup_steps=5",), "model.ratio_warmup_steps: set model.ratio_start too"),
    (
      ("model.ratio_start=[2]", "model.ratio_warmup_steps=5", "model.router=[stride]"),
      "stage 0's router 'stride' has no ratio loss",
    ),
    (("model.ratio_start=[2, 2]", "model.ratio_warmup_steps=5"), "model.ratio_start: layout has 1 routing stage"),
  ],
)
def test_bad_curricula_fail_at_load(overrides, message):
  with pytest.raises(ConfigError, match=message):
    hnet_config(1, *overrides)


def test_a_plain_stack_has_no_curriculum():
  with pytest.raises(ConfigError, match="needs an H-Net"):
    tiny_config("model.ratio_start=[2]", "model.ratio_warmup_steps=5")


def test_classification_refuses_a_curriculum():
  with pytest.raises(UserError, match="no ratio curriculum; add --set model.ratio_start=\\[\\]"):
    _base_model(None, "hnet_1stage_tiny", ["model.ratio_start=[3]", "model.ratio_warmup_steps=5"], 0)
