"""How much one device can hold, for the checks that refuse work which cannot fit before anything is allocated
(the train state in train/sharding.py, evaluation and generation batches in eval/)."""

from __future__ import annotations

import os

import jax

GIB = 1024**3


def device_memory() -> tuple[int | None, str]:
  """(bytes, in words) that the default device can hold: an accelerator's memory limit, or for CPU devices the
  host's available RAM (MemAvailable, else its physical RAM) shared by them; (None, "") when unknown."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"a {device.platform} device holds"
  if device.platform != "cpu":
    return None, ""
  share = max(jax.local_device_count(), 1)
  try:
    with open("/proc/meminfo") as f:
      kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    return kib * 1024 // share, "this machine has available"
  except (OSError, StopIteration, ValueError, IndexError):
    pass
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // share, "this machine has"
  except (ValueError, OSError):
    return None, ""
