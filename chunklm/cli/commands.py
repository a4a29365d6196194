"""The bodies of the `chunklm` subcommands: check the flags, call the library, print what a user reads."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import numpy as np

from chunklm.bench.capacity import bench_capacity
from chunklm.bench.compile import bench_compile
from chunklm.bench.generate import bench_generate
from chunklm.bench.kernels import bench_kernels
from chunklm.bench.train import bench_train
from chunklm.classify.metrics import confusion_png, print_report
from chunklm.classify.records import read_records
from chunklm.classify.trainer import ClassifySettings, evaluate as evaluate_classifier, load_classifier, \
    predict_probs, train_classifier
from chunklm.cli.mrt5_commands import cmd_mrt5
from chunklm.cli.output import print_config_info, print_eval, print_train_summary, write_json
from chunklm.config import load_config
from chunklm.data.corpus import load_documents, load_splits
from chunklm.data.dna import looks_like_dna
from chunklm.data.pipeline import leading_bytes, with_doc_cap
from chunklm.data.tokenizer import tokenize, train_tokenizer
from chunklm.errors import DataError, UserError
from chunklm.eval.boundary_stats import run_boundaries
from chunklm.eval.bpb import evaluate, make_eval_step
from chunklm.eval.generate import generate_from_workdir
from chunklm.eval.perturb import PERTURBATIONS
from chunklm.eval.robustness import run_robustness
from chunklm.eval.run_report import run_report
from chunklm.eval.summary import show_bytes
from chunklm.experiments.compare import run_compare
from chunklm.interop.convert import from_hnet, to_hnet
from chunklm.interop.weights import export_weights, import_weights
from chunklm.run.trained import open_run, read_config
from chunklm.train.trainer import train


def cmd_train(args) -> int:
  if args.stop_after is not None and args.stop_after <= 0:
    raise UserError("--stop-after must be positive")
  if args.distributed:
    _init_distributed(args.coordinator, args.num_processes, args.process_id)
  elif args.coordinator or args.num_processes is not None or args.process_id is not None:
    raise UserError("--coordinator, --num-processes and --process-id need --distributed")
  cfg = load_config(args.config, _data_overrides(args))
  workdir = Path(args.workdir or Path("runs") / Path(args.config).stem)
  result = train(cfg, workdir, stop_after=args.stop_after, progress=not args.no_progress,
                 allow_data_change=args.allow_data_change)
  print_train_summary(result, main_process=jax.process_index() == 0)
  return 143 if result.signalled else 0


def _init_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
  """jax.distributed.initialize(), with its failures turned into one clear line."""
  if num_processes is not None and num_processes <= 0:
    raise UserError("--num-processes must be positive")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise UserError(f"--process-id must be in [0, {num_processes}), got {process_id}")
  try:
    jax.distributed.initialize(coordinator, num_processes, process_id)
  except (ValueError, TypeError, RuntimeError) as e:
    raise UserError(f"--distributed: jax.distributed.initialize() failed ({e}); outside TPU pods, SLURM and Open "
                    "MPI pass --coordinator HOST:PORT --num-processes N --process-id I") from None
  print(f"distributed: process {jax.process_index()} of {jax.process_count()}, "
        f"{jax.local_device_count()} local / {jax.device_count()} global devices", flush=True)


def _data_overrides(args) -> list[str]:
  """--set overrides plus --data / --valid-data as data.sources / data.valid_sources (and train's --init-from)."""
  overrides = list(getattr(args, "overrides", []))
  if getattr(args, "init_from", None):
    overrides.append("train.init_from=" + os.fspath(args.init_from))  # a str field: kept verbatim
  if args.data:
    overrides.append("data.sources=" + json.dumps([os.fspath(i) for i in args.data]))
  if args.valid_data:
    overrides.append("data.valid_sources=" + json.dumps([os.fspath(i) for i in args.valid_data]))
  return overrides


def cmd_eval(args) -> int:
  if args.max_bytes < 0 or (args.batch_size is not None and args.batch_size <= 0):
    raise UserError("--max-bytes must be >= 0 and --batch-size > 0")
  workdir, overrides = Path(args.workdir), tuple(args.overrides)
  run = open_run(workdir, overrides)
  paths = tuple(args.data) + tuple(args.valid_data)
  if paths:
    docs = load_documents(paths, run.cfg.data)
    docs = docs.select(docs.lengths > 0)
    if docs.num_bytes == 0:
      raise DataError(f"{', '.join(paths)}: no bytes to evaluate")
    what = ", ".join(paths)
  else:
    docs, what = run.valid_split(), "the run's validation split"
  docs = leading_bytes(docs, args.max_bytes)
  dna = not run.cfg.data.tokenizer and looks_like_dna(docs.data[:1 << 20])  # one byte per base: BPB = bits per base
  res = evaluate(make_eval_step(run.graphdef), run.params, run.units(docs), run.cfg.data.seq_len,
                 args.batch_size or run.cfg.eval.batch_size, progress=not args.no_progress, **run.vocab)
  if dna:
    res["bits_per_base"] = res["bpb"]
  print_eval(run, res, what, overrides)
  write_json(args.json, {"workdir": str(workdir), "step": run.step, "data": what, "overrides": list(overrides), **res})
  return 0


def cmd_generate(args) -> int:
  if args.max_bytes < 0 or args.temperature < 0 or args.top_k < 0 or not 0 < args.top_p <= 1:
    raise UserError("--max-bytes, --temperature and --top-k must be >= 0 and --top-p in (0, 1]")
  prompts = [os.fsencode(p) for p in args.prompt or [""]]  # the bytes typed, UTF-8 or not
  outs = generate_from_workdir(Path(args.workdir), prompts, max_bytes=args.max_bytes,
                               temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                               stop=_escaped_bytes(args.stop, "--stop"),
                               seed=args.seed, overrides=tuple(args.overrides))
  for prompt, out in zip(prompts, outs):
    if len(prompts) > 1:
      print("-" * 60)
    print(show_bytes(prompt + out))
  return 0


def _escaped_bytes(value: str, option: str) -> bytes:
  """Bytes from a command-line string with Python escapes ('\\n', '\\x00', '\\u20ac'): a character below 256 is
  that byte, any other its UTF-8 bytes."""
  try:
    text = os.fsencode(value).decode("unicode_escape")
  except UnicodeDecodeError as e:
    raise UserError(f"{option} {value!r}: {e.reason}; write bytes as e.g. '\\n', '\\x00' or '\\u20ac'") from None
  return b"".join(bytes([ord(c)]) if ord(c) < 256 else c.encode("utf-8") for c in text)


def cmd_compare(args) -> int:
  if args.budget_bytes is not None and args.budget_bytes <= 0:
    raise UserError(f"--budget-bytes must be positive, got {args.budget_bytes}")
  if args.seeds is not None and args.seeds < 1:
    raise UserError(f"--seeds must be at least 1, got {args.seeds}")
  _, rows = run_compare(args.spec, args.out, _data_overrides(args), progress=not args.no_progress,
                        budget_bytes=args.budget_bytes, sweep=args.sweep, seeds=args.seeds,
                        only=[m.strip() for m in args.models.split(",") if m.strip()])
  write_json(args.json, [dataclasses.asdict(r) for r in rows])
  return 0


def cmd_boundaries(args) -> int:
  text = os.fsencode(args.text) if args.text is not None else None
  if args.file is not None:
    try:
      text = Path(args.file).read_bytes()
    except OSError as e:
      raise UserError(f"--file {args.file}: {e.strerror}") from None
  result = run_boundaries(Path(args.workdir), text, tuple(args.data), args.max_bytes, args.tokenizer,
                          Path(args.out) if args.out else None, tuple(args.overrides))
  write_json(args.json, {f"stage {s}": {"chunks": st["chunks"], "bytes_per_chunk": st["bytes_per_chunk"],
                                        "precision": st["precision"], "recall": st["recall"],
                                        "chunks_by_length": np.bincount(st["lengths"]).tolist(),
                                        "longest": [c.decode("utf-8", "replace") for c in st["longest"]],
                                        "shortest": [c.decode("utf-8", "replace") for c in st["shortest"]]}
                         for s, st in result["stats"].items()})
  return 0


def cmd_report(args) -> int:
  if args.samples < 0:
    raise UserError("--samples must be >= 0")
  run_report([Path(w) for w in args.workdir], Path(args.out) if args.out else None, args.samples, seed=args.seed)
  return 0


def cmd_robustness(args) -> int:
  names = list(PERTURBATIONS) if args.perturbations == "all" else [p.strip() for p in args.perturbations.split(",")]
  workdirs = [Path(w) for w in args.workdir]
  results = run_robustness(workdirs, tuple(args.data), names, args.strength, args.seed, args.max_bytes,
                           Path(args.out) if args.out else workdirs[0], tuple(args.overrides),
                           progress=not args.no_progress)
  write_json(args.json, {"strength": args.strength, "seed": args.seed, "results": results})
  return 0


def cmd_tokenizer(args) -> int:
  cfg = load_config(args.config, _data_overrides(args))
  splits = load_splits(cfg.data)
  print(f"data: {splits.description}")
  tok = train_tokenizer(splits.train, args.vocab_size, args.out)
  valid = tokenize(splits.valid, tok)
  exact = all(tok.decode(valid.data[s:s + n]) == splits.valid.doc(i)
              for i, (s, n) in enumerate(zip(valid.starts, valid.lengths)))
  print(f"valid split: {splits.valid.num_bytes:,} bytes -> {valid.num_bytes:,} tokens = "
        f"{splits.valid.num_bytes / max(valid.num_bytes, 1):.3f} bytes per token; exact round trip: {exact}")
  return 0


def cmd_info(args) -> int:
  if args.workdir:
    cfg, name = read_config(Path(args.workdir), tuple(args.overrides)), args.workdir
  else:
    cfg, name = load_config(args.config, args.overrides), args.config
  if not cfg.data.max_docs_per_window:  # as training would set it: from the configured corpus
    cfg, cap = with_doc_cap(cfg, load_splits(cfg.data).train)
    print(f"data.max_docs_per_window from the configured corpus: {cap.describe()}")
  print_config_info(name, cfg, list_params=args.params)
  return 0


def cmd_bench(args) -> int:
  if args.bench == "generate":
    try:
      sizes = [int(x) for x in args.batch.split(",")]
    except ValueError:
      raise UserError(f"--batch {args.batch!r}: expected comma-separated integers") from None
    if min(sizes) <= 0 or args.units <= 0 or args.repeats <= 0:
      raise UserError("--batch sizes, --units and --repeats must be positive")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
      raise UserError("--temperature must be >= 0 and --top-p in (0, 1]")
    write_json(args.json, bench_generate([Path(w) for w in args.workdir], sizes, args.units, args.repeats,
                                         args.temperature, args.top_p, args.seed, tuple(args.overrides)))
    return 0
  if args.bench == "kernels":
    shapes = args.shapes if args.shapes != "auto" else ("small" if jax.default_backend() == "cpu" else "full")
    step_config = None if args.no_step else (args.step_config or
                                             ("hnet_1stage_tiny" if shapes == "small" else "hnet_1stage_S"))
    write_json(args.json, bench_kernels(args.impl, shapes, args.dtype, args.ops, args.repeats, args.warmup,
                                        step_config, args.step_overrides, args.step_steps))
    return 0
  if args.bench == "capacity":
    try:
      windows = [int(x) for x in args.window.split(",")] if args.window else None
    except ValueError:
      raise UserError(f"--window {args.window!r}: expected comma-separated integers") from None
    if (windows and min(windows) < 2) or args.max_bytes <= 0:
      raise UserError("--window lengths must be >= 2 and --max-bytes positive")
    if not 0 <= args.max_overflow < 1:
      raise UserError(f"--max-overflow {args.max_overflow}: a fraction of boundaries in [0, 1), e.g. 0.01")
    write_json(args.json, bench_capacity(args.workdir, windows, args.max_bytes, args.split, tuple(args.overrides),
                                         args.max_overflow))
    return 0
  if args.config is None:
    raise UserError(f"bench {args.bench}: --config is required")
  if args.bench == "compile":
    report = bench_compile(args.config, args.topology, args.overrides, args.hlo)
    write_json(args.json, {"config": args.config, "overrides": args.overrides, **dataclasses.asdict(report)})
    return 0
  write_json(args.json, bench_train(args.config, args.overrides, args.steps, args.warmup, args.breakdown))
  return 0


def cmd_classify(args) -> int:
  if args.classify == "train":
    if not args.out:
      raise UserError("classify train: --out DIR is required (where the classifier is saved)")
    settings = ClassifySettings(pooling=args.pooling, head=args.head, hidden=args.hidden, steps=args.steps,
                                batch_size=args.batch_size, lr=args.lr, backbone_lr=args.backbone_lr,
                                freeze_backbone=args.freeze_backbone, seq_len=args.seq_len,
                                eval_every=args.eval_every, seed=args.seed)
    settings.check()
    train_records = read_records(args.data, args.label_regex)
    test_records = read_records(args.test, args.label_regex)
    report = train_classifier(train_records, test_records, Path(args.out), settings, init_from=args.init_from,
                              config=args.config, overrides=args.overrides, progress=not args.no_progress)
    print(f"test set ({args.test}):")
    print_report(report)
    confusion_png(report, Path(args.out) / "confusion.png")
    print(f"wrote {Path(args.out) / 'confusion.png'}")
    write_json(args.json, report)
    return 0
  graphdef, params, classes, settings, _ = load_classifier(args.workdir)
  if args.classify == "eval":
    records = read_records(args.data, args.label_regex)
    report = evaluate_classifier(graphdef, params, records, classes, settings)
    print_report(report)
    if args.plot:
      confusion_png(report, args.plot)
      print(f"wrote {args.plot}")
    write_json(args.json, report)
    return 0
  records = read_records(args.data, args.label_regex, labelled=False)
  probs = predict_probs(graphdef, params, records, settings)
  lines = [json.dumps({"label": classes[int(p.argmax())], "probs": {c: round(float(x), 6) for c, x in zip(classes, p)}})
           for p in probs]
  if args.out:
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines):,} predictions to {args.out}")
  else:
    print("\n".join(lines))
  return 0


def cmd_convert(args) -> int:
  if args.convert == "from-hnet":
    bad = [o for o in args.overrides if o.split("=", 1)[0].startswith("model.")]
    if bad:
      raise UserError(f"convert from-hnet: --set {bad[0]}: the model comes from the official config; change "
                      "model settings when fine-tuning (train --init-from)")
    out = from_hnet(args.checkpoint, args.config, args.out, load_config(None, args.overrides))
    cfg = read_config(out)
    layout = json.dumps(cfg.model.layout).replace('"', "'")  # tuples as the lists of the config file
    print(f"wrote {out}: {cfg.model.num_stages}-stage H-Net, layout {layout}, widths "
          f"{list(cfg.model.d_model)} (model.compat official); try: chunklm eval --workdir {out}")
    return 0
  pt, js = to_hnet(args.workdir, args.out, args.dtype)
  print(f"wrote {pt} and {js}")
  return 0


def cmd_export(args) -> int:
  tensors, step = export_weights(args.workdir, args.out)
  print(f"wrote {args.out}: {tensors} tensors of step {step}, config in the metadata")
  return 0


def cmd_import(args) -> int:
  out = import_weights(args.weights, args.out)
  print(f"wrote {out}; fine-tune it with: chunklm train --init-from {out} --config {out}/config.yaml "
        "--workdir NEW_DIR")
  return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate, "compare": cmd_compare,
            "boundaries": cmd_boundaries, "report": cmd_report, "robustness": cmd_robustness,
            "tokenizer": cmd_tokenizer, "info": cmd_info, "bench": cmd_bench, "classify": cmd_classify,
            "convert": cmd_convert, "export": cmd_export, "import": cmd_import, "mrt5": cmd_mrt5}
