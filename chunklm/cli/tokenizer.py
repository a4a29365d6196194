"""`chunklm tokenizer train`: BPE on the training split, measured on the valid split
(`chunklm.data.tokenizer.train_on_splits`)."""

from __future__ import annotations

from chunklm.cli.options import config_overrides
from chunklm.config import load_config
from chunklm.data.tokenizer import train_on_splits


def train(args) -> int:
  cfg = load_config(args.config, config_overrides(args))
  res = train_on_splits(cfg.data, args.vocab_size, args.out)
  print(
    f"valid split: {res.valid_bytes:,} bytes -> {res.valid_tokens:,} tokens = "
    f"{res.bytes_per_token:.3f} bytes per token; exact round trip: {res.exact}"
  )
  return 0
