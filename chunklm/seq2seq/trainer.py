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
Evaluation: cross-entropy per target byte (bits), the deletion rate and the mean kept length with hard deletion
(each batch compacted into the smallest bucket that holds it), the deletion rate per kind of input byte
(`deleted_by_class`: vowels, consonants, digits, whitespace, punctuation, other; kinds absent from the input are left
out), and for seq2seq tasks exact-match accuracy of greedy decoding.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from chunklm import logs
from chunklm.config import dump_yaml, load_config
from chunklm.config.mrt5 import MrT5Run
from chunklm.data.corpus import load_splits
from chunklm.data.pipeline import BOS
from chunklm.data.span_corruption import EOS
from chunklm.errors import CheckpointError
from chunklm.model.delete_gate import pi_update
from chunklm.model.functional import path_name, split_model
from chunklm.model.mrt5 import MrT5, bucket_capacity
from chunklm.progress import bar
from chunklm.run.checkpoint import Checkpointer
from chunklm.run.lock import workdir_lock
from chunklm.run.workdir import RunDir
from chunklm.seq2seq.batches import chunks, pack, pair_batch, read_pairs, span_batch
from chunklm.seq2seq.byte_classes import CLASS_NAMES, class_counts
from chunklm.train.optim import decay_mask, lr_schedule
from chunklm.train.reporter import NanPolicy, Reporter
from chunklm.train.signals import Preempted, StopFlag

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "mrt5"
EVAL_WINDOWS = 256  # span objective: held-out windows evaluated (a fixed set)


def load_mrt5_config(path, overrides=()) -> MrT5Run:
  return load_config(path, list(overrides), root=MrT5Run, folder=CONFIG_DIR)


def build(cfg: MrT5Run):
  return split_model(MrT5(cfg.mrt5, rngs=nnx.Rngs(params=cfg.train.seed)))


def _optimizer(cfg: MrT5Run, params):
  t = cfg.train
  adamw = optax.adamw(lr_schedule(t), b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
                      mask=decay_mask(params))
  return optax.chain(optax.clip_by_global_norm(t.grad_clip), adamw) if t.grad_clip else adamw


def losses(model: MrT5, batch: dict, mode: str = "soft", capacity: int | None = None, gate_on=1.0,
           front=None) -> dict:
  logits, enc = model(batch["ids"], batch["valid"], batch["dec_in"], batch["dec_valid"], mode, capacity, gate_on,
                      front)
  dv = batch["dec_valid"].astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  v = batch["valid"].astype(jnp.float32)
  g = enc.g_BxL if enc.g_reg_BxL is None else enc.g_reg_BxL  # the regulariser trains the gate, not the encoder
  n = jnp.maximum(v.sum(), 1)
  g_mean = jnp.sum(g * v) / n
  g_std = jnp.sqrt(jnp.maximum(jnp.sum(jax.lax.stop_gradient(g - g_mean) ** 2 * v) / n, 0.0))
  return {"ce_sum": jnp.sum(ce * dv), "targets": dv.sum(), "g_mean": g_mean, "g_std": g_std,
          "kept": jnp.sum(enc.keep_BxL * v), "positions": v.sum()}


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
    updates = jax.tree_util.tree_map_with_path(
        lambda path, u: u * m.gate_lr_scale if _is_gate(path) else u, updates)
    params = optax.apply_updates(params, updates)
    if m.gate_ema > 0:  # the average starts from the gate's parameters when it is switched on (untrained before)
      ema = jax.tree.map(lambda e, x: jnp.where(active, m.gate_ema * e + (1 - m.gate_ema) * x, x), ema,
                         gate_leaves(params))
    deleted = 1.0 - out["kept"] / jnp.maximum(out["positions"], 1)
    if m.alpha < 0:
      p_acc, i_acc, new_alpha = pi_update(pi["p_acc"], pi["i_acc"], m.target_deletion - deleted, m.k_p, m.k_i,
                                          -jnp.inf if m.two_sided else 0.0)
      pi = jax.tree.map(lambda new, old: jnp.where(active, new, old),
                        {"p_acc": p_acc, "i_acc": i_acc, "alpha": new_alpha}, pi)
    return params, opt_state, pi, ema, {"loss": loss, "ce": ce, "deleted": deleted, "alpha": alpha,
                                        "g_mean": out["g_mean"], "g_std": out["g_std"]}

  return step


class Data:
  """The run's batches: training batch `step`, and the fixed evaluation batches."""

  def __init__(self, cfg: MrT5Run, cache_dir: Path):
    self.cfg = cfg
    s, d = cfg.seq2seq, cfg.data
    if s.objective == "span":
      splits = load_splits(d, cache_dir=cache_dir)
      self.train_docs, self.valid_docs = splits.train, splits.valid
    else:
      self.train_pairs, self.test_pairs = read_pairs(s.train_file), read_pairs(s.test_file)
      for pairs, where in ((self.train_pairs, s.train_file), (self.test_pairs, s.test_file)):
        pack(pairs, d.seq_len, s.target_len, where)  # every record fits, or a one-line error now

  def train_batch(self, step: int) -> dict:
    c, s = self.cfg, self.cfg.seq2seq
    if s.objective == "span":
      return span_batch(self.train_docs, c.data.seed, step, c.train.batch_size, c.data.seq_len, s.target_len,
                        s.noise_density, s.mean_span)
    return pair_batch(self.train_pairs, c.data.seed, step, c.train.batch_size, c.data.seq_len, s.target_len,
                      s.train_file)

  def eval_batches(self, batch_size: int) -> list[dict]:
    c, s = self.cfg, self.cfg.seq2seq
    if s.objective == "span":
      n = -(-EVAL_WINDOWS // batch_size)
      return [span_batch(self.valid_docs, c.data.seed + 1, i, batch_size, c.data.seq_len, s.target_len,
                         s.noise_density, s.mean_span) for i in range(n)]
    return [pack(p, c.data.seq_len, s.target_len) for p in chunks(self.test_pairs, batch_size)]


def check_same_run(workdir: str | Path | RunDir, cfg: MrT5Run, elsewhere: str = "use another --workdir") -> None:
  """A one-line CheckpointError when `workdir` holds an MrT5 run with other model, data, objective, seed or batch
  settings than `cfg` (nothing to check in a new workdir)."""
  run = RunDir(workdir)
  if run.config.exists():
    old = load_config(run.config, root=MrT5Run)
    if (old.mrt5, old.data, old.seq2seq, old.train.seed, old.train.batch_size) != \
        (cfg.mrt5, cfg.data, cfg.seq2seq, cfg.train.seed, cfg.train.batch_size):
      raise CheckpointError(f"{workdir} holds an MrT5 run with other model, data or objective settings; resume "
                            f"with the same config, or {elsewhere}")


def train_mrt5(cfg: MrT5Run, workdir: str | Path, *, progress: bool = True, log=logs.info) -> dict:
  """Trains (or resumes) the MrT5 run in `workdir` and returns its final evaluation (also in eval.json). SIGTERM
  saves a checkpoint and raises `Preempted`."""
  run = RunDir(workdir)
  with workdir_lock(run.path, "chunklm mrt5 train"):
    check_same_run(run, cfg)
    data = Data(cfg, run.cache)
    graphdef, params = build(cfg)
    tx = _optimizer(cfg, params)
    state = {"params": params, "opt": tx.init(params),
             "pi": {k: jnp.asarray(max(cfg.mrt5.alpha, 0.0) if k == "alpha" else 0.0, jnp.float32)
                    for k in ("p_acc", "i_acc", "alpha")}}
    if cfg.mrt5.gate_ema > 0:
      state["gate_ema"] = gate_leaves(params)
    ckpt = Checkpointer(run.checkpoints, keep=cfg.train.keep_checkpoints)
    restored = ckpt.restore_latest(state)
    start = 0
    if restored is not None:
      start, state, _ = restored
      log(f"resumed from step {start}")
    run.config.write_text(dump_yaml(cfg))
    try:
      state = _train_steps(cfg, graphdef, tx, state, data, ckpt, run, start, progress, log)
    finally:
      ckpt.close()
    params = state["params"] if "gate_ema" not in state else with_gate(state["params"], state["gate_ema"])
    result = eval_record(run.path, cfg.train.steps, evaluate_mrt5(cfg, graphdef, params, data))
    run.eval_json.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _train_steps(cfg: MrT5Run, graphdef, tx, state: dict, data: Data, ckpt: Checkpointer, run: RunDir, start: int,
                 progress: bool, log) -> dict:
  """Steps `start` to train.steps with checkpoints, metrics and progress (train/reporter.py); the final state."""
  step_fn = make_train_step(cfg, graphdef, tx)
  params, opt, pi, ema = state["params"], state["opt"], state["pi"], state.get("gate_ema", {})
  good = [start] if start else []
  nan = NanPolicy("stop", 1, lambda: f"the last good checkpoint is step {good[-1]}" if good else
                  "no checkpoint was written yet")
  reporter = Reporter(run, total=cfg.train.steps, start=start, end=cfg.train.steps, log_every=cfg.train.log_every,
                      progress=progress, show=("ce", "deleted", "alpha"), nan=nan)
  try:
    with StopFlag() as stop:
      for k in range(start, cfg.train.steps):
        batch = jax.tree.map(jnp.asarray, data.train_batch(k))
        params, opt, pi, ema, out = step_fn(params, opt, pi, ema, batch, jnp.int32(k))
        done = k + 1
        reporter.dispatched(done, out)
        if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps or stop.set:
          reporter.flush()
          ckpt.save(done, {"params": params, "opt": opt, "pi": pi, **({"gate_ema": ema} if ema else {})}, None,
                    {"step": done})
          good.append(done)
        if stop.set:
          raise Preempted(f"received SIGTERM: saved checkpoint at step {done}; re-run the same command to resume")
      reporter.flush()
  finally:
    reporter.close()
  return {"params": params, "opt": opt, "pi": pi, **({"gate_ema": ema} if ema else {})}


def eval_record(workdir: str | Path, step: int, result: dict) -> dict:
  """What eval.json and `mrt5 eval --json` hold: the run and step evaluated, then `evaluate_mrt5`'s figures."""
  return {"workdir": str(workdir), "step": step, **result}


def eval_mrt5_run(workdir: str | Path, batch_size: int = 16, progress: bool = False) -> dict:
  """`chunklm mrt5 eval`: the newest checkpoint of the MrT5 run in `workdir` evaluated on its own data."""
  cfg, graphdef, params, step = open_mrt5(workdir)
  data = Data(cfg, RunDir(workdir).cache)
  return eval_record(workdir, step, evaluate_mrt5(cfg, graphdef, params, data, batch_size, progress=progress))


def open_mrt5(workdir: str | Path, log=logs.warning):
  """(cfg, graphdef, params, step) of the newest checkpoint of an MrT5 run; params are those inference uses (the
  gate's moving average in place of its last parameters where mrt5.gate_ema > 0)."""
  run = RunDir(workdir)
  if not run.config.exists():
    raise CheckpointError(f"{run} is not an MrT5 run (no {run.config.name}); train one with `chunklm mrt5 train`")
  cfg = load_config(run.config, root=MrT5Run)
  graphdef, like = build(cfg)
  like = {"params": like, **({"gate_ema": gate_leaves(like)} if cfg.mrt5.gate_ema > 0 else {})}
  restored = Checkpointer(run.checkpoints, read_only=True).restore_latest(like, log=log, partial=True)
  if restored is None:
    raise CheckpointError(f"no checkpoints in {run.checkpoints}")
  step, state = restored[0], restored[1]
  return cfg, graphdef, with_gate(state["params"], state["gate_ema"]) if "gate_ema" in like else state["params"], step


def hard_front(graphdef, params, batch: dict, buckets) -> tuple[int, np.ndarray, tuple[jax.Array, jax.Array]]:
  """(the bucket that holds every row's kept positions, keep_BxL on the host, the front's (h, G) on the device for
  `MrT5.encode(front=...)`): the encoder's part before hard deletion, run once per batch."""
  x, g, keep_BxL = front(graphdef, params, jnp.asarray(batch["ids"]), jnp.asarray(batch["valid"]))
  keep_BxL = np.asarray(keep_BxL)
  return bucket_capacity(int(keep_BxL.sum(axis=1).max()), batch["ids"].shape[1], buckets), keep_BxL, (x, g)


def _front(graphdef, params, ids, valid):
  """(states after the gate's blocks, G, kept positions): the part of the encoder before hard deletion."""
  m = nnx.merge(graphdef, params)
  x, g = m.encode_front(ids, valid)
  return x, g, (g > m.cfg.gate_scale / 2) & valid


front = jax.jit(_front, static_argnums=0)


def _eval_losses(graphdef, params, batch, mode, capacity, front_states):
  return losses(nnx.merge(graphdef, params), batch, mode, capacity, front=front_states)


_eval_jit = jax.jit(_eval_losses, static_argnums=(0, 3, 4))


def greedy_decode(graphdef, params, batch: dict, mode: str, capacity: int | None, front_states=None) -> list[bytes]:
  """Greedy continuations from BOS, cut at EOS, up to the decoder length (cached decoding: the encoder runs once,
  each decoder step reads its key/value caches); `front_states` as for `MrT5.encode`."""
  out = np.asarray(_greedy_jit(graphdef, params, jnp.asarray(batch["ids"]), jnp.asarray(batch["valid"]),
                               batch["dec_in"].shape[1], mode, capacity, front_states))
  texts = []
  for row in out.tolist():
    texts.append(bytes(row[:row.index(EOS)] if EOS in row else row))
  return texts


def _greedy(graphdef, params, ids, valid, length, mode, capacity, front_states):
  m = nnx.merge(graphdef, params)
  enc = m.encode(ids, valid, mode, capacity, front=front_states)

  def body(carry, t):
    token, caches = carry
    logits, caches = m.decode_step(enc, token, t, caches)
    nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return (nxt, caches), nxt

  start = jnp.full((ids.shape[0],), BOS, jnp.int32)
  _, tokens_TxB = jax.lax.scan(body, (start, m.init_cache(enc, length)), jnp.arange(length))
  return tokens_TxB.T


_greedy_jit = jax.jit(_greedy, static_argnums=(0, 4, 5, 6))


def evaluate_mrt5(cfg: MrT5Run, graphdef, params, data: Data, batch_size: int = 16, progress: bool = False) -> dict:
  sums = {"ce_sum": 0.0, "targets": 0.0, "kept": 0.0, "positions": 0.0, "slots": 0.0, "soft_ce_sum": 0.0,
          "inputs": 0.0}
  correct = total = 0
  by_class = np.zeros((len(CLASS_NAMES), 2), np.int64)
  for batch in bar(data.eval_batches(batch_size), enabled=progress, desc="eval", unit="batch"):
    cap, keep_BxL, front_states = hard_front(graphdef, params, batch, cfg.mrt5.buckets)
    by_class += class_counts(batch["ids"], batch["valid"], keep_BxL)
    jb = jax.tree.map(jnp.asarray, batch)
    hard = jax.device_get(_eval_jit(graphdef, params, jb, "hard", cap, front_states))
    soft = jax.device_get(_eval_jit(graphdef, params, jb, "soft", None, front_states))
    for key in ("ce_sum", "targets", "kept", "positions"):
      sums[key] += float(hard[key])
    sums["soft_ce_sum"] += float(soft["ce_sum"])
    sums["slots"] += cap * batch["ids"].shape[0]
    sums["inputs"] += batch["ids"].size
    if cfg.seq2seq.objective == "seq2seq":
      got = greedy_decode(graphdef, params, batch, "hard", cap, front_states)
      for r, text in enumerate(got):
        want = bytes(batch["targets"][r][batch["dec_valid"][r]].tolist())[:-1]
        correct += text == want
        total += 1
  n = max(sums["targets"], 1.0)
  deleted_total = max(int(by_class[:, 1].sum()), 1)
  out = {"bits_per_target_byte": sums["ce_sum"] / n / math.log(2),
         "bits_per_target_byte_soft": sums["soft_ce_sum"] / n / math.log(2),
         "deletion_rate": 1 - sums["kept"] / max(sums["positions"], 1.0),
         "encoder_slots_per_input": sums["slots"] / max(sums["inputs"], 1.0),
         "deleted_by_class": {name: {"positions": count, "deletion_rate": deleted / count,
                                     "share_of_deleted": deleted / deleted_total}
                              for name, (count, deleted) in zip(CLASS_NAMES, by_class.tolist()) if count}}
  if total:
    out["exact_match"] = correct / total
  return out
