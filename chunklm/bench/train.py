"""`chunklm bench train`: compile time, median step time and training bytes/s of a config on this machine."""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import numpy as np

from chunklm.config import load_config
from chunklm.data.corpus import load_splits
from chunklm.data.pipeline import PackedWindows
from chunklm.model.flops import train_flops_per_byte
from chunklm.train.step import make_train_step
from chunklm.train.trainer import setup_state


def machine() -> str:
  dev = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  kind = dev.device_kind if dev.platform != "cpu" else f"CPU ({os.cpu_count()} cores, {cpu})"
  return f"{kind}, jax {jax.__version__}"


def real_batches(cfg, count: int) -> list[dict]:
  """Batches of packed windows from the configured training data (the built-in corpus by default)."""
  from chunklm.data.tokenizer import tokenize
  from chunklm.train.restore import run_tokenizer
  docs = load_splits(cfg.data).train
  tok = run_tokenizer(cfg)
  vocab = {}
  if tok is not None:
    docs, vocab = tokenize(docs, tok), {"bos": tok.bos_id, "piece_bytes": tok.piece_bytes}
  windows = PackedWindows(docs, cfg.data.seq_len, seed=cfg.data.seed, **vocab)
  b = cfg.train.batch_size
  return [{k: np.stack([windows[i * b + j][k] for j in range(b)]) for k in windows[0]} for i in range(count)]


def median_time(fn, args, repeats: int, warmup: int = 0) -> float:
  """Median seconds of fn(*args) over `repeats` calls, after one compiling call and `warmup` more."""
  jax.block_until_ready(fn(*args))
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def time_train_steps(graphdef, tx, state, batches: list[dict], warmup: int) -> tuple[float, list[float], dict]:
  """(compile seconds, seconds of each step after the first `warmup` + 1, the last step's metrics)."""
  step_fn = make_train_step(graphdef, tx)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - t0
  times, metrics = [], None
  for i, batch in enumerate(batches):
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    if i > warmup:
      times.append(time.perf_counter() - t)
  return compile_s, times, metrics


def bench_train(config: str, overrides: list[str], steps: int, warmup: int, show_breakdown: bool = False) -> dict:
  cfg = load_config(config, overrides)
  graphdef, tx, state, num_params = setup_state(cfg)
  batches = real_batches(cfg, steps + warmup + 1)
  compile_s, times, metrics = time_train_steps(graphdef, tx, state, batches, warmup)
  step_s = statistics.median(times)
  window_bytes = float(np.mean([b["target_bytes"].sum() for b in batches]))  # text bytes per step
  per_token = window_bytes / float(np.mean([b["loss_mask"].sum() for b in batches]))  # 1 for byte models
  measured = tuple(1.0 if s == 0 else float(metrics[f"bytes_per_position_l{s}"])
                   for s in range(cfg.model.num_levels)) if cfg.model.num_stages else None
  flops = train_flops_per_byte(cfg.model, cfg.data.seq_len, measured,
                               bytes_per_token=per_token if cfg.data.tokenizer else 1.0)
  out = {"config": str(config), "overrides": " ".join(overrides), "params": num_params, "compile_s": compile_s,
         "step_s": step_s, "bytes_per_s": window_bytes / step_s, "flops_per_byte": flops,
         "achieved_gflops": flops * window_bytes / step_s / 1e9, "machine": machine()}
  print(f"config            : {config} {out['overrides']}")
  print(f"machine           : {out['machine']}")
  print(f"parameters        : {num_params:,}")
  print(f"batch x seq_len   : {cfg.train.batch_size} x {cfg.data.seq_len}")
  print(f"compile           : {compile_s:.1f} s")
  print(f"step (median of {len(times)}): {step_s * 1e3:.1f} ms  (min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})")
  print(f"training bytes/s  : {out['bytes_per_s']:,.0f}")
  print(f"train FLOPs/byte  : {flops / 1e6:.2f} M  ({out['achieved_gflops']:.1f} GFLOP/s achieved)")
  print(f"| {config} {out['overrides']} | {num_params / 1e6:.2f} M | {compile_s:.1f} s | {step_s * 1e3:.0f} ms | "
        f"{out['bytes_per_s']:,.0f} | {flops / 1e6:.2f} M | {out['machine']} |")
  if show_breakdown:
    from chunklm.bench.breakdown import breakdown
    rows = breakdown(cfg)
    total = sum(t for _, t in rows)
    print(f"\nforward+backward of each part alone (sum {total * 1e3:.0f} ms vs fused step {step_s * 1e3:.0f} ms):")
    for name, t in rows:
      print(f"  {name:55s} {t * 1e3:8.1f} ms  {100 * t / total:5.1f} %")
    out["breakdown"] = rows
  return out
