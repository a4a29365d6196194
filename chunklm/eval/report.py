"""What the CLI prints after training, evaluation and generation."""

from __future__ import annotations

from pathlib import Path

from chunklm.config import Config, capacities
from chunklm.errors import DataError


def show_bytes(data: bytes) -> str:
  """Bytes as readable text: invalid UTF-8 shown with replacement characters, control bytes escaped."""
  text = data.decode("utf-8", errors="replace")
  return "".join(c if c.isprintable() or c in "\n\t" else f"\\x{ord(c):02x}" if ord(c) < 256 else c for c in text)


def print_train_summary(result, cfg: Config) -> None:
  wd = result.workdir
  if not result.finished:
    print(f"\nstopped at step {result.step} of {cfg.train.steps}; checkpoint in {wd / 'checkpoints'}; "
          "re-run the same command to continue")
    return
  v = result.valid
  print(f"\n== {wd.name}: {result.num_params:,} parameters, {result.step} steps ==")
  print(f"valid bits per byte   : {v['bpb']:.4f}  ({int(v['bytes']):,} bytes)")
  print(f"order-0 byte entropy  : {result.order0_entropy:.4f}  (bits per byte of a unigram byte model of valid)")
  target = 1.0
  for s in range(cfg.model.num_stages):
    target *= cfg.model.target_ratio[s]
    print(f"bytes per chunk, stage {s}: {v[f'bytes_per_chunk_s{s}']:.2f}  (target {target:g})")
  if result.boundary_picture:
    print(f"boundaries            : {result.boundary_picture}")
  if result.sample:
    print("sample:\n" + "-" * 60 + "\n" + show_bytes(result.sample) + "\n" + "-" * 60)
  print(f"metrics    : {wd / 'metrics.jsonl'} (TensorBoard: {wd / 'tb'})")
  print(f"loss plot  : {wd / 'loss.png'}")
  print(f"checkpoint : {wd / 'checkpoints'}")


def run_eval(workdir: Path, data: list[str], valid_data: list[str], max_bytes: int, batch_size: int | None,
             overrides: tuple[str, ...] = ()) -> dict:
  from chunklm.data.corpus import load_documents, load_splits
  from chunklm.data.pipeline import leading_bytes
  from chunklm.data.tokenizer import tokenize
  from chunklm.eval.bpb import evaluate
  from chunklm.train.restore import load_trained, run_tokenizer
  from chunklm.train.step import make_eval_step

  cfg, graphdef, params, step = load_trained(workdir, overrides=tuple(overrides))
  tok = run_tokenizer(cfg, workdir)
  paths = tuple(data) + tuple(valid_data)
  if paths:
    docs = load_documents(paths, cfg.data)
    docs = docs.select(docs.lengths > 0)
    if docs.num_bytes == 0:
      raise DataError(f"{', '.join(paths)}: no bytes to evaluate")
    what = ", ".join(paths)
  else:
    docs = load_splits(cfg.data, cache_dir=workdir / "cache").valid
    what = "the run's validation split"
  docs = leading_bytes(docs, max_bytes)
  vocab = {}
  if tok is not None:
    docs, vocab = tokenize(docs, tok), {"bos": tok.bos_id, "piece_bytes": tok.piece_bytes}
  res = evaluate(make_eval_step(graphdef), params, docs, cfg.data.seq_len, batch_size or cfg.eval.batch_size,
                 progress=True, **vocab)
  changed = f" with {' '.join(overrides)}" if overrides else ""
  print(f"{workdir} (step {step}){changed} on {what}: {res['bpb']:.4f} bits per byte over {int(res['bytes']):,} bytes")
  for key in sorted(k for k in res if k.startswith("bytes_per_chunk")):
    print(f"{key}: {res[key]:.2f}")
  return res


def run_generate(workdir: Path, prompts: list[str], max_bytes: int, temperature: float, top_k: int, top_p: float,
                 stop: str, seed: int) -> list[bytes]:
  from chunklm.eval.generate import generate_from_workdir

  stop_bytes = stop.encode().decode("unicode_escape").encode("latin-1")  # '\\n' on the command line = newline
  outs = generate_from_workdir(workdir, [p.encode() for p in prompts], max_bytes=max_bytes, temperature=temperature,
                               top_k=top_k, top_p=top_p, stop=stop_bytes, seed=seed)
  for prompt, out in zip(prompts, outs):
    if len(prompts) > 1:
      print("-" * 60)
    print(show_bytes(prompt.encode() + out))
  return outs


def describe_config(cfg: Config) -> dict:
  """Parameter count (without allocating), training FLOPs/byte at the target ratios, capacities, LR multipliers."""
  import jax
  from flax import nnx

  from chunklm.model.flops import train_flops_per_byte
  from chunklm.model.lm import build_model
  from chunklm.train.optim import lr_multipliers

  abstract = nnx.eval_shape(lambda: build_model(cfg))
  params = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  return {
      "params": params,
      "flops_per_byte": train_flops_per_byte(cfg.model, cfg.data.seq_len),
      "capacities": capacities(cfg.model, cfg.data.seq_len, cfg.data.max_docs_per_window),
      "lr_multipliers": lr_multipliers(cfg.model),
  }


def print_config_info(name: str, cfg: Config) -> dict:
  import json

  from chunklm.config import to_dict
  info = describe_config(cfg)
  print(f"{name}: layout {json.dumps(to_dict(cfg.model.layout))}, d_model {list(cfg.model.d_model)}")
  print(f"  parameters          : {info['params']:,}")
  print(f"  train FLOPs per byte: {info['flops_per_byte'] / 1e6:.2f} M (at the target chunk ratios)")
  print(f"  window              : {cfg.data.seq_len} bytes x batch {cfg.train.batch_size}")
  if cfg.model.num_stages:
    print(f"  targets N           : {list(cfg.model.target_ratio)}; chunk capacities {list(info['capacities'])}")
    print(f"  LR multipliers      : {[round(m, 3) for m in info['lr_multipliers']]}")
  return info
