"""The pure training step: nnx.split once, then plain functions of (params, batch) (the evaluation step, which sums
rather than averages, is eval/bpb.py's).

Train state is a dict {step, params, opt_state, rng} so orbax saves and restores it as an ordinary pytree.
"params" holds every model variable: the nnx.Params and the routers' running statistics (`RouterStat`: a running
threshold, a controller state). Statistics get no gradient (the routers read them through stop_gradient), and
after the optimizer update the training step overwrites them with the values the forward pass computed.
The model returns logits and its H-Net stage records (model/stage_output.py); the loss is assembled here, as the
H-Net authors do outside the model: loss = mean NLL per predicted position (nats; a byte, or a token for the BPE
baseline) + ratio_loss_weight * sum_s L_s + confidence_loss_weight * sum_s U_s (stages whose router has a learnable
p) + sum_s router losses (all 0 for a plain stack); metrics["ratio_loss"] is that whole routing term. Bits per byte
always divide by text bytes (`target_bytes`), never by positions (`nll_sums`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from chunklm.config import ModelConfig
from chunklm.eval.bpb import nll_sums
from chunklm.model.functional import apply, merge_model, split_model
from chunklm.model.lm import CausalLM
from chunklm.model.routing import RouterStat
from chunklm.model.stage_output import StageOutput, stage_metrics

LN2 = math.log(2.0)


def init_train_state(params, tx: optax.GradientTransformation, seed: int) -> dict:
  return {
    "step": jnp.zeros((), jnp.int32),
    "params": params,
    "opt_state": tx.init(params),
    "rng": jax.random.key_data(jax.random.key(seed)),
  }


def ratio_targets(cfg: ModelConfig, step) -> tuple | None:
  """The ratio loss's target N per stage at training `step` (a traced scalar) under a ratio curriculum:
  model.ratio_start moving linearly to model.target_ratio over model.ratio_warmup_steps; None without one (each
  stage's own target_ratio) or without a step (callers outside language-model training). A run started with
  --init-from counts its own steps from 0, so it goes through the curriculum again unless its config drops it."""
  if not cfg.ratio_start or step is None:
    return None
  frac = jnp.minimum(jnp.asarray(step, jnp.float32) / cfg.ratio_warmup_steps, 1.0)
  return tuple(a + (b - a) * frac for a, b in zip(cfg.ratio_start, cfg.target_ratio))


def routing_loss(stages: tuple[StageOutput, ...], cfg: ModelConfig, targets: tuple | None = None) -> jax.Array:
  """ratio_loss_weight * sum_s L_s + confidence_loss_weight * sum_s U_s over the stages whose router has a learnable
  p, + sum_s router losses (model/stage_output.py); L_s toward `targets` (`ratio_targets`), default target_ratio."""
  targets = targets or (None,) * len(stages)
  learned = [(st, n) for st, n in zip(stages, targets, strict=True) if st.learnable_p]
  return (
    cfg.ratio_loss_weight * sum(st.ratio_loss(n) for st, n in learned)
    + cfg.confidence_loss_weight * sum(st.uncertainty for st, _ in learned)
    + sum((st.router_aux for st in stages), jnp.zeros((), jnp.float32))
  )


def loss_fn(params, graphdef, batch: dict, rng=None, step=None):
  """Mean NLL per predicted position (byte or token) + weighted ratio loss + router losses; BPB = total NLL / text
  bytes. Runs the model in training mode (router noise from `rng`; a ratio curriculum's targets at `step`);
  metrics["stats"] holds the updated router statistics, metrics["ratio_loss"] the loss beyond the NLL (H-Net
  only)."""
  model: CausalLM = merge_model(graphdef, params)  # type: ignore[assignment]  # the graphdef is a CausalLM's
  logits_BxLxV, stages = apply(model, batch, train=True, rng=rng)
  stats = nnx.state(model, RouterStat)
  total_nll, count, n_bytes = nll_sums(logits_BxLxV, batch)
  nll = total_nll / jnp.maximum(count, 1.0)
  targets = ratio_targets(model.cfg, step)
  extra = routing_loss(stages, model.cfg, targets)
  loss = nll + extra
  metrics: dict[str, Any] = {
    "loss": loss,
    "nll": nll,
    "bpb": total_nll / jnp.maximum(n_bytes, 1.0) / LN2,
    "bytes": n_bytes,
    **stage_metrics(stages, targets),
  }
  if targets is not None:
    metrics.update({f"target_ratio_s{s}": n for s, n in enumerate(targets)})
  if stages:
    metrics["ratio_loss"] = extra
  if jax.tree.leaves(stats):
    metrics["stats"] = stats
  return loss, metrics


def train_step(
  graphdef, tx: optax.GradientTransformation, state: dict, batch: dict, skip_nonfinite: bool = False, frozen=None
) -> tuple[dict, dict]:
  """One optimizer step. `skip_nonfinite` (train.nan_policy=skip): a step whose loss, gradient or updated
  parameters are not finite keeps the old parameters and optimizer state (the step counter and RNG still advance)
  and reports metrics["skipped"] = 1. `frozen` (a pytree of bools like the parameters, or None): parameters that
  train.freeze leaves as they are; metrics["grad_norm"] is over the others (and XLA need not compute the rest)."""
  rng, noise = jax.random.split(jax.random.wrap_key_data(state["rng"]))
  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state["params"], graphdef, batch, noise, state["step"]
  )
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  stats = metrics.pop("stats", None)
  if stats is not None:  # router statistics: the values of this step's forward pass, not an optimizer update
    model = merge_model(graphdef, params)
    nnx.update(model, stats)
    params = split_model(model)[1]
  trained = grads if frozen is None else [g for g, f in zip(jax.tree.leaves(grads), jax.tree.leaves(frozen)) if not f]
  metrics["grad_norm"] = optax.tree.norm(trained)
  if skip_nonfinite:
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"]) & all_finite(params)
    params, opt_state = jax.tree.map(
      lambda new, old: jnp.where(finite, new, old), (params, opt_state), (state["params"], state["opt_state"])
    )
    metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
  new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "rng": jax.random.key_data(rng)}
  return new_state, metrics


def all_finite(tree) -> jax.Array:
  """True when every float leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(
  graphdef,
  tx: optax.GradientTransformation,
  state_sharding=None,
  batch_sharding=None,
  skip_nonfinite: bool = False,
  frozen=None,
):
  """The jitted step; with shardings, state and batch are laid out on the mesh and the state stays there."""
  fn = functools.partial(train_step, graphdef, tx, skip_nonfinite=skip_nonfinite, frozen=frozen)
  if state_sharding is None:
    return jax.jit(fn, donate_argnums=0)
  return jax.jit(
    fn, in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, None), donate_argnums=0
  )
