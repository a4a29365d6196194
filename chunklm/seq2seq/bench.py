"""`chunklm mrt5 bench`: encoder throughput of trained MrT5 runs with hard deletion against the same encoder with
no deletion, on the runs' own held-out windows (median of timed passes over the same batches, after one compiling
pass per shape).

Hard deletion runs the blocks before the gate at full length, reads the kept counts on the host, and runs the
later blocks on the smallest bucket that holds the batch: so its cost falls with the deletion rate only in the
blocks after the gate.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.run.workdir import RunDir
from chunklm.seq2seq.batches import Data
from chunklm.seq2seq.evaluation import hard_front
from chunklm.seq2seq.trainer import open_mrt5


def _back(graphdef, params, ids, valid, front_states, capacity):
  return nnx.merge(graphdef, params).encode(ids, valid, "hard", capacity, front=front_states).h_BxCxD


def _full(graphdef, params, ids, valid):
  return nnx.merge(graphdef, params).encode(ids, valid, "none").h_BxCxD


BACK, FULL = jax.jit(_back, static_argnums=(0, 5)), jax.jit(_full, static_argnums=0)


def _median_seconds(fn, repeats: int) -> float:
  fn()  # compile every shape first
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def bench_encoder(workdir: str | Path, batch_size: int = 16, repeats: int = 5) -> dict:
  cfg, graphdef, params, step = open_mrt5(workdir, log=lambda *a, **k: None)
  batches = [jax.tree.map(jnp.asarray, b) for b in Data(cfg, RunDir(workdir).cache).eval_batches(batch_size)]
  n_bytes = sum(int(b["valid"].sum()) for b in batches)
  kept = positions = slots = 0

  def hard():
    nonlocal kept, positions, slots
    kept = positions = slots = 0
    for b in batches:
      cap, keep, front_states = hard_front(graphdef, params, b, cfg.mrt5.buckets)
      BACK(graphdef, params, b["ids"], b["valid"], front_states, cap).block_until_ready()
      kept, positions, slots = kept + int(keep.sum()), positions + int(b["valid"].sum()), slots + cap * len(keep)

  def full():
    for b in batches:
      FULL(graphdef, params, b["ids"], b["valid"]).block_until_ready()

  t_hard, t_full = _median_seconds(hard, repeats), _median_seconds(full, repeats)
  return {
    "workdir": str(workdir),
    "step": step,
    "target_deletion": cfg.mrt5.target_deletion,
    "deletion_rate": 1 - kept / max(positions, 1),
    "slots_per_input": slots / sum(b["ids"].size for b in batches),
    "bytes": n_bytes,
    "hard_bytes_per_s": n_bytes / t_hard,
    "full_bytes_per_s": n_bytes / t_full,
  }
