"""The optimizer: AdamW with warmup + cosine / WSD, global-norm clipping, a weight-decay mask, per-level LR multipliers,
per-part LR factors (`train.lr_scale`) and frozen parts (`train.freeze`, see parts.py).

Per-level multipliers (H-Net paper, App. C) scale the whole AdamW update of each parameter, i.e. they act as a
per-parameter learning rate. A parameter's level is the number of `main` modules on its path (embedding and LM head
belong to level 0).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from chunklm.config import ModelConfig, TrainConfig
from chunklm.errors import ConfigError
from chunklm.train.parts import check_selectors, frozen_mask, matches, named_parts, path_name

BPE_BYTES_PER_TOKEN = 4.6  # N^GPT in the paper's Eq. 11 (GPT-2 BPE on FineWeb-Edu)


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
  """The learning rate at each step: a closed form of the step (nothing is tabulated, so building it does not grow
  with train.steps). Its constants are Python floats: an int past int32 cannot enter a jitted computation (the
  config refuses train.steps above MAX_STEPS, config/schema.py)."""
  warmup = float(min(cfg.warmup_steps, cfg.steps))
  peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
  decay_start = float(max(cfg.steps - int(round(cfg.decay_fraction * cfg.steps)), warmup))
  last = float(cfg.steps - 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * jnp.minimum(1.0, (step + 1) / max(warmup, 1.0))
    if cfg.schedule == "constant":
      return warm
    if cfg.schedule == "cosine":
      frac = jnp.clip((step - warmup) / max(last - warmup, 1.0), 0.0, 1.0)  # floor at the last step
      decayed = floor + (peak - floor) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
    else:  # wsd: stable, then a "1 - sqrt" cooldown over the last decay_fraction of the steps
      frac = jnp.clip((step - decay_start) / max(last - decay_start, 1.0), 0.0, 1.0)
      decayed = floor + (peak - floor) * (1 - jnp.sqrt(frac))
    return jnp.where(step < warmup, warm, decayed)

  return schedule


def paper_lr_multipliers(cfg: ModelConfig) -> tuple[float, ...]:
  """lambda^s = sqrt(N_GPT * prod_{i>=s} N^i / prod_i N^i * D^S / D^s), N^S := 1 (paper Eq. 11); 1.0 for S = 0."""
  stages = cfg.num_stages
  if stages == 0:
    return (1.0,)
  ratios = list(cfg.target_ratio) + [1.0]
  total = math.prod(ratios)
  return tuple(
    math.sqrt(BPE_BYTES_PER_TOKEN * math.prod(ratios[s:]) / total * cfg.d_model[-1] / cfg.d_model[s])
    for s in range(stages + 1)
  )


def level_of(path: tuple) -> int:
  return sum(1 for k in path if getattr(k, "key", getattr(k, "name", None)) == "main")


def _names(path: tuple) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def decay_mask(params):
  """True for matrices that get weight decay; norms, embeddings, biases and SSM scalars get none."""

  def decays(path, x):
    names = _names(path)
    return x.ndim >= 2 and "table" not in names

  return jax.tree_util.tree_map_with_path(decays, params)


def level_multiplier(path: tuple, multipliers: tuple[float, ...]) -> float:
  """The per-level learning-rate multiplier of the parameter at `path`."""
  return multipliers[min(level_of(path), len(multipliers) - 1)]


def scale_by_path(factor_of) -> optax.GradientTransformation:
  """Scales each update by `factor_of(tree path)`: computed from the path of the tree it is given, so it works
  inside `optax.multi_transform`, whose branches see the other branch's leaves as empty nodes."""

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(lambda path, u: u * factor_of(path), updates), state

  return optax.GradientTransformation(init, update)


def lr_multipliers(cfg: ModelConfig) -> tuple[float, ...]:
  return cfg.lr_multipliers or paper_lr_multipliers(cfg)


def plain_adamw(train: TrainConfig, params) -> optax.GradientTransformation:
  """AdamW on train.* (schedule, decay mask, clipping at train.grad_clip): the optimizer of the runs with their own
  objective (MrT5, MergeDNA), which have no per-level multipliers, scales or frozen parts."""
  adamw = optax.adamw(
    lr_schedule(train),
    b1=train.b1,
    b2=train.b2,
    eps=train.eps,
    weight_decay=train.weight_decay,
    mask=decay_mask(params),
  )
  return optax.chain(optax.clip_by_global_norm(train.grad_clip), adamw) if train.grad_clip else adamw


def make_optimizer(train: TrainConfig, model: ModelConfig, params) -> optax.GradientTransformation:
  """AdamW (clipping, decay mask) x per-level multipliers x `train.lr_scale`; parameters that `train.freeze` selects
  get no update and no optimizer state."""
  parts = []
  if train.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(train.grad_clip))  # over the trained parameters only
  parts.append(
    optax.adamw(
      lr_schedule(train), b1=train.b1, b2=train.b2, eps=train.eps, weight_decay=train.weight_decay, mask=decay_mask
    )
  )
  multipliers = lr_multipliers(model)
  named, scales = named_parts(model), train.lr_scales()
  check_selectors([sel for sel, _ in scales], params, model, "train.lr_scale")

  def factor_of(path) -> float:
    name = path_name(path)
    scale = next((f for sel, f in reversed(scales) if matches(name, sel, named)), 1.0)
    return level_multiplier(path, multipliers) * scale

  if scales or any(m != 1.0 for m in multipliers):
    parts.append(scale_by_path(factor_of))
  tx = optax.chain(*parts)
  if not train.freeze:
    return tx
  check_selectors(train.freeze, params, model, "train.freeze")
  labels = jax.tree.map(lambda f: "frozen" if f else "trained", frozen_mask(params, model, train.freeze))
  if "trained" not in jax.tree.leaves(labels):
    raise ConfigError(f"train.freeze: {list(train.freeze)} selects every parameter; nothing would train")
  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
