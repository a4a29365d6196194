"""What the CLI prints after training, evaluation and `info`."""

from __future__ import annotations

import json
from pathlib import Path

import jax

from chunklm.config import Config, to_dict
from chunklm.errors import UserError
from chunklm.eval.summary import sample_and_picture, show_bytes
from chunklm.model.describe import describe_config
from chunklm.run.trained import TrainedRun, abstract_params
from chunklm.train.optim import lr_multipliers
from chunklm.train.parts import check_selectors, count_frozen, frozen_mask, matches, named_parts, path_name
from chunklm.train.trainer import TrainResult


def print_train_summary(result: TrainResult, main_process: bool = True) -> None:
  """After `chunklm train`: final BPB next to the order-0 entropy, bytes per chunk against the targets, the chunk
  boundaries on a valid snippet, a sample, and where the outputs are. Every process computes the sample (the
  parameters may be spread over all of them); the main process prints."""
  run, cfg, wd = result.run, result.run.cfg, result.workdir
  if not result.finished:
    if main_process:
      print(f"\nstopped at step {result.step} of {cfg.train.steps}; checkpoint in {wd / 'checkpoints'}; "
            "re-run the same command to continue")
    return
  sample, pic, why_not = sample_and_picture(run, result.valid_docs)
  if not main_process:
    return
  v = result.valid
  print(f"\n== {wd.name}: {result.num_params:,} parameters, {result.step} steps ==")
  print(f"valid bits per byte   : {v['bpb']:.4f}  ({int(v['bytes']):,} bytes)")
  print(f"order-0 byte entropy  : {result.order0_entropy:.4f}  (bits per byte of a unigram byte model of valid)")
  target = 1.0
  for s in range(cfg.model.num_stages):
    target *= cfg.model.target_ratio[s]
    print(f"bytes per chunk, stage {s}: {v[f'bytes_per_chunk_s{s}']:.2f}  (target {target:g})")
  if pic:
    print(f"boundaries            : {pic}")
  if why_not:
    print(f"no sample: {why_not}")
  if sample:
    print("sample:\n" + "-" * 60 + "\n" + show_bytes(sample) + "\n" + "-" * 60)
  print(f"metrics    : {wd / 'metrics.jsonl'} (TensorBoard: {wd / 'tb'})")
  print(f"loss plot  : {wd / 'loss.png'}")
  print(f"checkpoint : {wd / 'checkpoints'}")


def print_eval(run: TrainedRun, res: dict, what: str, overrides: tuple[str, ...]) -> None:
  changed = f" with {' '.join(overrides)}" if overrides else ""
  per_base = " (= bits per base: DNA, one byte per base)" if "bits_per_base" in res else ""
  print(f"{run.workdir} (step {run.step}){changed} on {what}: {res['bpb']:.4f} bits per byte{per_base} over "
        f"{int(res['bytes']):,} bytes")
  for key in sorted(k for k in res if k.startswith("bytes_per_chunk")):
    print(f"{key}: {res[key]:.2f}")


def print_config_info(name: str, cfg: Config, list_params: bool = False) -> dict:
  """`chunklm info`: parameters, training FLOPs per byte, window, targets, capacities, per-level LR multipliers."""
  info = describe_config(cfg)
  info["lr_multipliers"] = lr_multipliers(cfg.model)
  print(f"{name}: layout {json.dumps(to_dict(cfg.model.layout))}, d_model {list(cfg.model.d_model)}")
  print(f"  parameters          : {info['params']:,}")
  if cfg.data.tokenizer:  # per byte depends on the tokenizer's bytes per token, which `bench train` measures
    print(f"  train FLOPs per token: {info['flops_per_byte'] / 1e6:.2f} M (divide by the bytes per token for per byte)")
  else:
    print(f"  train FLOPs per byte: {info['flops_per_byte'] / 1e6:.2f} M nominal (at the target chunk ratios), "
          f"{info['executed_flops_per_byte'] / 1e6:.2f} M executed (on every chunk slot)")
  print(f"  window              : {cfg.data.seq_len} bytes x batch {cfg.train.batch_size}; at most "
        f"{cfg.data.doc_slots} documents per window")
  if cfg.model.num_stages:
    print(f"  targets N           : {list(cfg.model.target_ratio)}; chunk capacities {list(info['capacities'])} "
          f"(innermost: {info['executed_ratio']:.2f}x the chunks at the targets)")
    print(f"  LR multipliers      : {[round(m, 3) for m in info['lr_multipliers']]}")
  params = abstract_params(cfg)[1]
  check_selectors(cfg.train.freeze, params, cfg.model, "train.freeze")
  info["trainable"], info["frozen"] = count_frozen(params, cfg.model, cfg.train.freeze)
  print(f"  trained / frozen    : {info['trainable']:,} / {info['frozen']:,} model variables"
        + (f" (train.freeze {list(cfg.train.freeze)})" if cfg.train.freeze else ""))
  if cfg.train.lr_scale:
    print(f"  LR factors per part : {', '.join(cfg.train.lr_scale)}")
  if cfg.train.init_from:
    print(f"  starts from         : {cfg.train.init_from}")
  if list_params:  # the paths that train.freeze / train.lr_scale globs match
    parts, frozen = named_parts(cfg.model), jax.tree.leaves(frozen_mask(params, cfg.model, cfg.train.freeze))
    for (path, leaf), f in zip(jax.tree_util.tree_flatten_with_path(params)[0], frozen):
      name = path_name(path)
      part = next((p for p in parts if matches(name, p, parts)), "-")
      print(f"    {name:60s} {str(tuple(leaf.shape)):16s} {part:12s}{' frozen' if f else ''}")
  return info


def write_json(path: str | None, obj) -> None:
  """`obj` as indented JSON at `path` (nothing when None): NumPy/JAX scalars and arrays become numbers and lists,
  paths and other objects their text. A path that cannot be written is one line."""
  if path is None:
    return
  def plain(x):
    if hasattr(x, "tolist"):
      return x.tolist()
    return str(x)
  try:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1, default=plain) + "\n")
  except OSError as e:
    raise UserError(f"--json {path}: {e.strerror}") from None
  print(f"wrote {path}")
