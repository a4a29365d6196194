"""The flags of `chunklm mergedna`: the MergeDNA genome autoencoder (train, eval, its merges)."""

from __future__ import annotations

from chunklm.cli import options


def add(sub) -> None:
  """Adds `mergedna` to the subcommand action `sub`."""
  p = sub.add_parser(
    "mergedna",
    help="MergeDNA: a genome autoencoder whose tokenizer is learned local token merging",
    description="Pretrain and inspect MergeDNA (Li et al.): merging blocks join adjacent bases into tokens within "
    "windows of mergedna.window bases (a ratio loss holds mergedna.merge_ratios), a latent Transformer runs over "
    "the merged tokens, decoders unmerge back to bases. Objectives: merged-token reconstruction and adaptive "
    "masked token modelling (objective.*). Fine-tune it with `chunklm classify train --init-from RUN`.",
  )
  msub = p.add_subparsers(dest="mergedna", required=True, metavar="WHAT")
  for add_one in (_add_train, _add_eval, _add_boundaries):
    add_one(msub)


def _add_train(msub) -> None:
  m = msub.add_parser(
    "train",
    help="pretrain (or resume) a MergeDNA run, then evaluate it",
    description="Pretrain a MergeDNA run in --workdir on random windows of the data.* corpus (re-running resumes "
    "exactly), then report both objectives in bits per base and the bases per merged token on held-out windows.",
  )
  m.set_defaults(body="mergedna train")
  m.add_argument("--config", default="mergedna_tiny", help="a config file or bundled name (default: %(default)s)")
  m.add_argument("--workdir", required=True, help="the run's directory")
  m.add_argument("--data", nargs="+", default=None, help="training FASTA/FASTQ/text paths (sets data.sources)")
  m.add_argument("--valid-data", nargs="+", default=None, help="held-out paths (sets data.valid_sources)")
  options.add_set(m, "config override, e.g. objective.select=uniform (repeatable)")
  options.add_output(m, json_what="the final evaluation")
  options.add_progress(m)


def _add_eval(msub) -> None:
  m = msub.add_parser("eval", help="both objectives and bases per token of a MergeDNA run on its held-out windows")
  m.set_defaults(body="mergedna eval")
  m.add_argument("--workdir", required=True, help="the run")
  m.add_argument("--batch-size", type=int, default=16, help="default: %(default)s")
  options.add_output(m, json_what="the figures")
  options.add_progress(m)


def _add_boundaries(msub) -> None:
  m = msub.add_parser(
    "boundaries",
    help="where a MergeDNA run merges: a picture, bases per token and the token-start rate after each k-mer",
    description="Tokenize --data with a MergeDNA run's merging blocks (windows of the run's data.seq_len) and show "
    "the first --show bases with a mark before every token start (heavier where a deeper block also starts one), "
    "the distribution of bases per token, and how often a token starts after each 2- and 3-mer.",
  )
  m.set_defaults(body="mergedna boundaries")
  m.add_argument("--workdir", required=True, help="the run")
  m.add_argument("--data", nargs="+", required=True, help="FASTA/FASTQ/text paths to tokenize")
  m.add_argument("--max-bases", type=int, default=200_000, help="bases read, in total (default: %(default)s)")
  m.add_argument("--show", type=int, default=240, help="bases drawn in the picture (default: %(default)s)")
  options.add_output(m, out="a folder for boundaries.md and tokens.png (bases per token)", json_what="the figures")
