"""`chunklm` command line: parses flags and calls library functions; user errors exit 2 with one line on stderr."""

from __future__ import annotations

import sys

from chunklm import progress
from chunklm.cli.parser import build_parser
from chunklm.errors import UserError


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  # start-up: --help and flag errors answer before the command bodies load jax (seconds); lint-imports still sees it
  from chunklm.cli.commands import COMMANDS
  try:
    progress.set_every(getattr(args, "progress_every", None))
    return COMMANDS[args.command](args)
  except UserError as e:
    print(f"chunklm: error: {e}", file=sys.stderr)
    return getattr(e, "exit_code", 2)
  except KeyboardInterrupt:
    print("chunklm: interrupted", file=sys.stderr)
    return 130
