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
  p.add_argument("--temperature", type=float, default=0.8, help=">= 0; 0 = greedy (default: %(default)s)")
  p.add_argument(
    "--top-k",
    type=int,
    default=0,
    help="sample among the k most likely ids; 0 = all (default); a k of the vocabulary's size or more keeps all",
  )
  p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass, in (0, 1] (default: %(default)s)")
  p.add_argument(
    "--stop",
    action="append",
    default=[],
    metavar="TEXT",
    help="end a continuation before this text, with escapes, e.g. '\\n' or '\\n\\n' (repeatable: the first "
    "of them to occur ends it; default: none)",
  )
  p.add_argument(
    "--ignore-eos",
    action="store_true",
    help="keep generating past the model's end-of-sequence id (by default a continuation ends there: the "
    "tokenizer's EOS for a BPE run whose tokenizer has one, byte 0xFF for a converted official H-Net)",
  )
  p.add_argument(
    "--max-bytes",
    type=int,
    default=200,
    help="bytes to generate per prompt, 1 to 1,048,576 (default: %(default)s); a prompt may have up to "
    "data.seq_len - 1 bytes (tokens), the longest document the model was trained on",
  )
  options.add_seed(p, "sampling")
  options.add_run_overrides(p)
