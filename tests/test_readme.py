"""The README's usage block is documentation that must keep working: every `chunklm ...` line parses with today's
argument parser, and every config and comparison spec it names exists (what it costs to run each is in the other
tests; this one catches a renamed flag, subcommand, config or spec in milliseconds)."""

import re
import shlex
from pathlib import Path

import pytest

from chunklm.cli.parser import build_parser
from chunklm.config import load_config
from chunklm.experiments.compare import load_spec

ROOT = Path(__file__).resolve().parents[1]


def usage_commands(readme: str) -> list[str]:
  """The `chunklm ...` lines of the first code block after '## Usage', without trailing comments."""
  block = re.search(r"## Usage\s+```\n(.*?)```", readme, re.S)
  assert block, "the README has no code block under ## Usage"
  lines = []
  for line in block.group(1).splitlines():
    words = shlex.split(line, comments=True)
    if words and Path(words[0]).name == "chunklm":
      lines.append(words[1:])
  return lines


def check(words: list[str]) -> None:
  args = build_parser().parse_args(words)
  if getattr(args, "config", None) and not str(args.config).startswith("configs/"):
    load_config(args.config, [])
  elif getattr(args, "config", None):
    load_config(str(ROOT / args.config), [])
  if getattr(args, "spec", None):
    load_spec(args.spec)


COMMANDS = usage_commands((ROOT / "README.md").read_text())


def test_the_usage_block_is_found():
  assert len(COMMANDS) >= 15


@pytest.mark.parametrize("words", [c for c in COMMANDS if c != ["--help"]], ids=lambda w: " ".join(w[:3]))
def test_every_usage_line_parses_and_names_what_exists(words):
  check(words)


def test_a_broken_line_fails(capsys):
  with pytest.raises(SystemExit):
    check(["train", "--confg", "hnet_1stage_tiny"])
  with pytest.raises(Exception, match="not found"):
    check(["train", "--config", "hnet_3stage_tiny"])
