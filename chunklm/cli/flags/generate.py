"""The flags of `chunklm generate`."""

from __future__ import annotations

from chunklm.cli import options


def add(sub) -> None:
  p = sub.add_parser(
    "generate",
    help="sample bytes from a trained model",
    description="Sample continuations of one or more prompts (batched) from the latest checkpoint "
    "of a workdir, with caches (KV, Mamba2 state, H-Net routing state).",
  )
  p.set_defaults(body="generate")
  options.add_workdir(p)
  p.add_argument(
    "--prompt",
    action="append",
    default=None,
    help="text to continue, as the start of a document (repeatable: prompts run as one batch)",
  )
  p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: %(default)s)")
  p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely ids; 0 = all (default)")
  p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: %(default)s)")
  p.add_argument("--stop", default="", help="stop before any of these bytes, e.g. '\\n' (default: none)")
  p.add_argument("--max-bytes", type=int, default=200, help="bytes to generate per prompt (default: %(default)s)")
  options.add_seed(p, "sampling")
  options.add_run_overrides(p)
