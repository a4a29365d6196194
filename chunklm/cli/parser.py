"""The `chunklm` argument parser: one-line errors, the global flags, and each command family's flags (cli/flags/)."""

from __future__ import annotations

import argparse
import importlib.metadata

from chunklm.cli import options
from chunklm.cli.flags import (
  bench,
  boundaries,
  classify,
  compare,
  data,
  generate,
  info,
  lm_eval,
  mergedna,
  mrt5,
  report,
  robustness,
  tasks,
  tokenizer,
  train,
  weights,
)
from chunklm.cli.flags import eval as eval_flags

FAMILIES = (
  train,
  eval_flags,
  generate,
  compare,
  boundaries,
  report,
  robustness,
  lm_eval,
  tasks,
  tokenizer,
  data,
  info,
  classify,
  weights,
  mrt5,
  mergedna,
  bench,
)  # in the order of `chunklm --help`

EPILOG = """examples:
  chunklm train                                  # default tiny model on the built-in corpus (Python stdlib)
  chunklm train --config configs/byte_transformer_tiny.yaml --set train.steps=500 --workdir runs/x
  chunklm train --data corpus/ --set data.include='[\"*.py\", \"*.md\"]' --valid-data valid.txt
  chunklm eval --workdir runs/x --data valid.txt
  chunklm generate --workdir runs/x --prompt "def " --temperature 0.7
  chunklm compare --spec tiny_code                # byte Transformer vs BPE Transformer vs H-Net
  chunklm boundaries --workdir runs/default --text "def main(args):"
  chunklm robustness --workdir runs/default --workdir runs/x --strength 0.1
  chunklm tasks make --text held_out.txt --out runs/tasks      # offline harness tasks: probes, cloze, noisy cloze
  chunklm lm-eval --workdir runs/x --tasks chunklm_cloze --include-path runs/tasks   # accuracy (chunklm[eval])
  chunklm tokenizer train --vocab-size 4096 --out runs/tok/bpe4096.model
  chunklm data prepare --data corpus.jsonl.gz --out data/corpus --shards 64
  chunklm info --config hnet_1stage_L
  chunklm classify train --init-from runs/default --data train.jsonl --test test.jsonl --out runs/cls
  chunklm convert from-hnet --checkpoint hnet_2stage_XL.pt --config hnet_2stage_XL.json --out runs/hnet_2stage_XL
  chunklm export --workdir runs/default --out default.safetensors
  chunklm bench train --config byte_transformer_tiny
  chunklm bench kernels --shapes small --impl xla,interpret --no-step
  chunklm bench capacity --workdir runs/default --window 256,2048,8192
  chunklm bench compile --config hnet_1stage_L --topology v5p:4x4x4 --set mesh.fsdp=64

log lines: --quiet (warnings and errors only) or --verbose (also debug lines, from every process), before or after
the command; results print at every level

exit codes: 0 ok, 2 bad input (arguments, paths, configs, data, checkpoints, a busy workdir), 3 training diverged,
130 interrupted, 143 stopped by SIGTERM"""


class Parser(argparse.ArgumentParser):
  """argparse with one-line errors: `chunklm train: error: ... (chunklm train --help)`, exit 2, no usage block."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

  def parse_args(self, args=None, namespace=None):
    """As argparse's, but an unknown flag is reported by the subcommand it was given to."""
    ns, extras = self.parse_known_args(args, namespace)
    if extras:
      prog = f"{self.prog} {ns.body}"  # the command's words, e.g. `chunklm bench kernels`
      self.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extras)} (see {prog} --help)\n")
    return ns


def version() -> str:
  try:
    return importlib.metadata.version("chunklm")
  except importlib.metadata.PackageNotFoundError:
    return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
  parser = Parser(
    prog="chunklm",
    description="Byte-level hierarchical language models in JAX.",
    epilog=EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--version", action="version", version=f"chunklm {version()}")
  options.add_verbosity(parser, top=True)
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for family in FAMILIES:
    family.add(sub)
  for leaf in _leaves(parser):
    options.add_verbosity(leaf)
  return parser


def _leaves(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
  """The parsers under `p` that run a command (those without subcommands of their own)."""
  subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]  # argparse keeps no public list
  if not subs:
    return [p]
  return [leaf for a in subs for child in dict.fromkeys(a.choices.values()) for leaf in _leaves(child)]
