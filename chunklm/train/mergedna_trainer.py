"""`chunklm mergedna train | eval`: MergeDNA pretrained on random windows of a DNA corpus with its two objectives
(train/mergedna_loss.py), on the shared loop (train/loop.py).

The workdir (run/workdir.py) holds config.yaml, orbax checkpoints (parameters and optimizer) and metrics.jsonl
(both objectives in bits per base, bases per merged token, overflow every train.log_every steps); batches are a
function of (data.seed, step) and the masking key of (train.seed, step), so re-running `train` resumes exactly,
and the resume rule (train/resume.py, MERGEDNA_RULE) refuses changes the checkpoints cannot continue with. The
evaluation at the end (and `mergedna eval`) is over a fixed set of held-out windows with a fixed masking key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import jax
import numpy as np
import optax
from flax import nnx

from chunklm import logs
from chunklm.config import dump_yaml, load_config
from chunklm.config.mergedna import MergeDNARun
from chunklm.data.corpus import Documents, load_splits
from chunklm.data.windows import window_batch
from chunklm.errors import CheckpointError, UserError
from chunklm.model.flops import mergedna_train_flops_per_base
from chunklm.model.functional import merge_model, split_model
from chunklm.model.mergedna import MergeDNA
from chunklm.progress import bar
from chunklm.run.checkpoint import Checkpointer
from chunklm.run.kind import require, require_new_or
from chunklm.run.lock import workdir_lock
from chunklm.run.workdir import RunDir
from chunklm.train.loop import run_steps
from chunklm.train.mergedna_loss import losses
from chunklm.train.optim import plain_adamw
from chunklm.train.resume import MERGEDNA_RULE, check_resume

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "mergedna"
EVAL_WINDOWS = 128  # held-out windows evaluated (a fixed set)
WANTS = "this takes a MergeDNA run (train one with `chunklm mergedna train`)"


def load_mergedna_config(path, overrides=()) -> MergeDNARun:
  return load_config(path, list(overrides), root=MergeDNARun, folder=CONFIG_DIR)


def build(cfg: MergeDNARun):
  """(graphdef, params) of a fresh model at train.seed."""
  return split_model(MergeDNA(cfg.mergedna, rngs=nnx.Rngs(params=cfg.train.seed)))


def make_train_step(cfg: MergeDNARun, graphdef, tx):
  """(state, batch, step) -> (state, metrics); the masking key is a function of (train.seed, step)."""
  root = jax.random.key(cfg.train.seed)

  @jax.jit
  def step(state, batch, k):
    def loss_fn(p):
      return losses(cast(MergeDNA, merge_model(graphdef, p)), batch, jax.random.fold_in(root, k), cfg.objective)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, metrics

  return step


def _abstract_state(cfg: MergeDNARun) -> dict:
  def make():
    params = build(cfg)[1]
    return {"params": params, "opt": plain_adamw(cfg.train, params).init(params)}

  return jax.eval_shape(make)


def _splits(cfg: MergeDNARun, run: RunDir) -> tuple[Documents, Documents]:
  splits = load_splits(cfg.data, cache_dir=run.cache)
  return splits.train, splits.valid


def train_mergedna(cfg: MergeDNARun, workdir: str | Path, *, progress: bool = True, log=logs.info) -> dict:
  """Trains (or resumes) the MergeDNA run in `workdir`; returns its final evaluation (also in eval.json). SIGTERM
  saves a checkpoint and raises `Preempted`."""
  run = RunDir(workdir)
  require_new_or(run.path, ("mergedna",), "--workdir", "chunklm mergedna train")
  with workdir_lock(run.path, "chunklm mergedna train") as lock:
    changes = None
    if run.config.exists() and run.has_checkpoints():
      old = load_config(run.config, root=MergeDNARun)
      changes = check_resume(run.path, old, cfg, _abstract_state, rule=MERGEDNA_RULE)
    train_docs, valid_docs = _splits(cfg, run)
    graphdef, params = build(cfg)
    tx = plain_adamw(cfg.train, params)
    state = {"params": params, "opt": tx.init(params)}
    ckpt = Checkpointer(run.checkpoints, keep=cfg.train.keep_checkpoints, guard=lock.check)
    start = 0
    restored = ckpt.restore_latest(state)
    if restored is not None:
      start, state = restored[0], restored[1]
      log(f"resumed from step {start}")
      if changes is not None and changes.free:
        log(f"changed on resume: {'; '.join(changes.free)}")
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    log(f"mergedna: {n_params:,} parameters; {len(train_docs)} training documents ({train_docs.num_bytes:,} bases)")
    run.config.write_text(dump_yaml(cfg))
    d, t = cfg.data, cfg.train

    def batch(k: int) -> dict:
      return window_batch(train_docs, d.seed, k, t.batch_size, d.seq_len, d.dna.reverse_complement)

    step = make_train_step(cfg, graphdef, tx)
    show = ("mtr_bpb", "amtm_bpb", "bases_per_token")
    try:
      state = run_steps(run, ckpt, t, state, start, step, batch, show=show, progress=progress)
    finally:
      ckpt.close()
    result = {"workdir": str(run.path), "step": t.steps, **evaluate(cfg, graphdef, state["params"], valid_docs)}
    run.eval_json.write_text(json.dumps(result, indent=1) + "\n")
    return result


def evaluate(cfg: MergeDNARun, graphdef, params, docs: Documents, batch_size: int = 16, progress=False) -> dict:
  """Both objectives (bits per base), bases per merged token, masked and overflow fractions (of both passes), each
  merging block's ratio, averaged over EVAL_WINDOWS fixed held-out windows (seed data.seed + 1) with a fixed masking
  key, and the nominal and executed training FLOPs per base at those ratios (model/flops.py)."""

  @jax.jit
  def metrics(params, batch, i):
    return losses(
      cast(MergeDNA, merge_model(graphdef, params)), batch, jax.random.fold_in(jax.random.key(1), i), cfg.objective
    )[1]

  n = -(-EVAL_WINDOWS // batch_size)
  rows = []
  for i in bar(range(n), enabled=progress, desc="evaluating", unit="batch"):
    batch = window_batch(docs, cfg.data.seed + 1, i, batch_size, cfg.data.seq_len)
    rows.append(jax.device_get(metrics(params, batch, i)))
  keys = ("mtr_bpb", "amtm_bpb", "bases_per_token", "masked", "overflow", "masked_overflow")
  out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
  ratios = tuple(float(np.mean([r[f"ratio_{k}"] for r in rows])) for k in range(len(cfg.mergedna.merge_ratios)))
  single = out["masked"] if cfg.objective.masked_tokens == "bases" else 0.0
  flops = mergedna_train_flops_per_base(cfg.mergedna, cfg.data.seq_len, ratios, single=single)
  executed = mergedna_train_flops_per_base(cfg.mergedna, cfg.data.seq_len, ratios, executed=True)
  return {**out, "ratios": list(ratios), "train_flops_per_base": flops, "executed_flops_per_base": executed}


def open_mergedna(workdir: str | Path, flag: str = "--workdir", log=logs.warning):
  """(cfg, model, step) of the newest checkpoint of a MergeDNA run."""
  run = RunDir(workdir)
  require(run.path, ("mergedna",), flag, WANTS)
  cfg = load_config(run.config, root=MergeDNARun)
  graphdef, like = build(cfg)
  restored = Checkpointer(run.checkpoints, read_only=True).restore_latest({"params": like}, log=log, partial=True)
  if restored is None:
    raise CheckpointError(f"no checkpoints in {run.checkpoints}")
  return cfg, merge_model(graphdef, restored[1]["params"]), restored[0]


def eval_mergedna_run(workdir: str | Path, batch_size: int = 16, progress: bool = False) -> dict:
  """`chunklm mergedna eval`: the newest checkpoint evaluated on the run's held-out windows."""
  if batch_size < 1:
    raise UserError(f"--batch-size must be >= 1, got {batch_size}")
  cfg, model, step = open_mergedna(workdir)
  graphdef, params = split_model(model)
  _, valid = _splits(cfg, RunDir(workdir))
  return {"workdir": str(workdir), "step": step, **evaluate(cfg, graphdef, params, valid, batch_size, progress)}
