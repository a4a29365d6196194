"""The flags of `chunklm classify train | eval | predict`."""

from __future__ import annotations

from chunklm.cli import options


def add(sub) -> None:
  p = sub.add_parser(
    "classify",
    help="downstream classification: fine-tune a trained model with a class head",
    description='Classify records (JSONL {"text": ..., "label": ...}, or FASTA with the label '
    "in each header) with a byte-level model: its states pooled per record, then a "
    "linear or MLP head; the backbone trained too or frozen.",
  )
  csub = p.add_subparsers(dest="classify", required=True, metavar="WHAT")
  _add_train(csub)
  c = csub.add_parser(
    "eval",
    help="accuracy, per-class F1 and a confusion matrix of a classifier on labelled data",
    description="Evaluate a trained classifier on labelled records: accuracy, per-class "
    "precision/recall/F1, macro F1 and the confusion matrix (--plot PNG).",
  )
  c.set_defaults(body="classify eval")
  options.add_workdir(c, "the classifier's directory (chunklm classify train --out)")
  options.add_classify_data(c, test=False)
  options.group(c, "output").add_argument("--plot", default=None, metavar="PNG", help="write the confusion matrix here")
  options.add_output(c, json_what="the figures")
  c = csub.add_parser(
    "predict",
    help="label records with a trained classifier (JSONL out)",
    description="Write one JSON line per input record: the predicted label and every class's "
    "probability (input labels, if any, are ignored).",
  )
  c.set_defaults(body="classify predict")
  options.add_workdir(c, "the classifier's directory")
  options.add_classify_data(c, test=False, labelled=False)
  options.add_output(c, out="JSONL file to write (default: stdout)")


def _add_train(csub) -> None:
  c = csub.add_parser(
    "train",
    help="train a classifier (from a trained run, or from scratch) and test it",
    description="Train a classifier on --data and report its accuracy on --test: start from a "
    "trained run (--init-from) or from a fresh model of a config (--config).",
  )
  c.set_defaults(body="classify train")
  start = options.group(c, "backbone")
  start.add_argument("--init-from", default=None, metavar="RUN", help="a trained byte-level run to fine-tune")
  start.add_argument("--config", default=None, help="or a config to train from scratch (a path or bundled name)")
  options.add_set(c, "config field override (with --init-from: settings that keep the parameters)", title="backbone")
  start.add_argument("--freeze-backbone", action="store_true", help="train the head only")
  options.add_classify_data(c, test=True)
  h = options.group(c, "classifier")
  h.add_argument(
    "--pooling",
    default="mean",
    choices=("mean", "last"),
    help="mean: over the innermost main network's chunk states (a plain stack: over its byte states); "
    "last: the last byte's final state (default: %(default)s)",
  )
  h.add_argument("--head", default="linear", choices=("linear", "mlp"), help="default: %(default)s")
  h.add_argument("--hidden", type=int, default=256, help="the MLP head's width (default: %(default)s)")
  h.add_argument("--steps", type=int, default=300, help="optimizer steps (default: %(default)s)")
  h.add_argument("--batch-size", type=int, default=16, help="records per step (default: %(default)s)")
  h.add_argument("--lr", type=float, default=1e-3, help="the head's peak learning rate (default: %(default)s)")
  h.add_argument(
    "--backbone-lr", type=float, default=3e-4, help="the backbone's peak learning rate (default: %(default)s)"
  )
  h.add_argument(
    "--seq-len", type=int, default=512, help="bytes per record; longer ones are cut (default: %(default)s)"
  )
  h.add_argument("--eval-every", type=int, default=100, help="test accuracy every N steps (default: %(default)s)")
  options.add_seed(c, "initialisation and shuffling")
  options.add_output(c, out="directory of the classifier (required)", json_what="the final test figures")
  options.add_progress(c)
