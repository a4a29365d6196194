"""`chunklm info`: what a config (or a run's saved config) is, printed (`chunklm.bench.info.setup_info`)."""

from __future__ import annotations

import json

from chunklm import logs
from chunklm.bench.info import SetupInfo, setup_info
from chunklm.config import to_dict


def run(args) -> int:
  info = setup_info(args.config, args.overrides, args.workdir, list_params=args.params)
  if not info.cfg.data.max_docs_per_window:
    logs.info(
      "data.max_docs_per_window: set at the first training, from a sample of the corpus; capacities below are for "
      f"its bound from data.min_doc_bytes, {info.cfg.data.doc_slots} documents per window"
    )
  print_info(info)
  return 0


def print_info(info: SetupInfo) -> None:
  """Parameters, training FLOPs per byte, window, targets, capacities, per-level LR multipliers, trained/frozen."""
  cfg, figures = info.cfg, info.figures
  print(f"{info.name}: layout {json.dumps(to_dict(cfg.model.layout))}, d_model {list(cfg.model.d_model)}")
  print(f"  parameters          : {figures['params']:,}")
  if cfg.data.tokenizer:  # per byte depends on the tokenizer's bytes per token, which `bench train` measures
    print(
      f"  train FLOPs per token: {figures['flops_per_byte'] / 1e6:.2f} M (divide by the bytes per token for per byte)"
    )
  else:
    print(
      f"  train FLOPs per byte: {figures['flops_per_byte'] / 1e6:.2f} M nominal (at the target chunk ratios), "
      f"{figures['executed_flops_per_byte'] / 1e6:.2f} M executed (on every chunk slot)"
    )
  print(
    f"  window              : {cfg.data.seq_len} bytes x batch {cfg.train.batch_size}; at most "
    f"{cfg.data.doc_slots} documents per window"
  )
  if cfg.model.num_stages:
    print(
      f"  targets N           : {list(cfg.model.target_ratio)}; chunk capacities {list(figures['capacities'])} "
      f"(innermost: {figures['executed_ratio']:.2f}x the chunks at the targets)"
    )
    print(f"  LR multipliers      : {[round(m, 3) for m in figures['lr_multipliers']]}")
  print(
    f"  trained / frozen    : {figures['trainable']:,} / {figures['frozen']:,} model variables"
    + (f" (train.freeze {list(cfg.train.freeze)})" if cfg.train.freeze else "")
  )
  if cfg.train.lr_scale:
    print(f"  LR factors per part : {', '.join(cfg.train.lr_scale)}")
  if cfg.train.init_from:
    print(f"  starts from         : {cfg.train.init_from}")
  for p in info.parameters:  # the paths that train.freeze / train.lr_scale globs match
    print(f"    {p.name:60s} {str(p.shape):16s} {p.part:12s}{' frozen' if p.frozen else ''}")
