"""The `chunklm` argument parser: every subcommand, its options and their help."""

from __future__ import annotations

import argparse
import importlib.metadata

from chunklm.cli.compare_parser import add_compare_command
from chunklm.cli.mrt5_parser import add_mrt5_command
from chunklm.cli.weights_parser import add_weights_commands
from chunklm.eval.perturb import PERTURBATIONS

DEFAULT_CONFIG = "hnet_1stage_tiny"

EPILOG = """examples:
  chunklm train                                  # default tiny model on the built-in corpus (Python stdlib)
  chunklm train --config configs/byte_transformer_tiny.yaml --set train.steps=500 --workdir runs/x
  chunklm train --data corpus/ --set data.include='[\"*.py\", \"*.md\"]' --valid-data valid.txt
  chunklm eval --workdir runs/x --data valid.txt
  chunklm generate --workdir runs/x --prompt "def " --temperature 0.7
  chunklm compare --spec tiny_code                # byte Transformer vs BPE Transformer vs H-Net
  chunklm boundaries --workdir runs/default --text "def main(args):"
  chunklm robustness --workdir runs/default --workdir runs/x --strength 0.1
  chunklm tokenizer train --vocab-size 4096 --out runs/tok/bpe4096.model
  chunklm info --config hnet_1stage_L
  chunklm classify train --init-from runs/default --data train.jsonl --test test.jsonl --out runs/cls
  chunklm convert from-hnet --checkpoint hnet_2stage_XL.pt --config hnet_2stage_XL.json --out runs/hnet_2stage_XL
  chunklm export --workdir runs/default --out default.safetensors
  chunklm bench train --config byte_transformer_tiny
  chunklm bench kernels --shapes small --impl xla,interpret --no-step
  chunklm bench capacity --workdir runs/default --window 256,2048,8192
  chunklm bench compile --config hnet_1stage_L --topology v5p:4x4x4 --set mesh.fsdp=64

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
      chain = [getattr(ns, dest) for dest in ("command", "tokenizer", "bench", "classify", "convert", "mrt5")
               if getattr(ns, dest, None)]
      prog = " ".join([self.prog, *chain])
      self.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extras)} (see {prog} --help)\n")
    return ns


def version() -> str:
  try:
    return importlib.metadata.version("chunklm")
  except importlib.metadata.PackageNotFoundError:
    return "unknown (not installed)"


def _group(p: argparse.ArgumentParser, title: str, description: str | None = None):
  """The option group `title` of `p`, made on first use (so every command lists its shared options alike)."""
  for g in p._action_groups:  # argparse keeps no public lookup by title
    if g.title == title:
      return g
  return p.add_argument_group(title, description)


def _add_config_args(p: argparse.ArgumentParser, default_config: str | None = DEFAULT_CONFIG) -> None:
  g = _group(p, "config")
  g.add_argument("--config", default=default_config,
                 help="YAML config: a path or a bundled name (see configs/); default: %(default)s")
  g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config field, e.g. --set model.d_model=256 --set train.steps=500 (repeatable)")


def _add_run_overrides(p: argparse.ArgumentParser) -> None:
  """--set for commands that read trained runs: settings that keep the trained parameters."""
  _group(p, "config").add_argument(
      "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
      help="use the run with a setting that keeps its trained parameters changed (repeatable), e.g. "
           "--set model.delete_gate.keep_all=true (no deletion), --set model.capacity_factor=3, "
           "--set kernels.impl=xla")


def _add_data_args(p: argparse.ArgumentParser, what: str = "", valid: bool = True) -> None:
  g = _group(p, "data")
  g.add_argument("--data", action="append", default=[], metavar="PATH",
                 help=what or "training data (repeatable): text files, directories (recursive; filter with "
                      "data.include/data.exclude globs), .jsonl (field data.jsonl_field), FASTA/FASTQ (sequences "
                      "only), and .gz of each; default: the built-in corpus")
  if valid:
    g.add_argument("--valid-data", action="append", default=[], metavar="PATH",
                   help="held-out data (repeatable); default: split --data by document (data.valid_fraction)")


def _add_max_bytes(p: argparse.ArgumentParser, default: int, what: str) -> None:
  _group(p, "data").add_argument("--max-bytes", type=int, default=default,
                                            help=f"{what} (default: %(default)s)")


def _add_seed(p: argparse.ArgumentParser, what: str) -> None:
  p.add_argument("--seed", type=int, default=0, help=f"{what} seed (default: %(default)s)")


def _add_output(p: argparse.ArgumentParser, out: str | None = None, json_what: str = "the figures") -> None:
  """--out (where files go; `out` says the default) and --json (the figures, for scripts)."""
  g = _group(p, "output")
  if out is not None:
    g.add_argument("--out", default=None, metavar="PATH", help=out)
  g.add_argument("--json", default=None, metavar="PATH", help=f"also write {json_what} as JSON")


def _add_progress(p: argparse.ArgumentParser) -> None:
  g = _group(p, "progress", "a bar on a terminal; in a log file (CI, nohup, SLURM) one line every "
                               "--progress-every seconds")
  g.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
  g.add_argument("--progress-every", type=float, default=None, metavar="SECONDS",
                 help="seconds between progress lines off a terminal (default: $CHUNKLM_PROGRESS_EVERY or 15)")


def _add_classify_data(p: argparse.ArgumentParser, test: bool, labelled: bool = True) -> None:
  g = _group(p, "data")
  g.add_argument("--data", required=True, metavar="PATH",
                 help="records: .jsonl with \"text\"" + (" and \"label\"" if labelled else "") + " per line, or "
                      "FASTA (.fa/.fasta/.fna)" + (" with --label-regex" if labelled else ""))
  if test:
    g.add_argument("--test", required=True, metavar="PATH", help="held-out records, same format")
  g.add_argument("--label-regex", default=None, metavar="REGEX",
                 help="FASTA: the label is this expression's first group in each header, e.g. 'species=(\\w+)'")


def build_parser() -> argparse.ArgumentParser:
  parser = Parser(prog="chunklm", description="Byte-level hierarchical language models in JAX.",
                  epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--version", action="version", version=f"chunklm {version()}")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  p = sub.add_parser("train", help="train a model (resumes automatically from the workdir's checkpoint)",
                     description="Train a model. Re-running the same command in a workdir with a checkpoint "
                                 "resumes exactly where it stopped (model, optimizer, step, RNG, data position).")
  _add_config_args(p)
  _add_data_args(p)
  p.add_argument("--workdir", default=None, help="run directory (checkpoints, metrics.jsonl, tb/, loss.png); "
                                                 "default: runs/<config name>")
  p.add_argument("--stop-after", type=int, default=None, metavar="N",
                 help="stop (with a checkpoint) after N more steps; the schedule still spans train.steps")
  p.add_argument("--init-from", default=None, metavar="RUN",
                 help="start from the parameters of another run (its newest checkpoint) or of one checkpoint "
                      "(RUN/checkpoints/STEP): fine-tuning; the optimizer, step and data start fresh (train.init_from)")
  p.add_argument("--allow-data-change", action="store_true",
                 help="resume although the data stream changed (data.* settings, train.batch_size): the new stream "
                      "starts from its beginning and metrics.jsonl records the change")
  _add_progress(p)
  g = p.add_argument_group("multi-host", "run the same command on every host; each process feeds its share of "
                                         "every batch and process 0 writes logs and reports")
  g.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() before anything else; on TPU pods, SLURM and Open MPI it "
                      "finds the coordinator itself, elsewhere give the three options below")
  g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                 help="address of process 0 (default: $JAX_COORDINATOR_ADDRESS or auto-detected)")
  g.add_argument("--num-processes", type=int, default=None, metavar="N", help="number of processes")
  g.add_argument("--process-id", type=int, default=None, metavar="I", help="this process's index in [0, N)")

  p = sub.add_parser("eval", help="bits per byte of a trained model on some data",
                     description="Evaluate the latest checkpoint of a workdir: exact bits per byte over every byte "
                                 "of the given data (default: the run's validation split).")
  p.add_argument("--workdir", required=True, help="run directory of a trained model")
  p.add_argument("--batch-size", type=int, default=None, help="windows per batch (default: eval.batch_size)")
  _add_run_overrides(p)
  _add_data_args(p, "text to evaluate (repeatable; files, directories, .jsonl, FASTA, .gz as for train); default: "
                    "the run's validation split")
  _add_max_bytes(p, 0, "evaluate only the first N bytes (the last document cut at a character; 0 = all)")
  _add_output(p, json_what="the result (bpb, bytes, routing statistics)")
  _add_progress(p)

  p = sub.add_parser("generate", help="sample bytes from a trained model",
                     description="Sample continuations of one or more prompts (batched) from the latest checkpoint "
                                 "of a workdir, with caches (KV, Mamba2 state, H-Net routing state).")
  p.add_argument("--workdir", required=True, help="run directory of a trained model")
  p.add_argument("--prompt", action="append", default=None,
                 help="text to continue, as the start of a document (repeatable: prompts run as one batch)")
  p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: %(default)s)")
  p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely ids; 0 = all (default)")
  p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: %(default)s)")
  p.add_argument("--stop", default="", help="stop before any of these bytes, e.g. '\\n' (default: none)")
  p.add_argument("--max-bytes", type=int, default=200, help="bytes to generate per prompt (default: %(default)s)")
  _add_seed(p, "sampling")
  _add_run_overrides(p)

  add_compare_command(sub, _group, _add_data_args, _add_output, _add_progress)

  p = sub.add_parser("boundaries", help="where an H-Net puts chunk boundaries: pictures and statistics",
                     description="Show the chunk boundaries of a trained H-Net on a text (terminal, HTML with the "
                                 "router's p as a heat strip, PNG), and statistics over a corpus: bytes-per-chunk "
                                 "histogram per stage, precision/recall against whitespace, word starts and BPE "
                                 "token starts, the longest and shortest chunks.")
  p.add_argument("--workdir", required=True, help="a trained H-Net run")
  src = p.add_mutually_exclusive_group()
  src.add_argument("--text", default=None, help="text to draw")
  src.add_argument("--file", default=None, help="file whose first window of bytes to draw")
  p.add_argument("--tokenizer", default="", help="a sentencepiece model to compare boundaries with BPE token starts")
  _add_run_overrides(p)
  _add_data_args(p, "corpus for the statistics (repeatable); default: the run's validation split", valid=False)
  _add_max_bytes(p, 65536, "leading corpus bytes for the statistics (0 = all)")
  _add_output(p, "output directory (default: <workdir>/boundaries)", "the statistics")

  p = sub.add_parser("report", help="one HTML page per run, or one comparing several",
                     description="Write an HTML report of one or more runs: config, parameters, loss/BPB and "
                                 "chunk-ratio curves, final valid figures, the robustness table (if `chunklm "
                                 "robustness` was run there), a boundary picture and generated samples.")
  p.add_argument("--workdir", action="append", required=True, help="a trained run (repeatable)")
  p.add_argument("--samples", type=int, default=2, help="generated samples per run (default: %(default)s)")
  _add_seed(p, "sampling")
  g = _group(p, "output")
  g.add_argument("--out", default=None, metavar="PATH",
                 help="HTML file (default: <workdir>/report.html, or runs/report.html for several runs)")

  p = sub.add_parser("robustness", help="BPB of trained models on clean and character-perturbed text",
                     description="Score one or more trained models on clean text and on perturbed copies of it "
                                 "(case flips, deletions, typos, AntSpeak, ...); every model sees the same bytes. "
                                 "Writes robustness.md, robustness.csv and robustness.png.")
  p.add_argument("--workdir", action="append", required=True, help="a trained run (repeatable)")
  p.add_argument("--perturbations", default="all",
                 help="comma-separated subset of: " + ", ".join(PERTURBATIONS) + " (default: all)")
  p.add_argument("--strength", type=float, default=0.1, help="probability of touching a character (default: 0.1)")
  _add_seed(p, "perturbation")
  _add_run_overrides(p)
  _add_data_args(p, "text to evaluate (repeatable); default: the first run's validation split", valid=False)
  _add_max_bytes(p, 65536, "leading bytes of the text to use (0 = all)")
  _add_output(p, "output directory (default: the first workdir)", "the scores")
  _add_progress(p)

  p = sub.add_parser("tokenizer", help="train the BPE tokenizer of the token-level baseline",
                     description="Tokenizers for the BPE baseline (sentencepiece BPE with byte fallback).")
  tsub = p.add_subparsers(dest="tokenizer", required=True, metavar="WHAT")
  t = tsub.add_parser("train", help="train a BPE tokenizer on the training split",
                      description="Train sentencepiece BPE (byte fallback, no normalisation: every byte string "
                                  "round-trips exactly) on the training split of --data (the built-in corpus by "
                                  "default, split as data.* says), then report bytes per token on the valid split.")
  _add_config_args(t)
  _add_data_args(t)
  t.add_argument("--vocab-size", type=int, default=4096, help="number of pieces (default: %(default)s)")
  _group(t, "output").add_argument("--out", required=True, metavar="PATH",
                                              help="where to write the model file, e.g. runs/tok/bpe4096.model")

  p = sub.add_parser("info", help="parameters, FLOPs per byte and chunk capacities of a config or a run",
                     description="Describe a config (or a run's saved config) without training: parameter count, "
                                 "training FLOPs per byte (at the target chunk ratios), chunk capacities, per-level LR "
                                 "multipliers, and trained/frozen counts of a fine-tuning setup.")
  _add_config_args(p)
  p.add_argument("--workdir", default=None, help="describe this run's saved config instead of --config")
  p.add_argument("--params", action="store_true",
                 help="also list every parameter: path, shape, named part and whether train.freeze freezes it")

  p = sub.add_parser("classify", help="downstream classification: fine-tune a trained model with a class head",
                     description="Classify records (JSONL {\"text\": ..., \"label\": ...}, or FASTA with the label "
                                 "in each header) with a byte-level model: its states pooled per record, then a "
                                 "linear or MLP head; the backbone trained too or frozen.")
  csub = p.add_subparsers(dest="classify", required=True, metavar="WHAT")
  c = csub.add_parser("train", help="train a classifier (from a trained run, or from scratch) and test it",
                      description="Train a classifier on --data and report its accuracy on --test: start from a "
                                  "trained run (--init-from) or from a fresh model of a config (--config).")
  start = _group(c, "backbone")
  start.add_argument("--init-from", default=None, metavar="RUN", help="a trained byte-level run to fine-tune")
  start.add_argument("--config", default=None, help="or a config to train from scratch (a path or bundled name)")
  start.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="config field override (with --init-from: settings that keep the parameters)")
  start.add_argument("--freeze-backbone", action="store_true", help="train the head only")
  _add_classify_data(c, test=True)
  h = _group(c, "classifier")
  h.add_argument("--pooling", default="mean", choices=("mean", "last"),
                 help="mean: over the innermost main network's chunk states (a plain stack: over its byte states); "
                      "last: the last byte's final state (default: %(default)s)")
  h.add_argument("--head", default="linear", choices=("linear", "mlp"), help="default: %(default)s")
  h.add_argument("--hidden", type=int, default=256, help="the MLP head's width (default: %(default)s)")
  h.add_argument("--steps", type=int, default=300, help="optimizer steps (default: %(default)s)")
  h.add_argument("--batch-size", type=int, default=16, help="records per step (default: %(default)s)")
  h.add_argument("--lr", type=float, default=1e-3, help="the head's peak learning rate (default: %(default)s)")
  h.add_argument("--backbone-lr", type=float, default=3e-4,
                 help="the backbone's peak learning rate (default: %(default)s)")
  h.add_argument("--seq-len", type=int, default=512, help="bytes per record; longer ones are cut (default: "
                                                          "%(default)s)")
  h.add_argument("--eval-every", type=int, default=100, help="test accuracy every N steps (default: %(default)s)")
  _add_seed(c, "initialisation and shuffling")
  _add_output(c, out="directory of the classifier (required)", json_what="the final test figures")
  _add_progress(c)
  c = csub.add_parser("eval", help="accuracy, per-class F1 and a confusion matrix of a classifier on labelled data",
                      description="Evaluate a trained classifier on labelled records: accuracy, per-class "
                                  "precision/recall/F1, macro F1 and the confusion matrix (--plot PNG).")
  c.add_argument("--workdir", required=True, help="the classifier's directory (chunklm classify train --out)")
  _add_classify_data(c, test=False)
  _group(c, "output").add_argument("--plot", default=None, metavar="PNG", help="write the confusion matrix here")
  _add_output(c, json_what="the figures")
  c = csub.add_parser("predict", help="label records with a trained classifier (JSONL out)",
                      description="Write one JSON line per input record: the predicted label and every class's "
                                  "probability (input labels, if any, are ignored).")
  c.add_argument("--workdir", required=True, help="the classifier's directory")
  _add_classify_data(c, test=False, labelled=False)
  _add_output(c, out="JSONL file to write (default: stdout)")

  add_weights_commands(sub)
  add_mrt5_command(sub, _add_output, _add_progress)

  p = sub.add_parser("bench", help="benchmarks (training throughput, generation, chunk-op kernels)",
                     description="Benchmarks that print measured figures with the machine they ran on.")
  bsub = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
  b = bsub.add_parser("train", help="compile time, step time and training bytes/s of a config",
                      description="Measure compile time, median step time and training bytes/s (after warm-up) "
                                  "on random bytes, for a config.")
  _add_config_args(b, default_config=None)
  b.add_argument("--steps", type=int, default=10, help="timed steps (default: %(default)s)")
  b.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation (default: %(default)s)")
  b.add_argument("--breakdown", action="store_true",
                 help="also time each part of an H-Net (stacks, routing/chunking, main network) on its own")
  _add_output(b)
  b = bsub.add_parser("generate", help="generated bytes/s of trained runs (with caches) at several batch sizes",
                      description="Generate --units new bytes (tokens for a BPE run) after a short prompt with each "
                                  "run, per batch size; report decoded text bytes per second (median of --repeats, "
                                  "after a compile run).")
  b.add_argument("--workdir", action="append", required=True, help="a trained run (repeatable)")
  b.add_argument("--batch", default="1,32", help="comma-separated batch sizes (default: %(default)s)")
  b.add_argument("--units", type=int, default=256, help="new bytes/tokens per row (default: %(default)s)")
  b.add_argument("--repeats", type=int, default=3, help="timed runs (default: %(default)s)")
  b.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: %(default)s)")
  b.add_argument("--top-p", type=float, default=0.95, help="nucleus mass; 1 = no nucleus sort (default: %(default)s)")
  _add_seed(b, "sampling")
  _add_run_overrides(b)
  _add_output(b)
  b = bsub.add_parser("kernels", help="chunk-op kernels vs the XLA reference: time, GB/s, %% of peak bandwidth",
                      description="Time every chunk op (downsample, upsample, segment_pool, ema_scan), forward and "
                                  "forward+backward, with each chunk-op impl: median time, achieved GB/s, fraction "
                                  "of the device's peak memory bandwidth and speed-up over the XLA reference; then "
                                  "a whole H-Net training step with each impl.")
  b.add_argument("--impl", default=None, metavar="LIST",
                 help="comma-separated impls among auto, xla, pallas, interpret (xla is always included as the "
                      "baseline); default: xla,pallas on GPU/TPU, xla,interpret on CPU")
  b.add_argument("--shapes", default="auto", metavar="SET|BxLxD,...",
                 help="full: B in {8, 32}, L in {4096, 8192}, D in {512, 1024, 2048}; small: a CPU-sized check; "
                      "auto: full on a GPU/TPU, small on a CPU (default); or a comma-separated list of BxLxD, "
                      "e.g. 8x8192x1024,32x4096x512")
  b.add_argument("--dtype", default="float32,bfloat16", metavar="LIST", help="comma-separated (default: %(default)s)")
  b.add_argument("--ops", default="downsample,upsample,segment_pool,ema_scan", metavar="LIST",
                 help="comma-separated ops (default: all)")
  b.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (default: %(default)s)")
  b.add_argument("--warmup", type=int, default=3, help="untimed calls after compilation (default: %(default)s)")
  b.add_argument("--step-config", default=None, metavar="CONFIG",
                 help="H-Net config of the training-step comparison (default: hnet_1stage_S, or hnet_1stage_tiny "
                      "with --shapes small)")
  b.add_argument("--step-set", dest="step_overrides", action="append", default=[], metavar="KEY=VALUE",
                 help="override a field of the step config (repeatable)")
  b.add_argument("--step-steps", type=int, default=10, help="timed training steps per impl (default: %(default)s)")
  b.add_argument("--no-step", action="store_true", help="skip the training-step comparison")
  _add_output(b)
  b = bsub.add_parser("capacity", help="chunk overflow of a trained H-Net for a range of capacity factors",
                      description="Route text with a trained byte-level H-Net (exact: nothing capped), pack it into "
                                  "windows as training does, and print per window length and stage the boundaries "
                                  "per window and the fraction that would overflow the static chunk capacity for "
                                  "a range of model.capacity_factor values (and the automatic one), then the "
                                  "smallest factor whose overflow stays within --max-overflow.")
  b.add_argument("--workdir", required=True, help="a trained byte-level H-Net run")
  b.add_argument("--max-overflow", type=float, default=0.01, metavar="FRACTION",
                 help="overflow the fitted capacity factor may leave, as a fraction of boundaries (default: "
                      "%(default)s = 1%%)")
  b.add_argument("--window", default=None, metavar="LIST",
                 help="comma-separated window lengths in bytes (default: the run's, 2048 and 8192)")
  b.add_argument("--split", default="valid", choices=("valid", "train"), help="text to route (default: %(default)s)")
  _add_run_overrides(b)
  _add_max_bytes(b, 1_000_000, "route at most this many bytes")
  _add_output(b)
  b = bsub.add_parser("compile", help="compile the training step for a TPU slice on this host: memory, FLOPs, "
                                     "collectives per chip",
                      description="Lower and compile a config's training step ahead of time for a TPU topology "
                                  "that is not attached (needs the tpu extra: pip install 'chunklm[tpu]'). Nothing "
                                  "is allocated: model, optimizer state and batch are abstract, placed with the "
                                  "trainer's own mesh and shardings. Prints per-chip peak memory against the chip's "
                                  "HBM, compiled FLOPs against the nominal estimate, code size and every collective "
                                  "(count, bytes, largest) by what it does: all-gathers and reduce-scatters that the "
                                  "TPU compiler lowers through an all-reduce (it does over a whole torus) count as "
                                  "what they are and are marked so. Large configs take minutes to compile.")
  _add_config_args(b, default_config=None)
  b.add_argument("--topology", required=True, metavar="KIND:SHAPE",
                 help="TPU slice, e.g. v5e:2x2, v5p:2x2x1, v5p:4x4x4, v5e:16x16, v4:4x4x4 (set mesh.data/fsdp/"
                      "tensor to match its chip count)")
  _add_output(b, json_what="the report")
  b.add_argument("--hlo", default=None, metavar="PATH", help="also write the compiled (optimized) HLO text")
  return parser
