"""Static chunk capacities: JAX needs fixed shapes, so each routing stage keeps at most M_s chunks per window.

M_s = ceil(L / (N_0 ... N_s) * capacity_factor) + K, where each N is the smallest target training asks for (a ratio
curriculum's start, model.ratio_start, when below target_ratio) and K bounds the documents a window touches
(document starts are always kept, so every document keeps at least one chunk; the packer guarantees the bound),
capped by the stage's input length. Evaluation uses M_s = input length, which can never overflow.

The headroom a stage needs shrinks with the chunks a window holds: with mu = L / (N_0 ... N_s) chunks on average,
their count in one window spreads by about sqrt(mu) (more where the text changes character), so the automatic
factor (capacity_factor 0) is 1 + SPREAD / sqrt(mu): 1.61 for a 256-byte window at N = 6, 1.22 at 2048, 1.11 at
8192. A boundary beyond the capacity joins the previous chunk (causal-safe) and is counted as overflow in the
training metrics; `chunklm bench capacity` measures the overflow of a trained run for a range of factors.
"""

from __future__ import annotations

import math

from chunklm.config.data import DataConfig
from chunklm.config.schema import ModelConfig
from chunklm.errors import ConfigError

SPREAD = 4.0  # standard deviations of headroom, sqrt(mu) each, in the automatic factor


def auto_capacity_factor(mean_chunks: float) -> float:
  """1 + SPREAD / sqrt(mean chunks per window): the headroom when model.capacity_factor is 0."""
  return 1.0 + SPREAD / math.sqrt(max(mean_chunks, 1.0))


def capacity_factor(model: ModelConfig, mean_chunks: float) -> float:
  """The stage's headroom: model.capacity_factor, or the automatic one when it is 0."""
  return model.capacity_factor or auto_capacity_factor(mean_chunks)


def capacities(model: ModelConfig, length: int, doc_slots: int) -> tuple[int, ...]:
  """Chunk slots per routing stage for windows of `length` positions holding at most `doc_slots` documents, sized
  for the smallest target N training asks for (a ratio curriculum's start, when below the final target)."""
  caps = []
  prev, ratio = length, 1.0
  for s, n in enumerate(model.lowest_ratios()[: model.num_stages]):
    ratio *= n
    m = model.capacity[s] or math.ceil(length / ratio * capacity_factor(model, length / ratio)) + doc_slots
    m = min(m, prev)
    caps.append(m)
    prev = m
  return tuple(caps)


def stage_capacities(model: ModelConfig, data: DataConfig) -> tuple[int, ...]:
  """Training capacities; raises ConfigError when a stage cannot hold every document start of a window."""
  slots = data.doc_slots
  caps = capacities(model, data.seq_len, slots)
  for s, m in enumerate(caps):
    if m < slots:
      raise ConfigError(
        f"model.capacity: stage {s} holds {m} chunks, fewer than the {slots} documents a window of "
        f"{data.seq_len} bytes can touch (data.max_docs_per_window, or from data.min_doc_bytes="
        f"{data.min_doc_bytes} before the corpus sets it); raise model.capacity (0 = automatic) or lower "
        "data.max_docs_per_window"
      )
  return caps
