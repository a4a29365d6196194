"""`chunklm` command line: parses flags and calls library functions; user errors exit 2 with one line on stderr.

Layout: parser.py builds the parser from options.py (option groups several commands share) and flags/ (each
command's flags; none of these import jax, so `--help` and flag errors answer at once); commands.py maps each
command to its body, one module per command or family (train.py, eval.py, bench.py, ...), which checks the flags,
calls one library function and prints the results. Log lines (what a command is doing) go through
`chunklm.logs` at the level of --quiet / --verbose."""

from __future__ import annotations

import errno
import sys

from chunklm import logs, progress
from chunklm.cli.backends import skip_absent_tpu
from chunklm.cli.parser import build_parser
from chunklm.errors import UserError
from chunklm.run.kind import check_output
from chunklm.storage.objects import check_access, from_storage, storage_error
from chunklm.storage.paths import location

# the flags that name files or directories; each may be a local path or a gs:// URL
PATH_FLAGS = (
  "workdir",
  "data",
  "valid_data",
  "test",
  "init_from",
  "out",
  "json",
  "plot",
  "weights",
  "checkpoint",
  "file",
  "config",
  "spec",
  "workdir_root",
)

# what the file system answers about a path the user chose (read-only, no rights, full, a file where a folder is
# needed): one line naming the path, whichever command met it
USER_OS_ERRORS = (
  errno.EROFS,
  errno.EACCES,
  errno.EPERM,
  errno.ENOSPC,
  errno.EDQUOT,
  errno.ENOTDIR,
  errno.EISDIR,
  errno.ENAMETOOLONG,
)
# the flags that name what a command writes: never one of a run's own files (run/kind.py)
OUTPUT_FLAGS = ("out", "json", "plot")


def check_path_flags(args) -> None:
  """Before any work: every path flag names a place chunklm can use: a URL has a scheme chunklm reads and writes,
  and its bucket exists and can be listed with the credentials at hand, and no output would replace a run's own
  file (one line each otherwise, instead of a traceback or a damaged run after the work, when the result is
  written)."""
  for name in PATH_FLAGS:
    value = getattr(args, name, None)
    for v in value if isinstance(value, list) else [value]:
      flag = "--" + name.replace("_", "-")
      if isinstance(v, str) and ":/" in v:
        check_access(location(v, flag), flag)
      if isinstance(v, str) and name in OUTPUT_FLAGS:
        check_output(v, flag)


def _one_line(e: Exception) -> str | None:
  """What the user is told of an error that is not chunklm's own but is about their input (None: a bug, which keeps
  its traceback): the storage's refusals (e.g. credentials that lapse in a long gs:// run), and a local path the
  file system refuses (e.g. a read-only mount)."""
  error = storage_error(e) if from_storage(e) else None
  if error is not None:
    return str(error)
  if isinstance(e, OSError) and e.errno in USER_OS_ERRORS and e.filename:
    return f"cannot use {e.filename}: {e.strerror}"
  return None


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  logs.set_verbosity(args.verbosity or "normal")
  skip_absent_tpu()
  # start-up: --help and flag errors answer before the command bodies load jax (seconds); lint-imports still sees it
  from chunklm.cli.commands import COMMANDS

  try:
    progress.set_every(getattr(args, "progress_every", None))
    check_path_flags(args)
    return COMMANDS[args.body](args)
  except UserError as e:
    print(f"chunklm: error: {e}", file=sys.stderr)
    return getattr(e, "exit_code", 2)
  except Exception as e:
    error = _one_line(e)
    if error is None:
      raise
    print(f"chunklm: error: {error}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("chunklm: interrupted", file=sys.stderr)
    return 130
