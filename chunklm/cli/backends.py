"""Keep jax from starting libtpu on a host without TPU chips.

With the `tpu` extra installed (what `chunklm bench compile` needs on a CPU host), jax tries its TPU backend on
every start; on a host without TPU chips libtpu then writes several lines of warnings to stderr before jax falls
back to the CPU. Where nothing else could be chosen (no TPU chip on the PCI bus, no other PJRT plugin such as
CUDA's installed, JAX_PLATFORMS not set), the command line asks jax for the CPU directly: the same device, without
the noise. Compiling for TPU topologies (`bench compile`) does not use the TPU backend and is unaffected."""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips sit on the PCI bus under Google's vendor id


def only_cpu_is_possible(env: dict, libtpu: bool, plugins: bool, google_pci: bool) -> bool:
  """Whether jax would end on its CPU backend after a failed start of libtpu: libtpu installed, no TPU chip, no
  other accelerator plugin, and the user has not chosen platforms."""
  return libtpu and not google_pci and not plugins and not env.get("JAX_PLATFORMS")


def _google_pci() -> bool:
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      if Path(vendor).read_text().strip() == GOOGLE_PCI_VENDOR:
        return True
    except OSError:
      continue
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _plugins() -> bool:
  """Another PJRT plugin (CUDA, ROCm, ...), found the ways jax finds them: entry points or `jax_plugins.*`."""
  return (
    bool(importlib.metadata.entry_points(group="jax_plugins")) or importlib.util.find_spec("jax_plugins") is not None
  )


def skip_absent_tpu() -> None:
  """Before jax starts a backend: use the CPU where it is the only device jax could end with (see the module)."""
  if importlib.util.find_spec("libtpu") is None:  # the common case: nothing more to look at on start-up
    return
  if not only_cpu_is_possible(dict(os.environ), True, _plugins(), _google_pci()):
    return
  os.environ["JAX_PLATFORMS"] = "cpu"  # read when jax is imported; commands run in subprocesses inherit it
  if "jax" in sys.modules:
    sys.modules["jax"].config.update("jax_platforms", "cpu")
