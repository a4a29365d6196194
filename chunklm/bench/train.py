"""`chunklm bench train`: compile time, median step time and training bytes/s of a config on this machine."""

from __future__ import annotations

import statistics

import numpy as np

from chunklm.bench.breakdown import breakdown
from chunklm.bench.timing import machine, real_batches, time_train_steps
from chunklm.config import load_config
from chunklm.model.flops import train_flops_per_byte
from chunklm.train.trainer import setup_state


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
    rows = breakdown(cfg)
    total = sum(t for _, t in rows)
    print(f"\nforward+backward of each part alone (sum {total * 1e3:.0f} ms vs fused step {step_s * 1e3:.0f} ms):")
    for name, t in rows:
      print(f"  {name:55s} {t * 1e3:8.1f} ms  {100 * t / total:5.1f} %")
    out["breakdown"] = rows
  return out
