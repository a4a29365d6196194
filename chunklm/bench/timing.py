"""What every benchmark shares: the machine it ran on, real training batches, median timings of compiled calls."""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import numpy as np

from chunklm.data.corpus import Documents, load_splits
from chunklm.data.pipeline import PackedWindows, with_doc_cap
from chunklm.data.tokenizer import tokenize, vocab_kwargs
from chunklm.errors import DataError
from chunklm.run.trained import run_tokenizer
from chunklm.train.step import make_train_step


def machine() -> str:
  dev = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  kind = dev.device_kind if dev.platform != "cpu" else f"CPU ({os.cpu_count()} cores, {cpu})"
  return f"{kind}, jax {jax.__version__}"


def training_units(cfg) -> Documents:
  """What the model reads of the configured training data (the built-in corpus by default): bytes or tokens."""
  docs = load_splits(cfg.data).train
  tok = run_tokenizer(cfg)
  return tokenize(docs, tok) if tok is not None else docs


def with_corpus_cap(cfg):
  """cfg with data.max_docs_per_window set from its training data, as `chunklm train` sets it."""
  if cfg.data.max_docs_per_window:
    return cfg
  try:
    docs = training_units(cfg)
  except DataError as e:
    raise DataError(f"{e}; or set data.max_docs_per_window (documents per window) to run without the corpus") from None
  return with_doc_cap(cfg, docs)[0]


def real_batches(cfg, count: int) -> list[dict]:
  """Batches of packed windows from the configured training data (the built-in corpus by default)."""
  docs = training_units(cfg)
  tok = run_tokenizer(cfg)
  windows = PackedWindows(docs, cfg.data.seq_len, seed=cfg.data.seed, max_docs=cfg.data.doc_slots, **vocab_kwargs(tok))
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
  times: list[float] = []
  metrics: dict = {}  # set by the first step: batches is never empty (batches[0] compiled the step)
  for i, batch in enumerate(batches):
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    if i > warmup:
      times.append(time.perf_counter() - t)
  return compile_s, times, metrics
