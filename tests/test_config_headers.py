"""The sizes quoted in each bundled config's header comment are what `chunklm info` reports for it."""

import re

import pytest

from chunklm import cli
from chunklm.config import CONFIG_DIR

QUOTE_RE = re.compile(r"([\d.]+) M parameters; ([\d.]+) M training FLOPs per byte")
QUOTED = sorted(
  p.stem
  for p in CONFIG_DIR.glob("*.yaml")
  if QUOTE_RE.search("".join(line for line in p.read_text().splitlines(True) if line.startswith("#")))
)


def _decimals(number: str) -> int:
  return len(number.partition(".")[2])


def test_most_bundled_configs_quote_their_size():
  assert len(QUOTED) >= 18 and "hnet_1stage_tiny" in QUOTED


@pytest.mark.parametrize("name", QUOTED)
def test_header_sizes_match_info(name, capsys):
  header = "".join(line for line in (CONFIG_DIR / f"{name}.yaml").read_text().splitlines(True) if line.startswith("#"))
  params_quoted, flops_quoted = QUOTE_RE.search(header).groups()
  assert cli.main(["info", "--config", name]) == 0
  out = capsys.readouterr().out
  params = int(re.search(r"parameters\s*: ([\d,]+)", out).group(1).replace(",", ""))
  flops = float(re.search(r"train FLOPs per byte: ([\d.]+) M", out).group(1))
  assert round(params / 1e6, _decimals(params_quoted)) == float(params_quoted), out
  # info prints FLOPs to 2 decimals: the quote may be off by half its own last digit plus half of info's
  assert abs(flops - float(flops_quoted)) <= 0.5 * 10 ** -_decimals(flops_quoted) + 0.005 + 1e-9, out
