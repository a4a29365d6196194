"""`chunklm bench train | generate | score | kernels | capacity | compile | data | cap`: check the flags, measure (`chunklm.bench`),
write the figures as JSON on request (each benchmark prints its own table)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from chunklm import logs
from chunklm.bench.cap_sample import full_cap, sample_caps
from chunklm.bench.capacity import bench_capacity
from chunklm.bench.compile import bench_compile
from chunklm.bench.data import bench_data
from chunklm.bench.generate import bench_generate
from chunklm.bench.kernels import bench_kernels
from chunklm.bench.scoring import bench_score
from chunklm.bench.train import bench_train
from chunklm.cli.options import comma_ints, config_overrides
from chunklm.cli.output import write_json
from chunklm.config import load_config
from chunklm.errors import UserError
from chunklm.storage.paths import is_remote, location


def train(args) -> int:
  _need_config(args)
  write_json(args.json, bench_train(args.config, args.overrides, args.steps, args.warmup, args.breakdown))
  return 0


def generate(args) -> int:
  sizes = comma_ints(args.batch, "--batch")
  if min(sizes) <= 0 or args.units <= 0 or args.repeats <= 0:
    raise UserError("--batch sizes, --units and --repeats must be positive")
  if args.temperature < 0 or not 0 < args.top_p <= 1:
    raise UserError("--temperature must be >= 0 and --top-p in (0, 1]")
  write_json(
    args.json,
    bench_generate(
      [location(w, "--workdir") for w in args.workdir],
      sizes,
      args.units,
      args.repeats,
      args.temperature,
      args.top_p,
      args.seed,
      tuple(args.overrides),
    ),
  )
  return 0


def score(args) -> int:
  sizes = comma_ints(args.batch, "--batch")
  if min(sizes) <= 0 or args.requests <= 0 or args.repeats <= 0:
    raise UserError("--batch sizes, --requests and --repeats must be positive")
  if args.context_bytes < 0 or args.continuation_bytes <= 0:
    raise UserError("--context-bytes must be >= 0 and --continuation-bytes > 0")
  write_json(
    args.json,
    bench_score(
      [location(w, "--workdir") for w in args.workdir],
      sizes,
      n_requests=args.requests,
      context_bytes=args.context_bytes,
      continuation_bytes=args.continuation_bytes,
      repeats=args.repeats,
      paths=tuple(args.data),
      seed=args.seed,
      overrides=tuple(args.overrides),
    ),
  )
  return 0


def kernels(args) -> int:
  shapes = args.shapes if args.shapes != "auto" else ("small" if jax.default_backend() == "cpu" else "full")
  step_config = (
    None if args.no_step else (args.step_config or ("hnet_1stage_tiny" if shapes == "small" else "hnet_1stage_S"))
  )
  write_json(
    args.json,
    bench_kernels(
      args.impl,
      shapes,
      args.dtype,
      args.ops,
      args.repeats,
      args.warmup,
      step_config,
      args.step_overrides,
      args.step_steps,
      args.ssd_shapes,
    ),
  )
  return 0


def capacity(args) -> int:
  windows = comma_ints(args.window, "--window") if args.window else None
  if (windows and min(windows) < 2) or args.max_bytes <= 0:
    raise UserError("--window lengths must be >= 2 and --max-bytes positive")
  if not 0 <= args.max_overflow < 1:
    raise UserError(f"--max-overflow {args.max_overflow}: a fraction of boundaries in [0, 1), e.g. 0.01")
  write_json(
    args.json,
    bench_capacity(args.workdir, windows, args.max_bytes, args.split, tuple(args.overrides), args.max_overflow),
  )
  return 0


def compile_tpu(args) -> int:
  _need_config(args)
  report = bench_compile(args.config, args.topology, args.overrides, args.hlo)
  write_json(args.json, {"config": args.config, "overrides": args.overrides, **dataclasses.asdict(report)})
  return 0


def data(args) -> int:
  if not args.data:
    raise UserError("bench data: --data is required (the corpus to measure)")
  if remote := [p for p in args.data if is_remote(location(p, "--data"))]:
    raise UserError(f"bench data: --data {remote[0]}: measures a corpus on a local disk (bytes read by syscalls)")
  if missing := [p for p in args.data if not Path(p).exists()]:
    raise UserError(f"bench data: --data {missing[0]}: no such file or directory")
  if args.steps <= 0 or args.repeat <= 0 or args.processes <= 0:
    raise UserError("bench data: --steps, --repeat and --processes must be positive")
  figures = bench_data(
    args.data, args.config, args.steps, args.overrides, args.processes, args.repeat, args.workdir_root, args.keep
  )
  write_json(args.json, figures)
  return 0


def cap(args) -> int:
  if min(args.sample_mb) <= 0:
    raise UserError("bench cap: --sample-mb takes positive sizes")
  cfg = load_config(args.config, config_overrides(args))
  rows = []
  for check in sample_caps(cfg, args.sample_mb):
    logs.info(
      f"sample {check.sample_mb} MB ({check.sample_bytes:,} bytes, {check.seconds:.1f} s): "
      f"{check.sample_cap.describe()}"
    )
    rows.append(
      {
        "sample_mb": check.sample_mb,
        "bytes": check.sample_bytes,
        "cap": check.sample_cap.max_docs,
        "seconds": check.seconds,
      }
    )
  whole, docs, nbytes = full_cap(cfg, progress=args.verbosity != "quiet")
  logs.info(f"whole corpus ({docs:,} training documents, {nbytes:,} bytes): {whole.describe()}")
  write_json(
    args.json, {"samples": rows, "whole": {"docs": docs, "bytes": nbytes, "cap": whole.max_docs, "most": whole.most}}
  )
  return 0


def _need_config(args) -> None:
  if args.config is None:
    raise UserError(f"bench {args.bench}: --config is required")
