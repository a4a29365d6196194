"""`chunklm mrt5 train | eval`: the MrT5 encoder-decoder trained with soft deletion, evaluated with hard deletion.

Loss = cross-entropy over the target bytes + alpha * mean(G) over the valid input positions. alpha is
`mrt5.alpha`, or (alpha < 0) MrT5's PI controller towards the deletion rate `mrt5.target_deletion` (k_p, k_i),
updated from each batch's hard deletion rate and used from the next step. For the first `mrt5.regularizer_delay`
steps the gate is off (computed, not applied, not trained), as MrT5 adds its gate to a trained ByT5: switched on
from the start, a tiny run's gate learned to delete every byte within 50 steps without any regulariser (attending
to nothing beats attending to a still-useless encoder) and then saturated, out of reach of its gradient.
The regulariser's gradient reaches the gate's own parameters only (G recomputed on the encoder states held fixed):
through the encoder states it moved every position's G at once, at the encoder's full rate, and the gate flipped
between deleting everything and nothing within ten steps. The gate's parameters learn at `mrt5.gate_lr_scale` x the
learning rate (default 1, as in MrT5; at 0.1 a tiny run's gate had not moved off "keep all" 150 steps after the
delay). When the gate is switched on, G hardly differs between positions (g_std in metrics.jsonl: the encoder's
states are still alike), so nothing is deleted until the regulariser has pushed the common level to the threshold
(about 200 steps in the tiny runs) while the CE spreads the positions apart. MrT5 clamps alpha >= 0;
here it may go negative (`mrt5.two_sided`, default): in tiny runs from scratch the
cross-entropy alone drove the gate to delete 0.69 of the bytes against a 0.5 target, and a clamped controller can
only sit at 0 then. The workdir (run/workdir.py) holds config.yaml, orbax checkpoints (parameters, optimizer, controller) and
metrics.jsonl (ce, deletion rate, alpha, mean and spread of G every log_every steps; train/reporter.py); batches are a function of
(seed, step), so re-running `train` resumes exactly. With `mrt5.gate_ema` > 0 the run also keeps an exponential
moving average of the gate's parameters (from the step the gate is switched on), and inference (eval, bench,
decoding) uses it instead of the last parameters, which in tiny runs delete 5-10 points more or less than the
training batches' average that the controller holds on target. The average of the parameters is not the average
deletion (a threshold of w.LN(h) + c): in tiny English runs it came closer to the target at 0.5 and further from it
at 0.7 (docs/benchmarks.md), so it is off by default.
The evaluation at the end of training (and of `mrt5 eval`) is seq2seq/evaluation.py's; the batches are
seq2seq/batches.py's.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from chunklm import logs
from chunklm.config import dump_yaml, load_config
from chunklm.config.mrt5 import MrT5Run
from chunklm.errors import CheckpointError, UserError
from chunklm.model.delete_gate import pi_update
from chunklm.model.functional import path_name, split_model
from chunklm.model.mrt5 import MrT5
from chunklm.run.checkpoint import Checkpointer
from chunklm.run.kind import require, require_new_or
from chunklm.run.lock import workdir_lock
from chunklm.run.workdir import RunDir
from chunklm.seq2seq.batches import Data
from chunklm.seq2seq.evaluation import evaluate_mrt5, losses
from chunklm.train.loop import run_steps
from chunklm.train.optim import plain_adamw
from chunklm.train.resume import MRT5_RULE, ResumeChanges, check_resume

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "mrt5"


def load_mrt5_config(path, overrides=()) -> MrT5Run:
  return load_config(path, list(overrides), root=MrT5Run, folder=CONFIG_DIR)


def build(cfg: MrT5Run):
  return split_model(MrT5(cfg.mrt5, rngs=nnx.Rngs(params=cfg.train.seed)))


def _optimizer(cfg: MrT5Run, params):
  return plain_adamw(cfg.train, params)


def _is_gate(path) -> bool:
  return path_name(path).startswith("gate_")


def gate_leaves(params) -> dict:
  """{name: leaf} of the delete gate's parameters (what `mrt5.gate_ema` averages; checkpointed by name)."""
  return {path_name(path): x for path, x in jax.tree_util.tree_flatten_with_path(params)[0] if _is_gate(path)}


def with_gate(params, gate: dict):
  """`params` with the delete gate's parameters replaced by those of `gate` (as `gate_leaves` names them)."""
  return jax.tree_util.tree_map_with_path(lambda path, x: gate[path_name(path)] if _is_gate(path) else x, params)


def make_train_step(cfg: MrT5Run, graphdef, tx):
  """(params, opt_state, pi, ema, batch, step) -> (params, opt_state, pi, ema, metrics); `ema` is the gate's moving
  average (as `gate_leaves` names it; empty when mrt5.gate_ema is 0)."""
  m = cfg.mrt5

  @jax.jit
  def step(params, opt_state, pi, ema, batch, step_idx):
    active = step_idx >= m.regularizer_delay
    alpha = jnp.where(active, pi["alpha"] if m.alpha < 0 else m.alpha, 0.0)

    def loss_fn(p):
      out = losses(nnx.merge(graphdef, p), batch, gate_on=active.astype(jnp.float32))
      ce = out["ce_sum"] / jnp.maximum(out["targets"], 1)
      return ce + jax.lax.stop_gradient(alpha) * out["g_mean"], (ce, out)

    (loss, (ce, out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree_util.tree_map_with_path(lambda path, u: u * m.gate_lr_scale if _is_gate(path) else u, updates)
    params = optax.apply_updates(params, updates)
    if m.gate_ema > 0:  # the average starts from the gate's parameters when it is switched on (untrained before)
      ema = jax.tree.map(
        lambda e, x: jnp.where(active, m.gate_ema * e + (1 - m.gate_ema) * x, x), ema, gate_leaves(params)
      )
    deleted = 1.0 - out["kept"] / jnp.maximum(out["positions"], 1)
    if m.alpha < 0:
      p_acc, i_acc, new_alpha = pi_update(
        pi["p_acc"], pi["i_acc"], m.target_deletion - deleted, m.k_p, m.k_i, -jnp.inf if m.two_sided else 0.0
      )
      pi = jax.tree.map(
        lambda new, old: jnp.where(active, new, old), {"p_acc": p_acc, "i_acc": i_acc, "alpha": new_alpha}, pi
      )
    return (
      params,
      opt_state,
      pi,
      ema,
      {"loss": loss, "ce": ce, "deleted": deleted, "alpha": alpha, "g_mean": out["g_mean"], "g_std": out["g_std"]},
    )

  return step


def check_same_run(workdir: str | Path | RunDir, cfg: MrT5Run, elsewhere: str = "use another --workdir") -> None:
  """A one-line CheckpointError when `workdir` holds an MrT5 run with other model, data, objective, seed or batch
  settings than `cfg` (nothing to check in a new workdir)."""
  run = RunDir(workdir)
  if run.config.exists():
    old = load_config(run.config, root=MrT5Run)
    if (old.mrt5, old.data, old.seq2seq, old.train.seed, old.train.batch_size) != (
      cfg.mrt5,
      cfg.data,
      cfg.seq2seq,
      cfg.train.seed,
      cfg.train.batch_size,
    ):
      raise CheckpointError(
        f"{workdir} holds an MrT5 run with other model, data or objective settings; resume "
        f"with the same config, or {elsewhere}"
      )


def initial_state(cfg: MrT5Run, params, tx) -> dict:
  """The state an MrT5 run starts from (`state_of`): `params`, a fresh optimizer and controller."""
  pi = {
    k: jnp.asarray(max(cfg.mrt5.alpha, 0.0) if k == "alpha" else 0.0, jnp.float32) for k in ("p_acc", "i_acc", "alpha")
  }
  return state_of(params, tx.init(params), pi, gate_leaves(params) if cfg.mrt5.gate_ema > 0 else {})


def _abstract_state(cfg: MrT5Run) -> dict:
  """`initial_state` as shapes and dtypes, allocating nothing (what the resume rule compares)."""

  def make():
    params = build(cfg)[1]
    return initial_state(cfg, params, _optimizer(cfg, params))

  return jax.eval_shape(make)


def _resume_changes(run: RunDir, cfg: MrT5Run) -> ResumeChanges | None:
  """The settings changed since the run's checkpoints were written, or a one-line CheckpointError when the resume
  rule (train/resume.py, MRT5_RULE) refuses them; None for a new run."""
  if not (run.config.exists() and run.has_checkpoints()):
    return None
  old = load_config(run.config, root=MrT5Run)
  return check_resume(run.path, old, cfg, _abstract_state, rule=MRT5_RULE)


def train_mrt5(cfg: MrT5Run, workdir: str | Path, *, progress: bool = True, log=logs.info) -> dict:
  """Trains (or resumes) the MrT5 run in `workdir` and returns its final evaluation (also in eval.json). SIGTERM
  saves a checkpoint and raises `Preempted`."""
  run = RunDir(workdir)
  require_new_or(run.path, ("mrt5",), "--workdir", "chunklm mrt5 train")
  with workdir_lock(run.path, "chunklm mrt5 train") as lock:
    changes = _resume_changes(run, cfg)
    data = Data(cfg, run.cache)
    graphdef, params = build(cfg)
    tx = _optimizer(cfg, params)
    state = initial_state(cfg, params, tx)
    ckpt = Checkpointer(run.checkpoints, keep=cfg.train.keep_checkpoints, guard=lock.check)
    restored = ckpt.restore_latest(state)
    start = 0
    if restored is not None:
      start, state, _ = restored
      log(f"resumed from step {start}")
      if changes is not None and changes.free:
        log(f"changed on resume: {'; '.join(changes.free)}")
    run.config.write_text(dump_yaml(cfg))
    try:
      state = _train_steps(cfg, graphdef, tx, state, data, ckpt, run, start, progress, log)
    finally:
      ckpt.close()
    params = state["params"] if "gate_ema" not in state else with_gate(state["params"], state["gate_ema"])
    result = eval_record(run.path, cfg.train.steps, evaluate_mrt5(cfg, graphdef, params, data))
    run.eval_json.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _train_steps(
  cfg: MrT5Run, graphdef, tx, state: dict, data: Data, ckpt: Checkpointer, run: RunDir, start: int, progress: bool, log
) -> dict:
  """Steps `start` to train.steps on the shared loop (train/loop.py); the final state."""
  step_fn = make_train_step(cfg, graphdef, tx)

  def step(state, batch, k):
    params, opt, pi, ema, out = step_fn(state["params"], state["opt"], state["pi"], state.get("gate_ema", {}), batch, k)
    return state_of(params, opt, pi, ema), out

  return run_steps(
    run, ckpt, cfg.train, state, start, step, data.train_batch, show=("ce", "deleted", "alpha"), progress=progress
  )


def state_of(params, opt, pi, ema: dict) -> dict:
  """The checkpointed state of an MrT5 run: parameters, optimizer, PI controller and (mrt5.gate_ema > 0) the gate's
  moving average."""
  return {"params": params, "opt": opt, "pi": pi, **({"gate_ema": ema} if ema else {})}


def eval_record(workdir: str | Path, step: int, result: dict) -> dict:
  """What eval.json and `mrt5 eval --json` hold: the run and step evaluated, then `evaluate_mrt5`'s figures."""
  return {"workdir": str(workdir), "step": step, **result}


def eval_mrt5_run(workdir: str | Path, batch_size: int = 16, progress: bool = False) -> dict:
  """`chunklm mrt5 eval`: the newest checkpoint of the MrT5 run in `workdir` evaluated on its own data."""
  if batch_size < 1:
    raise UserError(f"--batch-size must be >= 1, got {batch_size}")
  cfg, graphdef, params, step = open_mrt5(workdir)
  data = Data(cfg, RunDir(workdir).cache)
  return eval_record(workdir, step, evaluate_mrt5(cfg, graphdef, params, data, batch_size, progress=progress))


def open_mrt5(workdir: str | Path, log=logs.warning):
  """(cfg, graphdef, params, step) of the newest checkpoint of an MrT5 run; params are those inference uses (the
  gate's moving average in place of its last parameters where mrt5.gate_ema > 0)."""
  run = RunDir(workdir)
  require(run.path, ("mrt5",), "--workdir", "this takes an MrT5 run (train one with `chunklm mrt5 train`)")
  cfg = load_config(run.config, root=MrT5Run)
  graphdef, like = build(cfg)
  like = {"params": like, **({"gate_ema": gate_leaves(like)} if cfg.mrt5.gate_ema > 0 else {})}
  restored = Checkpointer(run.checkpoints, read_only=True).restore_latest(like, log=log, partial=True)
  if restored is None:
    raise CheckpointError(f"no checkpoints in {run.checkpoints}")
  step, state = restored[0], restored[1]
  return cfg, graphdef, with_gate(state["params"], state["gate_ema"]) if "gate_ema" in like else state["params"], step
