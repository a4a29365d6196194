"""`chunklm generate`: continuations of prompts from a trained run, printed as text."""

from __future__ import annotations

import os

from chunklm.errors import UserError
from chunklm.eval.generate import check_sampling, generate_from_workdir
from chunklm.eval.summary import show_bytes
from chunklm.storage.paths import location


def run(args) -> int:
  check_sampling(
    max_bytes=args.max_bytes,
    temperature=args.temperature,
    top_k=args.top_k,
    top_p=args.top_p,
    seed=args.seed,
    flags=True,
  )
  prompts = [os.fsencode(p) for p in args.prompt or [""]]  # the bytes typed, UTF-8 or not
  outs = generate_from_workdir(
    location(args.workdir, "--workdir"),
    prompts,
    max_bytes=args.max_bytes,
    temperature=args.temperature,
    top_k=args.top_k,
    top_p=args.top_p,
    stop=[escaped_bytes(s, "--stop") for s in args.stop],
    seed=args.seed,
    stop_at_eos=not args.ignore_eos,
    overrides=tuple(args.overrides),
  )
  for prompt, out in zip(prompts, outs):
    if len(prompts) > 1:
      print("-" * 60)
    print(show_bytes(prompt + out))
  return 0


def escaped_bytes(value: str, option: str) -> bytes:
  """Bytes from a command-line string with Python escapes ('\\n', '\\x00', '\\u20ac'): a character below 256 is
  that byte, any other its UTF-8 bytes."""
  try:
    text = os.fsencode(value).decode("unicode_escape")
  except UnicodeDecodeError as e:
    raise UserError(f"{option} {value!r}: {e.reason}; write bytes as e.g. '\\n', '\\x00' or '\\u20ac'") from None
  return b"".join(bytes([ord(c)]) if ord(c) < 256 else c.encode("utf-8") for c in text)
