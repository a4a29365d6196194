"""`chunklm tokenizer train`: BPE on a bounded sample of the training split, measured on the valid split a run of
the config holds out (`chunklm.data.tokenizer.train_on_splits`)."""

from __future__ import annotations

from chunklm.cli.options import config_overrides
from chunklm.config import load_config
from chunklm.data.split import valid_budget
from chunklm.data.tokenizer import train_on_splits


def train(args) -> int:
  cfg = load_config(args.config, config_overrides(args))
  res = train_on_splits(cfg.data, args.vocab_size, args.out, valid_bytes=valid_budget(cfg))
  print(
    f"valid split: {res.valid_bytes:,} bytes -> {res.valid_tokens:,} tokens = "
    f"{res.bytes_per_token:.3f} bytes per token; exact round trip: {res.exact}"
  )
  return 0
