"""The flags of `chunklm tokenizer train`."""

from __future__ import annotations

from chunklm.cli import options


def add(sub) -> None:
  p = sub.add_parser(
    "tokenizer",
    help="train the BPE tokenizer of the token-level baseline",
    description="Tokenizers for the BPE baseline (sentencepiece BPE with byte fallback).",
  )
  tsub = p.add_subparsers(dest="tokenizer", required=True, metavar="WHAT")
  t = tsub.add_parser(
    "train",
    help="train a BPE tokenizer on the training split",
    description="Train sentencepiece BPE (byte fallback, no normalisation: every byte string "
    "round-trips exactly) on the training split of --data (the built-in corpus by "
    "default, split as data.* says), then report bytes per token on the valid split.",
  )
  t.set_defaults(body="tokenizer train")
  options.add_config(t)
  options.add_data(t)
  t.add_argument("--vocab-size", type=int, default=4096, help="number of pieces (default: %(default)s)")
  options.group(t, "output").add_argument(
    "--out", required=True, metavar="PATH", help="where to write the model file, e.g. runs/tok/bpe4096.model"
  )
