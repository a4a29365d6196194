"""`chunklm bench train`: compile time, median step time and training bytes/s of a config on this machine."""

from __future__ import annotations

import statistics

import jax
import numpy as np

from chunklm.bench.breakdown import breakdown
from chunklm.bench.timing import machine, real_batches, time_train_steps, with_corpus_cap
from chunklm.config import load_config
from chunklm.model.describe import describe_config
from chunklm.model.flops import train_flops_per_byte
from chunklm.train.trainer import setup_state

# dense bfloat16 peak TFLOP/s per chip, by a substring of jax's device_kind (vendor data sheets)
PEAK_BF16_TFLOPS = {
  "H200": 989.0,
  "H100": 989.0,
  "A100": 312.0,
  "TPU v5p": 459.0,
  "TPU v5 lite": 197.0,
  "TPU v5e": 197.0,
  "TPU v4": 275.0,
  "TPU v6": 918.0,
}


def peak_tflops(device_kind: str) -> float | None:
  return next((v for k, v in PEAK_BF16_TFLOPS.items() if k.lower() in device_kind.lower()), None)


def bench_train(config: str, overrides: list[str], steps: int, warmup: int, show_breakdown: bool = False) -> dict:
  cfg = with_corpus_cap(load_config(config, overrides))  # documents per window as training sets them
  graphdef, tx, state, num_params = setup_state(cfg)
  batches = real_batches(cfg, steps + warmup + 1)
  compile_s, times, metrics = time_train_steps(graphdef, tx, state, batches, warmup)
  step_s = statistics.median(times)
  window_bytes = float(np.mean([b["target_bytes"].sum() for b in batches]))  # text bytes per step
  per_token = window_bytes / float(np.mean([b["loss_mask"].sum() for b in batches]))  # 1 for byte models
  measured = (
    tuple(1.0 if s == 0 else float(metrics[f"bytes_per_position_l{s}"]) for s in range(cfg.model.num_levels))
    if cfg.model.num_stages
    else None
  )
  flops = train_flops_per_byte(
    cfg.model, cfg.data.seq_len, measured, bytes_per_token=per_token if cfg.data.tokenizer else 1.0
  )
  described = describe_config(cfg)
  nominal, executed = described["flops_per_byte"], described["executed_flops_per_byte"]
  if cfg.data.tokenizer:  # describe_config counts per token; a token model executes what it counts, per byte here
    nominal = executed = flops  # at the measured bytes per token
  out = {
    "config": str(config),
    "overrides": " ".join(overrides),
    "params": num_params,
    "compile_s": compile_s,
    "step_s": step_s,
    "bytes_per_s": window_bytes / step_s,
    "flops_per_byte": flops,
    "nominal_flops_per_byte": nominal,
    "executed_flops_per_byte": executed,
    "achieved_gflops": flops * window_bytes / step_s / 1e9,
    "executed_gflops": executed * window_bytes / step_s / 1e9,
    "machine": machine(),
  }
  print(f"config            : {config} {out['overrides']}")
  print(f"machine           : {out['machine']}")
  print(f"parameters        : {num_params:,}")
  print(f"batch x seq_len   : {cfg.train.batch_size} x {cfg.data.seq_len}")
  print(f"compile           : {compile_s:.1f} s")
  print(
    f"step (median of {len(times)}): {step_s * 1e3:.1f} ms  (min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})"
  )
  print(f"training bytes/s  : {out['bytes_per_s']:,.0f}")
  print(
    f"train FLOPs/byte  : {flops / 1e6:.2f} M at the measured chunk ratios ({out['achieved_gflops']:.1f} GFLOP/s); "
    f"{nominal / 1e6:.2f} M nominal (targets), {executed / 1e6:.2f} M executed (every chunk slot: "
    f"{out['executed_gflops']:.1f} GFLOP/s)"
  )
  peak = peak_tflops(jax.devices()[0].device_kind)
  if peak:  # model FLOPs utilisation on the FLOPs the static shapes execute, against the bf16 peak
    out["mfu"] = out["executed_gflops"] / (peak * 1e3 * jax.device_count())
    print(f"MFU (executed)    : {out['mfu']:.1%} of {peak:.0f} TFLOP/s bf16 x {jax.device_count()} device(s)")
  print(
    f"| {config} {out['overrides']} | {num_params / 1e6:.2f} M | {compile_s:.1f} s | {step_s * 1e3:.0f} ms | "
    f"{out['bytes_per_s']:,.0f} | {flops / 1e6:.2f} M | {out['machine']} |"
  )
  if show_breakdown:
    rows = breakdown(cfg)
    total = sum(t for _, t in rows)
    print(f"\nforward+backward of each part alone (sum {total * 1e3:.0f} ms vs fused step {step_s * 1e3:.0f} ms):")
    for name, t in rows:
      print(f"  {name:55s} {t * 1e3:8.1f} ms  {100 * t / total:5.1f} %")
    out["breakdown"] = rows
  return out
