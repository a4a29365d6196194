"""Training, evaluating and applying a `chunklm classify` model.

A classifier's directory holds `classify.json` (its settings, classes and where its backbone came from),
`config.yaml` (the language model's config), `checkpoints/` (the classifier's parameters, backbone included) and
`metrics.jsonl` (loss and test accuracy as it trains).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

from chunklm import logs
from chunklm.classify.classifier import HEADS, POOLINGS, Classifier, Head, Pooling
from chunklm.classify.metrics import classification_report
from chunklm.classify.records import Record, class_list
from chunklm.config import Config, dump_yaml, load_config, read_yaml
from chunklm.config.mergedna import MergeDNARun
from chunklm.errors import UserError
from chunklm.eval.bpb import activation_bytes, check_fits
from chunklm.model.functional import merge_model, split_model
from chunklm.model.lm import build_model
from chunklm.model.mergedna import MergeDNA
from chunklm.run.checkpoint import Checkpointer
from chunklm.run.kind import CLASSIFIER_HEADER, DESCRIBED, kind_of, require
from chunklm.run.lock import workdir_lock
from chunklm.run.trained import open_run
from chunklm.run.workdir import RunDir
from chunklm.train.mergedna_trainer import CONFIG_DIR as MERGEDNA_CONFIGS
from chunklm.train.mergedna_trainer import load_mergedna_config, open_mergedna
from chunklm.train.optim import decay_mask
from chunklm.train.reporter import Reporter


@dataclasses.dataclass(frozen=True)
class ClassifySettings:
  pooling: Pooling = "mean"  # checked by `check` (the flags arrive as strings)
  head: Head = "linear"
  hidden: int = 256  # width of the MLP head's hidden layer
  steps: int = 300  # optimizer steps
  batch_size: int = 16
  lr: float = 1e-3  # the head's peak learning rate (warm-up, then cosine to 10 %)
  backbone_lr: float = 3e-4  # the language model's; ignored with freeze_backbone
  freeze_backbone: bool = False  # train the head only
  seq_len: int = 512  # bytes per record (longer records are cut, their count reported)
  warmup_steps: int = 30
  eval_every: int = 100  # test accuracy every so many steps (and at the end)
  seed: int = 0

  def check(self) -> None:
    if self.pooling not in POOLINGS:
      raise UserError(f"--pooling {self.pooling!r}: one of {', '.join(POOLINGS)}")
    if self.head not in HEADS:
      raise UserError(f"--head {self.head!r}: one of {', '.join(HEADS)}")
    for name in ("hidden", "steps", "batch_size", "seq_len", "eval_every"):
      if getattr(self, name) < 1:
        raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
    if not (self.lr > 0 and self.backbone_lr >= 0 and math.isfinite(self.lr) and math.isfinite(self.backbone_lr)):
      raise UserError("--lr must be > 0 and --backbone-lr >= 0")


def batch_arrays(records: list[Record], seq_len: int, classes: list[str] | None = None) -> dict:
  """ids_BxL (bytes, zero-padded), lengths_B (bytes kept, >= 1) and, with `classes`, labels_B. L is `seq_len`, or
  the longest record's length where that is shorter (a --seq-len far above the records pads nothing)."""
  seq_len = min(seq_len, max((len(r.data) for r in records), default=1) or 1)
  ids = np.zeros((len(records), seq_len), np.int32)
  lengths = np.zeros(len(records), np.int32)
  for i, r in enumerate(records):
    data = r.data[:seq_len] or b"\0"  # an empty record is one NUL byte: every row needs a position to pool
    ids[i, : len(data)] = np.frombuffer(data, np.uint8)
    lengths[i] = len(data)
  out = {"ids": ids, "lengths": lengths}
  if classes is not None:
    index = {c: k for k, c in enumerate(classes)}
    labels = [r.label for r in records if r.label is not None]
    if len(labels) < len(records):
      first = next(i for i, r in enumerate(records) if r.label is None)
      raise UserError(f"record {first + 1} has no label; training and evaluation need one per record")
    unknown = sorted({label for label in labels if label not in index})
    if unknown:
      raise UserError(f"labels not among the classifier's classes {classes}: {unknown[:5]}")
    out["labels"] = np.array([index[label] for label in labels], np.int32)
  return out


def _is_mergedna(config: str) -> bool:
  """Does `config` (a file or a bundled name) describe a MergeDNA model (a `mergedna` section)?"""
  if (MERGEDNA_CONFIGS / f"{config}.yaml").is_file():
    return True
  path = Path(config)
  return path.suffix in (".yaml", ".yml") and path.is_file() and "mergedna" in read_yaml(path)


def _base_model(init_from: str | None, config: str | None, overrides: list[str], seed: int):
  """(config, backbone, description of the start): a trained run's model (a language model or MergeDNA), or a
  fresh one of a config."""
  if (init_from is None) == (config is None):
    raise UserError(
      "classify train: give either --init-from RUN (fine-tune a trained model) or --config C (train from scratch)"
    )
  if init_from is not None and kind_of(init_from) == "mergedna":
    if overrides:
      raise UserError("classify train: --set applies to a language model; a MergeDNA backbone is taken as trained")
    mcfg, model, step = open_mergedna(init_from, flag="--init-from")
    return mcfg, model, f"{init_from} (step {step})"
  if config is not None and _is_mergedna(config):
    mcfg = load_mergedna_config(config, overrides)
    return mcfg, MergeDNA(mcfg.mergedna, rngs=nnx.Rngs(params=seed)), f"{config} from scratch (seed {seed})"
  if init_from is not None:
    run = open_run(init_from, tuple(overrides), flag="--init-from")
    cfg, lm, start = run.cfg, merge_model(run.graphdef, run.params), f"{init_from} (step {run.step})"
  else:
    cfg = load_config(config, overrides)
    lm, start = build_model(cfg, seed), f"{config} from scratch (seed {seed})"
  if cfg.data.tokenizer:
    raise UserError(
      f"chunklm classify takes byte-level models; this one reads tokens (data.tokenizer {cfg.data.tokenizer})"
    )
  if cfg.model.ratio_start:
    raise UserError(
      "chunklm classify trains toward model.target_ratio and has no ratio curriculum; add --set "
      "model.ratio_start=[] --set model.ratio_warmup_steps=0"
    )
  return cfg, lm, start


def _optimizer(params, s: ClassifySettings) -> optax.GradientTransformation:
  def schedule(peak):
    return optax.warmup_cosine_decay_schedule(  # a 1-step run: no warm-up (its one step at the peak rate)
      0.0, peak, min(s.warmup_steps, s.steps - 1), s.steps, end_value=0.1 * peak
    )

  def adamw(peak):
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule(peak), weight_decay=0.01, mask=decay_mask))

  labels = jax.tree_util.tree_map_with_path(
    lambda path, _: "backbone" if getattr(path[0], "key", None) == "lm" else "head", params
  )
  backbone = optax.set_to_zero() if s.freeze_backbone or s.backbone_lr == 0 else adamw(s.backbone_lr)
  return optax.multi_transform({"head": adamw(s.lr), "backbone": backbone}, labels)


def _loss_fn(graphdef):
  def loss(params, batch):
    logits_BxC, aux = merge_model(graphdef, params)(batch["ids"], batch["lengths"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch["labels"]).mean()
    return ce + aux, ce

  return loss


def train_classifier(
  train_records: list[Record],
  test_records: list[Record],
  out: Path,
  settings: ClassifySettings,
  *,
  init_from: str | None = None,
  config: str | None = None,
  overrides: Sequence[str] = (),
  progress: bool = True,
  log=logs.info,
) -> dict:
  """Trains and saves a classifier in `out`; returns its final test evaluation (see evaluate)."""
  settings.check()
  run = RunDir(out)
  wants = "classify train writes a new classifier there"
  unfinished = require(run.path, ("new", "other", "classifier"), "--out", wants, hint="give another --out")
  if unfinished == "classifier" and run.classifier.exists():
    raise UserError(f"--out {out} is {DESCRIBED['classifier']}; {wants}; give another --out")
  with workdir_lock(run.path, "chunklm classify train", flag="--out") as lock:
    if unfinished == "classifier":  # killed before it finished (no classify.json): trained again from the start
      log(f"{out} holds a classifier that did not finish training: training it again from the start")
      if run.checkpoints.exists():
        run.checkpoints.rmtree()
    elif run.config.exists() or run.has_checkpoints():  # written meanwhile: nothing more is written
      raise UserError(f"{out} already holds another run; give another --out")
    result = _train(train_records, test_records, run, settings, init_from, config, overrides, progress, log)
    lock.check()
    return result


def _check_memory(cfg, batch: int, records: int, width: int) -> None:
  """A one-line error when a training step of a language model would not fit in memory (a MergeDNA backbone has
  no activation estimate; its records are short)."""
  if isinstance(cfg, Config):
    check_fits(  # a training step holds its activations for the backward pass: about 3x a forward's
      3 * activation_bytes(cfg.model, min(batch, records), width),
      f"--batch-size {batch} x --seq-len {width} (the longest record)",
      "use a smaller --batch-size or --seq-len",
    )


def _train(
  train_records: list[Record],
  test_records: list[Record],
  run: RunDir,
  settings: ClassifySettings,
  init_from: str | None,
  config: str | None,
  overrides,
  progress: bool,
  log,
) -> dict:
  classes = class_list(train_records)
  cfg, lm, start = _base_model(init_from, config, list(overrides), settings.seed)
  clf = Classifier(
    lm,
    len(classes),
    pooling=settings.pooling,
    head=settings.head,
    hidden=settings.hidden,
    rngs=nnx.Rngs(params=settings.seed + 1),
  )
  graphdef, params = split_model(clf)
  tx = _optimizer(params, settings)
  opt_state = tx.init(params)
  loss = _loss_fn(graphdef)

  @jax.jit
  def step(params, opt_state, batch):
    (total, ce), grads = jax.value_and_grad(loss, has_aux=True)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, total, ce

  train = batch_arrays(train_records, settings.seq_len, classes)
  width = train["ids"].shape[1]
  _check_memory(cfg, settings.batch_size, len(train_records), width)
  cut = sum(len(r.data) > settings.seq_len for r in train_records)
  meta = {
    "settings": dataclasses.asdict(settings),
    "classes": classes,
    "backbone": "mergedna" if isinstance(cfg, MergeDNARun) else "lm",
    "start": start,
    "train_records": len(train_records),
    "test_records": len(test_records),
    "records_cut": cut,
  }
  run.config.write_text(CLASSIFIER_HEADER + "\n" + dump_yaml(cfg))
  log(
    f"classify: {len(classes)} classes {classes}; {len(train_records):,} training records "
    f"({cut:,} cut to {settings.seq_len} bytes), {len(test_records):,} test records; backbone {start}"
    f"{', frozen' if settings.freeze_backbone else ''}; pooling {settings.pooling}, {settings.head} head"
  )
  rng = np.random.default_rng(settings.seed)
  order, pos = rng.permutation(len(train_records)), 0
  shown: dict[str, str] = {}
  reporter = Reporter(
    run, total=settings.steps, start=0, end=settings.steps, log_every=settings.eval_every, progress=progress
  )
  try:
    for k in range(1, settings.steps + 1):
      if pos + settings.batch_size > len(order):
        order, pos = rng.permutation(len(train_records)), 0
      take = order[pos : pos + settings.batch_size]
      pos += settings.batch_size
      params, opt_state, total, ce = step(params, opt_state, {key: v[take] for key, v in train.items()})
      if k % settings.eval_every == 0 or k == settings.steps:
        row = {"loss": float(total), "ce": float(ce)}
        row["test_accuracy"] = evaluate(graphdef, params, test_records, classes, settings)["accuracy"]
        reporter.write(k, "train", row)
        shown = {"loss": f"{row['loss']:.3f}", "test_acc": f"{row['test_accuracy']:.3f}"}
      reporter.show(k, shown)  # every step moves the progress; the figures change at each evaluation
  finally:
    reporter.close()
  ckpt = Checkpointer(run.checkpoints, keep=1, asynchronous=False)
  ckpt.save(settings.steps, {"params": params}, None, {"step": settings.steps})
  ckpt.close()
  run.classifier.write_text(json.dumps(meta, indent=1) + "\n")
  return evaluate(graphdef, params, test_records, classes, settings)


def load_classifier(workdir: str | Path, log=logs.warning):
  """(graphdef, params, classes, settings, meta) of a saved classifier."""
  run = RunDir(workdir)
  require(run.path, ("classifier",), "--workdir", "this takes a classifier (train one with `chunklm classify train`)")
  if not run.classifier.is_file():
    raise UserError(f"{run} holds a classifier that did not finish training (no {run.classifier.name}); train it again")
  meta = json.loads(run.classifier.read_text())
  settings = ClassifySettings(**meta["settings"])
  classes = meta["classes"]
  if meta.get("backbone") == "mergedna":
    mcfg = load_config(run.config, root=MergeDNARun)

    def backbone():
      return MergeDNA(mcfg.mergedna, rngs=nnx.Rngs(params=0))
  else:
    cfg: Config = load_config(run.config)

    def backbone():
      return build_model(cfg, 0)

  abstract = nnx.eval_shape(
    lambda: Classifier(
      backbone(),
      len(classes),
      pooling=settings.pooling,
      head=settings.head,
      hidden=settings.hidden,
      rngs=nnx.Rngs(params=0),
    )
  )
  graphdef, like = split_model(abstract)
  ckpt = Checkpointer(run.checkpoints, read_only=True)
  restored = ckpt.restore_latest({"params": like}, log=log, partial=True)
  if restored is None:
    raise UserError(f"no checkpoint in {run.checkpoints}")
  return graphdef, restored[1]["params"], classes, settings, meta


def predict_probs(
  graphdef, params, records: list[Record], settings: ClassifySettings, batch_size: int = 64
) -> np.ndarray:
  """Class probabilities, records x classes."""

  @jax.jit
  def probs(params, ids, lengths):
    return jax.nn.softmax(merge_model(graphdef, params)(ids, lengths)[0], axis=-1)

  arrays = batch_arrays(records, settings.seq_len)
  n = len(records)
  pad = -n % batch_size  # one compiled shape: the last batch is padded with copies of the first record
  ids = np.concatenate([arrays["ids"], np.repeat(arrays["ids"][:1], pad, 0)])
  lengths = np.concatenate([arrays["lengths"], np.repeat(arrays["lengths"][:1], pad, 0)])
  out = [
    np.asarray(probs(params, ids[i : i + batch_size], lengths[i : i + batch_size]))
    for i in range(0, len(ids), batch_size)
  ]
  return np.concatenate(out)[:n]


def evaluate(graphdef, params, records: list[Record], classes: list[str], settings: ClassifySettings) -> dict:
  """Accuracy, per-class precision/recall/F1, macro F1 and the confusion matrix (rows: true, columns: predicted)."""
  labels = batch_arrays(records, settings.seq_len, classes)["labels"]
  predicted = predict_probs(graphdef, params, records, settings).argmax(-1)
  return classification_report(labels, predicted, classes)
