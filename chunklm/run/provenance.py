"""What produced a run: the chunklm version and git commit, the library versions and the devices, recorded at the top
of its config.yaml (as comments, so the config reads the same) and as a `"split": "run"` record in metrics.jsonl."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

import jax

PACKAGES = ("chunklm", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain")


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def git_commit(where: Path = Path(__file__).parent) -> str | None:
  """The commit of the checkout chunklm runs from (with '+dirty' for local changes), or None outside git."""
  try:
    run = lambda *a: subprocess.run(["git", *a], cwd=where, capture_output=True, text=True, timeout=5)  # noqa: E731
    head = run("rev-parse", "--short=12", "HEAD")
    if head.returncode:
      return None
    dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return None


def provenance() -> dict:
  devices = jax.devices()
  return {
    **{p: _version(p) for p in PACKAGES},
    "git": git_commit(),
    "devices": f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})",
    "processes": jax.process_count(),
  }


def header(p: dict) -> str:
  """YAML comment lines for the top of a run's config.yaml."""
  return "".join(f"# {k}: {v}\n" for k, v in p.items())


def header_value(config_file: Path, key: str) -> str | None:
  """The value of `# key: value` in the header comments of a run's config.yaml (None if absent)."""
  if not config_file.exists():
    return None
  for line in config_file.read_text().splitlines():
    if not line.startswith("#"):
      break
    name, sep, value = line[1:].strip().partition(": ")
    if sep and name == key:
      return value
  return None
