"""`chunklm classify train | eval | predict`: a classifier on a byte-level backbone (`chunklm.classify`)."""

from __future__ import annotations

import json

from chunklm import logs
from chunklm.classify.metrics import confusion_png, print_report
from chunklm.classify.records import read_records
from chunklm.classify.trainer import ClassifySettings, load_classifier, predict_probs, train_classifier
from chunklm.classify.trainer import evaluate as evaluate_classifier
from chunklm.cli.output import write_json
from chunklm.errors import UserError
from chunklm.storage.paths import location


def train(args) -> int:
  if not args.out:
    raise UserError("classify train: --out DIR is required (where the classifier is saved)")
  settings = ClassifySettings(
    pooling=args.pooling,
    head=args.head,
    hidden=args.hidden,
    steps=args.steps,
    batch_size=args.batch_size,
    lr=args.lr,
    backbone_lr=args.backbone_lr,
    freeze_backbone=args.freeze_backbone,
    seq_len=args.seq_len,
    eval_every=args.eval_every,
    seed=args.seed,
  )
  settings.check()
  train_records = read_records(args.data, args.label_regex)
  test_records = read_records(args.test, args.label_regex)
  report = train_classifier(
    train_records,
    test_records,
    location(args.out, "--out"),
    settings,
    init_from=args.init_from,
    config=args.config,
    overrides=args.overrides,
    progress=not args.no_progress,
  )
  print(f"test set ({args.test}):")
  print_report(report)
  confusion_png(report, location(args.out, "--out") / "confusion.png")
  logs.info(f"wrote {location(args.out, '--out') / 'confusion.png'}")
  write_json(args.json, report)
  return 0


def evaluate(args) -> int:
  graphdef, params, classes, settings, _ = load_classifier(args.workdir)
  records = read_records(args.data, args.label_regex)
  report = evaluate_classifier(graphdef, params, records, classes, settings)
  print_report(report)
  if args.plot:
    confusion_png(report, args.plot)
    logs.info(f"wrote {args.plot}")
  write_json(args.json, report)
  return 0


def predict(args) -> int:
  graphdef, params, classes, settings, _ = load_classifier(args.workdir)
  records = read_records(args.data, args.label_regex, labelled=False)
  probs = predict_probs(graphdef, params, records, settings)
  lines = [
    json.dumps({"label": classes[int(p.argmax())], "probs": {c: round(float(x), 6) for c, x in zip(classes, p)}})
    for p in probs
  ]
  if args.out:
    location(args.out, "--out").write_text("\n".join(lines) + "\n")
    logs.info(f"wrote {len(lines):,} predictions to {args.out}")
  else:
    print("\n".join(lines))
  return 0
