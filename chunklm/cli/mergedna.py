"""`chunklm mergedna train | eval | boundaries`: the MergeDNA genome autoencoder (`chunklm.train.mergedna_trainer`,
`chunklm.eval.merges`)."""

from __future__ import annotations

import json

import numpy as np

from chunklm import plots
from chunklm.cli.output import write_json
from chunklm.data.corpus import load_documents
from chunklm.errors import UserError
from chunklm.eval.boundaries import picture
from chunklm.eval.kmer_boundaries import kmer_markdown
from chunklm.eval.merges import route_document
from chunklm.model.functional import split_model
from chunklm.run.workdir import RunDir
from chunklm.storage.paths import location
from chunklm.train.mergedna_trainer import eval_mergedna_run, load_mergedna_config, open_mergedna, train_mergedna


def _print_eval(res: dict) -> None:
  print(f"merged-token reconstruction : {res['mtr_bpb']:.4f} bits per base")
  print(
    f"masked token modelling      : {res['amtm_bpb']:.4f} bits per masked base ({res['masked']:.1%} masked; "
    f"overflow {res['masked_overflow']:.2%} of tokens in the masked pass)"
  )
  print(
    f"bases per merged token      : {res['bases_per_token']:.2f} (merging blocks "
    + " x ".join(f"{r:.2f}" for r in res["ratios"])
    + f"; overflow {res['overflow']:.2%} of tokens)"
  )
  print(
    f"training FLOPs per base     : {res['train_flops_per_base'] / 1e6:.2f} M nominal at these ratios, "
    f"{res['executed_flops_per_base'] / 1e6:.2f} M executed (capacities, dense masks)"
  )


def train(args) -> int:
  overrides = list(args.overrides)
  if args.data:
    overrides.append(f"data.sources={json.dumps(args.data)}")
  if args.valid_data:
    overrides.append(f"data.valid_sources={json.dumps(args.valid_data)}")
  cfg = load_mergedna_config(args.config, overrides)
  res = train_mergedna(cfg, args.workdir, progress=not args.no_progress)
  _print_eval(res)
  run = RunDir(args.workdir)
  print(f"run: {run} ({run.metrics.name}, {run.eval_json.name}, {run.checkpoints.name}/)")
  write_json(args.json, res)
  return 0


def evaluate(args) -> int:
  res = eval_mergedna_run(args.workdir, args.batch_size, progress=not args.no_progress)
  _print_eval(res)
  write_json(args.json, res)
  return 0


def boundaries(args) -> int:
  if args.max_bases < 1 or args.show < 0:
    raise UserError("--max-bases must be >= 1 and --show >= 0")
  cfg, model, step = open_mergedna(args.workdir)
  graphdef, params = split_model(model)
  docs = load_documents(tuple(args.data), cfg.data)
  routed, budget, sizes = [], args.max_bases, []
  for i in range(len(docs)):
    if budget <= 0:
      break
    data = docs.doc(i, budget)  # only the bases shown are read (a genome is megabytes)
    budget -= len(data)
    r, size = route_document(graphdef, params, data, cfg.data.seq_len)
    routed.append((data, r))
    sizes.append(size)
  size = np.concatenate(sizes)
  levels = len(cfg.mergedna.merge_ratios)
  first, r0 = routed[0]
  shown = first[: args.show]
  text = [
    f"MergeDNA run {args.workdir} (step {step}): {sum(len(d) for d, _ in routed):,} bases, {len(size):,} tokens",
    "",
    "```",
    picture(shown, [lv[: len(shown)] for lv in r0.starts]),
    "```",
    "",
    f"bases per token: mean {size.mean():.2f}; "
    + ", ".join(f"{n}: {c / len(size):.1%}" for n, c in enumerate(np.bincount(size)) if c),
    "",
    kmer_markdown(routed, levels),
  ]
  report = "\n".join(text)
  print(report)
  if args.out:
    out = location(args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "boundaries.md").write_text(report + "\n")
    fig, ax = plots.figure(figsize=(6, 3.5))
    counts = np.bincount(size)
    ax.bar(np.arange(len(counts)), counts / len(size))
    ax.set_xlabel("bases per merged token")
    ax.set_ylabel("share of tokens")
    ax.set_title(f"MergeDNA tokens (mean {size.mean():.2f} bases)")
    ax.set_xticks(np.arange(1, len(counts), max(1, len(counts) // 16)))
    fig.tight_layout()
    plots.save(fig, out / "tokens.png")
    print(f"wrote {out / 'boundaries.md'} and {out / 'tokens.png'}")
  write_json(args.json, {"step": step, "bases_per_token": float(size.mean()), "tokens": int(len(size))})
  return 0
