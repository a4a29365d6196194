"""The option groups that several commands share, defined once so each means the same wherever it appears (same
flag, same help section, same default), and what they turn into (`config_overrides`). Parser side: no jax here."""

from __future__ import annotations

import argparse
import json
import os

from chunklm.errors import UserError

DEFAULT_CONFIG = "hnet_1stage_tiny"


def group(p: argparse.ArgumentParser, title: str, description: str | None = None):
  """The option group `title` of `p`, made on first use (so every command lists its shared options alike)."""
  for g in p._action_groups:  # argparse keeps no public lookup by title
    if g.title == title:
      return g
  return p.add_argument_group(title, description)


def add_config(p: argparse.ArgumentParser, default_config: str | None = DEFAULT_CONFIG) -> None:
  """--config and --set: a config to build from, and overrides of its fields."""
  g = group(p, "config")
  g.add_argument(
    "--config",
    default=default_config,
    help="YAML config: a path or a bundled name (see configs/); default: %(default)s",
  )
  add_set(p, "override a config field, e.g. --set model.d_model=256 --set train.steps=500 (repeatable)")


def add_set(p: argparse.ArgumentParser, help: str, title: str = "config") -> None:
  """--set KEY=VALUE (repeatable) into args.overrides, with a help text saying what it may change here."""
  group(p, title).add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_run_overrides(p: argparse.ArgumentParser) -> None:
  """--set for commands that read trained runs: settings that keep the trained parameters."""
  add_set(
    p,
    "use the run with a setting that keeps its trained parameters changed (repeatable), e.g. "
    "--set model.delete_gate.keep_all=true (no deletion), --set model.capacity_factor=3, "
    "--set kernels.impl=xla",
  )


def add_data(p: argparse.ArgumentParser, what: str = "", valid: bool = True) -> None:
  """--data (and --valid-data): paths of documents."""
  g = group(p, "data")
  g.add_argument(
    "--data",
    action="append",
    default=[],
    metavar="PATH",
    help=what
    or "training data (repeatable): text files, directories (recursive; filter with "
    "data.include/data.exclude globs), .jsonl (field data.jsonl_field), FASTA/FASTQ (sequences "
    "only), and .gz of each, Parquet (column data.jsonl_field), ArrayRecord, a `chunklm data prepare` "
    "directory; streamed, never copied; default: the built-in corpus",
  )
  if valid:
    g.add_argument(
      "--valid-data",
      action="append",
      default=[],
      metavar="PATH",
      help="held-out data (repeatable); default: split --data by document (data.valid_fraction)",
    )


def add_max_bytes(p: argparse.ArgumentParser, default: int, what: str) -> None:
  group(p, "data").add_argument("--max-bytes", type=int, default=default, help=f"{what} (default: %(default)s)")


def add_seed(p: argparse.ArgumentParser, what: str) -> None:
  p.add_argument("--seed", type=int, default=0, help=f"{what} seed (default: %(default)s)")


def add_workdir(
  p: argparse.ArgumentParser, help: str = "run directory of a trained model", *, repeatable: bool = False
) -> None:
  """--workdir of a run to read (required; `repeatable`: one or more)."""
  p.add_argument("--workdir", action="append" if repeatable else "store", required=True, help=help)


def add_output(p: argparse.ArgumentParser, out: str | None = None, json_what: str = "the figures") -> None:
  """--out (where files go; `out` says the default) and --json (the figures, for scripts)."""
  g = group(p, "output")
  if out is not None:
    g.add_argument("--out", default=None, metavar="PATH", help=out)
  g.add_argument("--json", default=None, metavar="PATH", help=f"also write {json_what} as JSON")


def add_progress(p: argparse.ArgumentParser) -> None:
  g = group(
    p, "progress", "a bar on a terminal; in a log file (CI, nohup, SLURM) one line every --progress-every seconds"
  )
  g.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
  g.add_argument(
    "--progress-every",
    type=float,
    default=None,
    metavar="SECONDS",
    help="seconds between progress lines off a terminal (default: $CHUNKLM_PROGRESS_EVERY or 15)",
  )


def add_verbosity(p: argparse.ArgumentParser, top: bool = False) -> None:
  """--quiet / --verbose (one of them): the level of the log lines. On the top-level parser (`top`) they default to
  normal; after a subcommand they leave what was given before it unless given again."""
  g = group(p, "log lines", "what a command is doing, on stdout (its results print whatever the level)")
  one = g.add_mutually_exclusive_group()
  default = None if top else argparse.SUPPRESS
  one.add_argument(
    "--quiet", dest="verbosity", action="store_const", const="quiet", default=default, help="warnings and errors only"
  )
  one.add_argument(
    "--verbose",
    dest="verbosity",
    action="store_const",
    const="verbose",
    default=default,
    help="also debug lines, from every process of a multi-host run",
  )


def add_classify_data(p: argparse.ArgumentParser, test: bool, labelled: bool = True) -> None:
  g = group(p, "data")
  g.add_argument(
    "--data",
    required=True,
    metavar="PATH",
    help='records: .jsonl with "text"' + (' and "label"' if labelled else "") + " per line, or "
    "FASTA (.fa/.fasta/.fna)" + (" with --label-regex" if labelled else ""),
  )
  if test:
    g.add_argument("--test", required=True, metavar="PATH", help="held-out records, same format")
  g.add_argument(
    "--label-regex",
    default=None,
    metavar="REGEX",
    help="FASTA: the label is this expression's first group in each header, e.g. 'species=(\\w+)'",
  )


def config_overrides(args) -> list[str]:
  """--set overrides plus --data / --valid-data as data.sources / data.valid_sources (and train's --init-from)."""
  overrides = list(getattr(args, "overrides", []))
  if getattr(args, "init_from", None):
    overrides.append("train.init_from=" + os.fspath(args.init_from))  # a str field: kept verbatim
  if args.data:
    overrides.append("data.sources=" + json.dumps([os.fspath(i) for i in args.data]))
  if getattr(args, "valid_data", None):
    overrides.append("data.valid_sources=" + json.dumps([os.fspath(i) for i in args.valid_data]))
  return overrides


def comma_ints(value: str, option: str) -> list[int]:
  """'1,32' -> [1, 32]; anything else is one line naming `option`."""
  try:
    return [int(x) for x in value.split(",")]
  except ValueError:
    raise UserError(f"{option} {value!r}: expected comma-separated integers") from None
