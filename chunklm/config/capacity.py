"""Static chunk capacities: JAX needs fixed shapes, so each routing stage keeps at most M_s chunks per window.

M_s = ceil(L / (N_0 ... N_s) * capacity_factor) + K, where K bounds the document starts in a window (document starts
are always kept, so every document keeps at least one chunk), capped by the stage's input length. Evaluation uses
M_s = input length, which can never overflow.
"""

from __future__ import annotations

import math

from chunklm.config.schema import DataConfig, ModelConfig
from chunklm.errors import ConfigError


def capacities(model: ModelConfig, length: int, doc_slots: int) -> tuple[int, ...]:
  """Chunk slots per routing stage for windows of `length` positions holding at most `doc_slots` documents."""
  caps = []
  prev, ratio = length, 1.0
  for s in range(model.num_stages):
    ratio *= model.target_ratio[s]
    m = model.capacity[s] or math.ceil(length / ratio * model.capacity_factor) + doc_slots
    m = min(m, prev)
    caps.append(m)
    prev = m
  return tuple(caps)


def stage_capacities(model: ModelConfig, data: DataConfig) -> tuple[int, ...]:
  """Training capacities; raises ConfigError when a stage cannot hold every document start of a window."""
  slots = data.max_docs_per_window
  caps = capacities(model, data.seq_len, slots)
  for s, m in enumerate(caps):
    if m < slots:
      raise ConfigError(
          f"model.capacity: stage {s} holds {m} chunks, fewer than the {slots} documents a window of "
          f"{data.seq_len} bytes can contain (data.min_doc_bytes={data.min_doc_bytes}); raise model.capacity "
          "(0 = automatic) or data.min_doc_bytes")
  return caps
