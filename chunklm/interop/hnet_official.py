"""The official H-Net code's configs and parameter names (goombalab/hnet `HNetForCausalLM`), both ways.

Config JSON fields: arch_layout, d_model, d_intermediate, vocab_size, ssm_cfg {chunk_size, d_conv, d_state, expand},
attn_cfg {num_heads, rotary_emb_dim, window_size}, tie_embeddings. Stage s of the official model is
`backbone` + `.main_network` * s; its innermost layer stack is that stage's `.main_network`, and a wider stage keeps
its padding vector as `pad_dimension`. Official linear weights are (out, in); chunklm kernels are (in, out...):

  embeddings.weight (V, D)                     embed.table (V, D)
  lm_head.weight (V, D)                        head.kernel (D, V)
  *.layers.i.norm1/norm2.weight, *.rmsnorm     *.blocks.i.norm1/norm2.scale, *.norm.scale
  mixer.Wqkv.weight (3*H*K, D)                 mixer.w_qkv.kernel (D, 3, H, K)
  mixer.out_proj.weight (D, H*K)               mixer.w_out.kernel (H*K, D)
  mlp.fc1.weight (2F, D): [y; gate]            mlp.w_in.kernel (D, 2, F): [gate, y] (silu(gate) * y)
  mlp.fc2.weight (D, F)                        mlp.w_out.kernel (F, D)
  Mamba2 in_proj/out_proj.weight               mixer.in_proj/out_proj.kernel (transposed)
  conv1d.weight (C, 1, K), conv1d.bias         mixer.conv_w (K, C), mixer.conv_b
  dt_bias, A_log, D, norm.weight               mixer.dt_bias, a_log, d_skip, norm.scale
  routing_module.q/k_proj_layer.weight         router.w_q / w_k (transposed; p_t uses W_q h_{t-1}, W_k h_t)
  residual_proj.weight, .bias                  residual_proj.kernel (transposed), residual_bias (compat official)
  main_network.pad_dimension                   pad (kept by the outer stage in chunklm)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from chunklm.config import MambaConfig, ModelConfig, check_layout, from_dict, layout_depth, parse_layer_string
from chunklm.errors import ConfigError, UserError

CONFIG_FIELDS = {"arch_layout", "d_model", "d_intermediate", "vocab_size", "ssm_cfg", "attn_cfg", "tie_embeddings"}
SSM_FIELDS = {"chunk_size", "d_conv", "d_state", "expand"}
ATTN_FIELDS = {"num_heads", "rotary_emb_dim", "window_size"}
MLP_MULTIPLE = 128  # the official SwiGLU rounds d_intermediate up to a multiple of this
MAMBA_HEAD_DIM = 64  # mamba_ssm's Mamba2 default (the official configs do not set it)
TARGETS = {1: (6.0,), 2: (3.0, 3.0)}  # the paper's training targets: 6-DC and (3,3)-DC


class Transform(NamedTuple):
  """official -> chunklm (`load`), chunklm -> official (`save`), and the official shape of a chunklm shape."""

  load: Callable[[np.ndarray], np.ndarray]
  save: Callable[[np.ndarray], np.ndarray]
  shape: Callable[[tuple], tuple]


SAME = Transform(lambda w: w, lambda k: k, lambda s: s)
TRANSPOSE = Transform(lambda w: w.T, lambda k: k.T, lambda s: s[::-1])
FC1 = Transform(
  lambda w: np.stack([w[w.shape[0] // 2 :].T, w[: w.shape[0] // 2].T], axis=1),
  lambda k: np.concatenate([k[:, 1].T, k[:, 0].T], axis=0),
  lambda s: (2 * s[2], s[0]),
)
CONV = Transform(lambda w: w[:, 0, :].T, lambda k: k.T[:, None, :], lambda s: (s[1], 1, s[0]))


def _qkv(heads: int) -> Transform:
  """Wqkv.weight (3*H*K, D), rows ordered (three, head, k) -> w_qkv.kernel (D, 3, H, K)."""
  return Transform(
    lambda w: w.T.reshape(w.shape[1], 3, heads, -1),
    lambda k: k.reshape(k.shape[0], -1).T,
    lambda s: (math.prod(s[1:]), s[0]),
  )


class Pair(NamedTuple):
  chunklm: str
  official: str
  transform: Transform


def tensor_pairs(model: ModelConfig) -> list[Pair]:
  """Every chunklm parameter of an official-compatible H-Net with its official name and transform."""
  pairs = [Pair("embed.table", "embeddings.weight", SAME), Pair("head.kernel", "lm_head.weight", TRANSPOSE)]

  def stack(ours: str, theirs: str, spec: str, level: int) -> None:
    kinds = [k for k, n in parse_layer_string(spec) for _ in range(n)]
    for i, kind in enumerate(kinds):
      a, b = f"{ours}.blocks.{i}", f"{theirs}.layers.{i}"
      pairs.append(Pair(f"{a}.norm1.scale", f"{b}.norm1.weight", SAME))
      if kind in "tT":
        pairs.append(Pair(f"{a}.mixer.w_qkv.kernel", f"{b}.mixer.Wqkv.weight", _qkv(model.n_heads[level])))
        pairs.append(Pair(f"{a}.mixer.w_out.kernel", f"{b}.mixer.out_proj.weight", TRANSPOSE))
      else:
        for mine, official, t in (
          ("in_proj.kernel", "in_proj.weight", TRANSPOSE),
          ("conv_w", "conv1d.weight", CONV),
          ("conv_b", "conv1d.bias", SAME),
          ("dt_bias", "dt_bias", SAME),
          ("a_log", "A_log", SAME),
          ("d_skip", "D", SAME),
          ("norm.scale", "norm.weight", SAME),
          ("out_proj.kernel", "out_proj.weight", TRANSPOSE),
        ):
          pairs.append(Pair(f"{a}.mixer.{mine}", f"{b}.mixer.{official}", t))
      if kind.isupper():
        pairs.append(Pair(f"{a}.norm2.scale", f"{b}.norm2.weight", SAME))
        pairs.append(Pair(f"{a}.mlp.w_in.kernel", f"{b}.mlp.fc1.weight", FC1))
        pairs.append(Pair(f"{a}.mlp.w_out.kernel", f"{b}.mlp.fc2.weight", TRANSPOSE))
    pairs.append(Pair(f"{ours}.norm.scale", f"{theirs}.rmsnorm.weight", SAME))

  def stage(level: int, ours: str, theirs: str) -> None:
    enc, inner, dec = model.level_layout(level)
    stack(f"{ours}.encoder", f"{theirs}.encoder", enc, level)
    pairs.append(Pair(f"{ours}.router.w_q", f"{theirs}.routing_module.q_proj_layer.weight", TRANSPOSE))
    pairs.append(Pair(f"{ours}.router.w_k", f"{theirs}.routing_module.k_proj_layer.weight", TRANSPOSE))
    pairs.append(Pair(f"{ours}.residual_proj.kernel", f"{theirs}.residual_proj.weight", TRANSPOSE))
    pairs.append(Pair(f"{ours}.residual_bias", f"{theirs}.residual_proj.bias", SAME))
    if model.d_model[level + 1] > model.d_model[level]:
      pairs.append(Pair(f"{ours}.pad", f"{theirs}.main_network.pad_dimension", SAME))
    if len(inner) == 1:
      stack(f"{ours}.main", f"{theirs}.main_network.main_network", inner[0], level + 1)
    else:
      stage(level + 1, f"{ours}.main", f"{theirs}.main_network")
    stack(f"{ours}.decoder", f"{theirs}.decoder", dec, level)

  stage(0, "backbone", "backbone")
  return pairs


def _bad(where: str, message: str) -> UserError:
  return UserError(f"{where}: {message}")


def _show(value) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _int(value, name: str, where: str, minimum: int) -> int:
  """`value` when it is an integer >= `minimum` (not a bool), else a one-line UserError naming the field."""
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise _bad(where, f"{name} must be {kind}, got {_show(value)}")
  return value


def _per_level(value, levels: int, name: str, where: str, minimum: int) -> list[int]:
  """One integer per level: a list of `levels` of them, or one for every level."""
  if not isinstance(value, list):
    return [_int(value, name, where, minimum)] * levels
  if len(value) != levels:
    raise _bad(where, f"{name} has {len(value)} values, the layout has {levels} levels")
  return [_int(v, f"{name}[{i}]", where, minimum) for i, v in enumerate(value)]


def _check_fields(js, where: str) -> None:
  """Known fields only, the required ones present, and each of its JSON type (sizes are checked per level later)."""
  if not isinstance(js, dict):
    raise _bad(where, "not a JSON object")
  for name, fields in (("ssm_cfg", SSM_FIELDS), ("attn_cfg", ATTN_FIELDS)):
    if not isinstance(js.get(name, {}), dict):
      raise _bad(where, f"{name} must be an object with fields {', '.join(sorted(fields))}, got {_show(js[name])}")
  for fields, got, what in (
    (CONFIG_FIELDS, js, ""),
    (SSM_FIELDS, js.get("ssm_cfg", {}), "ssm_cfg."),
    (ATTN_FIELDS, js.get("attn_cfg", {}), "attn_cfg."),
  ):
    unknown = sorted(set(got) - fields)
    if unknown:
      raise _bad(where, f"unknown field {what}{unknown[0]} (known: {', '.join(sorted(fields))})")
  missing = sorted({"arch_layout", "d_model"} - set(js))
  if missing:
    raise _bad(where, f"missing field {missing[0]}")
  if not isinstance(js["arch_layout"], list):
    raise _bad(where, f"arch_layout must be a nested list of layer strings, got {_show(js['arch_layout'])}")
  if not isinstance(js["d_model"], list):
    raise _bad(where, f"d_model must list one width per level, got {_show(js['d_model'])}")
  _int(js.get("vocab_size", 256), "vocab_size", where, 1)
  for key, value in js.get("ssm_cfg", {}).items():
    _int(value, f"ssm_cfg.{key}", where, 1)
  if not isinstance(js.get("tie_embeddings", False), bool):
    raise _bad(where, f"tie_embeddings must be true or false, got {_show(js['tie_embeddings'])}")
  if js.get("tie_embeddings", False):
    raise _bad(where, "tie_embeddings true is not supported (chunklm's embedding and LM head are separate)")


def _levels(layout: list, where: str) -> int:
  try:
    nested = _nested_tuple(layout)
    check_layout(nested, "arch_layout")
  except ConfigError as e:
    raise _bad(where, str(e)) from None
  levels = layout_depth(nested) + 1
  if levels < 2:
    raise _bad(where, "arch_layout has no routing stage; only H-Nets are converted")
  return levels


def model_from_official(js: dict, where: str) -> ModelConfig:
  """The chunklm model of an official config JSON (compat official); a one-line UserError naming the field for fields
  it does not know, values of the wrong type or size, or values chunklm cannot compute as the official code does."""
  _check_fields(js, where)
  layout = js["arch_layout"]
  levels = _levels(layout, where)
  if len(js["d_model"]) != levels:
    raise _bad(where, f"d_model must list one width per level ({levels}), got {_show(js['d_model'])}")
  d_model = [_int(d, f"d_model[{i}]", where, 1) for i, d in enumerate(js["d_model"])]
  attn = js.get("attn_cfg", {})
  heads = _per_level(attn.get("num_heads", [1] * levels), levels, "attn_cfg.num_heads", where, 1)
  rotary = _per_level(attn.get("rotary_emb_dim", [0] * levels), levels, "attn_cfg.rotary_emb_dim", where, 0)
  windows = _per_level(attn.get("window_size", [-1] * levels), levels, "attn_cfg.window_size", where, -1)
  d_int = _per_level(js.get("d_intermediate", [0] * levels), levels, "d_intermediate", where, 0)
  strings = _level_strings(_nested_tuple(layout), levels)
  fractions = set()
  for level in range(levels):
    if d_model[level] % heads[level]:
      raise _bad(where, f"attn_cfg.num_heads[{level}] {heads[level]} does not divide d_model[{level}] {d_model[level]}")
    kinds = "".join(k for s in strings[level] for k, _ in parse_layer_string(s))
    if any(k in "tT" for k in kinds):
      fractions.add(rotary[level] / (d_model[level] // heads[level]))
      if windows[level] == 0:
        raise _bad(
          where,
          f"attn_cfg.window_size {windows[level]} at level {level} is not supported (-1 = global, or > 0 keys back)",
        )
    if any(k.isupper() for k in kinds) and d_int[level] <= 0:
      raise _bad(where, f"d_intermediate is {d_int[level]} at level {level}, which has MLP layers")
  if len(fractions) > 1:
    raise _bad(
      where,
      f"rotary_emb_dim / head_dim differs between levels ({sorted(fractions)}); chunklm rotates "
      "one fraction of every head",
    )
  stages = levels - 1
  tree = {
    "layout": layout,
    "d_model": d_model,
    "d_ff": [-(-d // MLP_MULTIPLE) * MLP_MULTIPLE if d > 0 else 0 for d in d_int],
    "n_heads": heads,
    "window": [0 if w == -1 else w for w in windows],
    "rotary_fraction": fractions.pop() if fractions else 0.5,
    "vocab_size": js.get("vocab_size", 256),
    "mamba": {**dataclasses.asdict(MambaConfig()), "head_dim": MAMBA_HEAD_DIM, **js.get("ssm_cfg", {})},
    "router": ["cosine"] * stages,
    "pooling": ["select"] * stages,
    "target_ratio": list(TARGETS.get(stages, (3.0,) * stages)),
    "compat": "official",
  }
  try:
    return from_dict(ModelConfig, tree, "model")
  except UserError as e:
    raise _bad(where, str(e)) from None


def official_config(model: ModelConfig) -> dict:
  """The official config JSON of a chunklm H-Net model (the inverse of model_from_official)."""
  levels = model.num_levels
  heads = list(model.n_heads)
  rotary = [2 * int((model.d_model[lv] // heads[lv]) * model.rotary_fraction // 2) for lv in range(levels)]
  return {
    "arch_layout": _nested_list(model.layout),
    "d_model": list(model.d_model),
    "d_intermediate": [model.ff_dim(lv) if model.d_ff[lv] or _has_mlp(model, lv) else 0 for lv in range(levels)],
    "vocab_size": model.vocab_size,
    "ssm_cfg": {
      "chunk_size": model.mamba.chunk_size,
      "d_conv": model.mamba.d_conv,
      "d_state": model.mamba.d_state,
      "expand": model.mamba.expand,
    },
    "attn_cfg": {"num_heads": heads, "rotary_emb_dim": rotary, "window_size": [w or -1 for w in model.window]},
    "tie_embeddings": False,
  }


def check_exportable(model: ModelConfig) -> None:
  """A one-line UserError when the official code cannot compute this model."""
  if not model.num_stages:
    raise UserError("to-hnet: the run is not an H-Net (no routing stage)")
  if set(model.router) != {"cosine"} or set(model.pooling) != {"select"}:
    raise UserError(
      f"to-hnet: the official H-Net has the cosine router and select pooling only; this run has router "
      f"{list(model.router)}, pooling {list(model.pooling)}"
    )
  if model.mamba.head_dim != MAMBA_HEAD_DIM:
    raise UserError(
      f"to-hnet: the official configs use Mamba2 head_dim {MAMBA_HEAD_DIM}; this run has {model.mamba.head_dim}"
    )
  for lv in range(model.num_levels):
    if _has_mlp(model, lv) and model.ff_dim(lv) % MLP_MULTIPLE:
      raise UserError(
        f"to-hnet: the official SwiGLU width is a multiple of {MLP_MULTIPLE}; level {lv} has {model.ff_dim(lv)}"
      )


def _has_mlp(model: ModelConfig, level: int) -> bool:
  return any(
    k.isupper() for s in _level_strings(model.layout, model.num_levels)[level] for k, _ in parse_layer_string(s)
  )


def _level_strings(layout, levels: int) -> list[list[str]]:
  out: list[list[str]] = [[] for _ in range(levels)]
  node, level = layout, 0
  while True:
    if len(node) == 1:
      out[level].append(node[0])
      return out
    out[level] += [node[0], node[2]]
    node, level = node[1], level + 1


def _nested_tuple(layout):
  return tuple(_nested_tuple(x) if isinstance(x, (list, tuple)) else x for x in layout)


def _nested_list(layout):
  return [_nested_list(x) if isinstance(x, (list, tuple)) else x for x in layout]


def to_chunklm(
  state: dict[str, np.ndarray], model: ModelConfig, expected: dict[str, tuple], where: str
) -> dict[str, np.ndarray]:
  """{chunklm name: float32 array} from an official state dict; `expected` gives each chunklm tensor's shape. A
  one-line UserError names missing, unexpected and mis-shaped keys."""
  pairs = tensor_pairs(model)
  wanted = {p.official: p for p in pairs}
  missing = [p.official for p in pairs if p.official not in state]
  extra = sorted(set(state) - set(wanted))
  if missing or extra:
    raise _bad(
      where,
      f"does not fit the config: {len(missing)} keys missing ({', '.join(missing[:3]) or '-'}"
      f"{', ...' if len(missing) > 3 else ''}), {len(extra)} unexpected "
      f"({', '.join(extra[:3]) or '-'}{', ...' if len(extra) > 3 else ''})",
    )
  out = {}
  for p in pairs:
    want = tuple(p.transform.shape(expected[p.chunklm]))
    got = tuple(state[p.official].shape)
    if got != want:
      raise _bad(where, f"{p.official} has shape {list(got)}, the config needs {list(want)}")
    out[p.chunklm] = np.ascontiguousarray(p.transform.load(np.asarray(state[p.official], np.float32)))
  return out


def to_official(named: dict[str, np.ndarray], model: ModelConfig) -> dict[str, np.ndarray]:
  """{official name: array} from chunklm's named parameters (a run without compat official gets a zero residual
  bias: its computation has none)."""
  out = {}
  for p in tensor_pairs(model):
    if p.chunklm not in named and p.chunklm.endswith("residual_bias"):
      dim = named[p.chunklm.replace("residual_bias", "residual_proj.kernel")].shape[0]
      out[p.official] = np.zeros((dim,), np.float32)
      continue
    out[p.official] = np.ascontiguousarray(p.transform.save(np.asarray(named[p.chunklm])))
  return out
