"""Config files: YAML reading with `base:` inheritance, `--set a.b=c` overrides, typed coercion into the schema,
bundled-name resolution, the dumped form of a run's config, and flat diffs between two configs.

Coercion checks each value against its field's type once, for every section alike: numbers, strings, tuples (per
level or per stage: one value is a list of one), nested sections, and `Literal` fields, whose value must be one of
their choices (an error names the key, the value and the valid choices; an element of a per-stage list is named by
its index). A dataclass field without a default is required. The compare specs are read the same way.

A config file is a mapping of sections (model, data, train, eval, mesh, kernels). Two top-level keys are not
sections: `base: <bundled config name or a path relative to this file>` deep-merges the file over its base (mappings
merge key by key, lists and scalars replace; bases may have bases), and `config_format: N`, which `dump_yaml` writes
so that a run's saved config.yaml written by another chunklm version is refused with a clear message.

The loader is hand-written rather than built on a dataclass-config library such as draccus (or pyrallis,
OmegaConf). The schema is already plain frozen dataclasses checked in `__post_init__` (the per-level broadcast
included), so a library would replace only the coercion, the `--set` walker and the base merge here, about 150
lines, and not shorten them much: the command line would move to the library's argparse flags (`--model.d_model 256`)
instead of `--set KEY=VALUE` with each value parsed as YAML and strings kept verbatim (the form the compare specs'
`set:` lines use too); errors would come from argparse and the library's decoders instead of one line that names the
key and lists the valid ones; bundled-name resolution, `config_format` and these merge rules would stay ours.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from chunklm.config.experiment import Config
from chunklm.config.untrusted import MAX_TEXT, Refused, load_yaml
from chunklm.errors import ConfigError
from chunklm.storage.paths import is_remote, location

CONFIG_FORMAT = 2  # the layout of config files this version reads and writes; bump when a key is renamed or removed
CONFIG_DIR = Path(__file__).parent.parent / "configs"


def _coerce(value: Any, tp: Any, key: str) -> Any:
  origin = typing.get_origin(tp)
  if dataclasses.is_dataclass(tp):
    if not isinstance(value, dict):
      raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return from_dict(tp, value, key)
  if tp is tuple:  # the nested layout
    return _to_layout(value, key)
  if origin is tuple:
    return _to_tuple(value, typing.get_args(tp), key)
  if origin is typing.Literal:
    return _choice(value, typing.get_args(tp), key)
  return _scalar(value, tp, key)


def _to_tuple(value: Any, args: tuple, key: str) -> tuple:
  """tuple[X, ...] from a list (or one value); a fixed tuple[X, Y] from a list of that length."""
  if len(args) == 2 and args[1] is Ellipsis:
    item_tp = args[0]
    if isinstance(value, dict) and item_tp is str:  # a mapping such as {latin: 5} is kept as ('latin:5',)
      value = [f"{k}:{v}" for k, v in value.items()]
    items = value if isinstance(value, (list, tuple)) else [value]
    if typing.get_origin(item_tp) is typing.Literal:  # per-stage choices: the error names the item as one
      return tuple(_choice(v, typing.get_args(item_tp), key, i) for i, v in enumerate(items))
    return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(items))
  if not isinstance(value, (list, tuple)) or len(value) != len(args):
    raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
  return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, args)))


def _choice(value: Any, choices: tuple, key: str, item: int | None = None) -> Any:
  """A value of a Literal field: one of `choices`, else one line naming the key, the value and the valid ones."""
  if any(type(value) is type(c) and value == c for c in choices):  # type too: True is not 1, 1 is not "1"
    return value
  valid = ", ".join(str(c) for c in choices)
  if item is None:
    raise ConfigError(f"{key}: {value!r} is not one of {valid}")
  noun = key.rsplit(".", 1)[-1]  # per-stage fields have singular names: model.router, model.pooling
  raise ConfigError(f"{key}[{item}]: unknown {noun} {value!r}; valid: {valid}")


def _scalar(value: Any, tp: Any, key: str) -> Any:
  if tp is bool:
    if isinstance(value, bool):
      return value
  elif tp is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+(\.0*)?([eE]\+?\d+)?", value.strip()):
      return int(float(value))
  elif tp is float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      number = float(value)
    elif isinstance(value, str):
      try:
        number = float(value)
      except ValueError:
        pass
    if number is not None:
      if not math.isfinite(number):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
      return number
  elif tp is str:
    if isinstance(value, str):
      return value
  name = getattr(tp, "__name__", str(tp))
  raise ConfigError(f"{key}: expected {name}, got {value!r}")


def _to_layout(value: Any, key: str) -> tuple:
  if isinstance(value, str):
    return (value,)
  if isinstance(value, (list, tuple)):
    return tuple(v if isinstance(v, str) else _to_layout(v, key) for v in value)
  raise ConfigError(f"{key}: expected a layout such as ['m4', ['T9'], 'm4'], got {value!r}")


def from_dict(cls: Any, data: dict, prefix: str = "") -> Any:
  """Builds dataclass `cls` from a mapping; unknown keys, missing required keys, wrong types and values outside a
  Literal field's choices raise ConfigError."""
  hints = typing.get_type_hints(cls)
  fields = [f.name for f in dataclasses.fields(cls)]
  kwargs = {}
  for key, value in data.items():
    full = f"{prefix}.{key}" if prefix else str(key)
    if key not in fields:
      raise ConfigError(f"{full}: unknown key; valid keys{' in ' + prefix if prefix else ''}: {', '.join(fields)}")
    kwargs[key] = _coerce(value, hints[key], full)
  missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs and _required(f)]
  if missing:
    raise ConfigError(f"{prefix or cls.__name__}: needs {', '.join(missing)}")
  return cls(**kwargs)


def _required(field: dataclasses.Field) -> bool:
  return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def to_dict(cfg: Any) -> Any:
  """Plain nested dicts/lists (YAML- and JSON-friendly)."""
  if dataclasses.is_dataclass(cfg):
    return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
  if isinstance(cfg, tuple):
    return [to_dict(v) for v in cfg]
  return cfg


def _set_path(tree: dict, key: str, raw: str, root: type = Config) -> None:
  parts = key.split(".")
  cls: Any = root
  node = tree
  for i, part in enumerate(parts):
    names = {f.name: f for f in dataclasses.fields(cls)}
    where = ".".join(parts[: i + 1])
    if part not in names:
      scope = ".".join(parts[:i]) or "the top level"
      raise ConfigError(f"--set {key}: unknown key {where!r}; valid keys in {scope}: {', '.join(names)}")
    tp = typing.get_type_hints(cls)[part]
    if i == len(parts) - 1:
      if dataclasses.is_dataclass(tp):
        first = dataclasses.fields(tp)[0].name
        raise ConfigError(f"--set {key}: {where} is a section; set one of its keys, e.g. {where}.{first}=...")
      # Strings stay verbatim; everything else is parsed as YAML so '256', '[1, 2]' and 'true' get their types.
      if tp is str or _is_text_choice(tp):
        node[part] = raw
      else:
        try:
          node[part] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError as e:
          raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e.problem}") from None
      return
    if not dataclasses.is_dataclass(tp):
      raise ConfigError(f"--set {key}: {where} is not a section")
    node = node.setdefault(part, {})
    if not isinstance(node, dict):
      raise ConfigError(f"--set {key}: {where} is not a mapping in the config file")
    cls = tp


def _is_text_choice(tp: Any) -> bool:
  return typing.get_origin(tp) is typing.Literal and all(isinstance(c, str) for c in typing.get_args(tp))


def load_config(
  path: str | os.PathLike | None = None,
  overrides: list[str] | tuple[str, ...] = (),
  root: type = Config,
  folder: Path | None = None,
):
  """Loads YAML at `path` (or the defaults) over its bases, applies `a.b=c` overrides, validates; raises ConfigError.
  `root` is the config class (Config; MrT5Run for `chunklm mrt5`), `folder` where its bundled files are named."""
  return from_dict(root, config_tree(path, overrides, root, folder))


def config_tree(
  path: str | os.PathLike | None = None,
  overrides: list[str] | tuple[str, ...] = (),
  root: type = Config,
  folder: Path | None = None,
) -> dict:
  """The mapping load_config validates: the file over its bases with the overrides applied (keys checked, values
  not yet typed), for a caller that adds settings decided from part of it."""
  tree: dict = {}
  if path is not None:
    tree = read_config_tree(resolve_config_path(path) if folder is None else resolve_bundled(path, folder, "config"))
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set model.d_model=256")
    key, raw = item.split("=", 1)
    _set_path(tree, key.strip(), raw, root)
  return tree


def read_config_tree(path: Path, chain: tuple[Path, ...] = ()) -> dict:
  """The mapping of sections in config file `path`, merged over its `base` chain; `config_format` is checked."""
  chain = (*chain, _canonical(path))
  tree = read_yaml(path)
  _check_format(tree.pop("config_format", None), path)
  base = tree.pop("base", None)
  if base is None:
    return tree
  if not isinstance(base, str) or not base:
    raise ConfigError(f"{path}: base must be a bundled config name or a path relative to this file, got {base!r}")
  base_path = _resolve_base(base, path)
  if _canonical(base_path) in chain:
    names = " -> ".join(str(p) for p in (*chain, _canonical(base_path)))
    raise ConfigError(f"{path}: config bases form a cycle ({names}); remove one of the base keys")
  return merge_trees(read_config_tree(base_path, chain), tree)


def _canonical(path: Path) -> Path:
  """The path a config file is known by in a base chain (resolved locally; a gs:// URL as it is)."""
  return path if is_remote(path) else path.resolve()


def _resolve_base(base: str, including: Path) -> Path:
  near = including.parent / base
  if near.is_file():
    return near
  for candidate in (CONFIG_DIR / base, CONFIG_DIR / f"{base}.yaml"):
    if candidate.is_file():
      return candidate
  raise ConfigError(
    f"{including}: base {base!r} not found next to it ({near}) nor among the bundled configs "
    f"({', '.join(sorted(q.stem for q in CONFIG_DIR.glob('*.yaml')))})"
  )


def merge_trees(base: dict, over: dict) -> dict:
  """`over` deep-merged onto `base`: mappings merge key by key; lists and scalars in `over` replace."""
  out = dict(base)
  for key, value in over.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      out[key] = merge_trees(out[key], value)
    else:
      out[key] = value
  return out


def _check_format(fmt: Any, path: Path) -> None:
  if fmt is not None and fmt != CONFIG_FORMAT:
    raise ConfigError(
      f"{path} was written by another chunklm version (config format {fmt}; this one reads {CONFIG_FORMAT})"
    )


def read_config_format(path: str | os.PathLike) -> int | None:
  """The `config_format` of a saved config file, without validating the rest; None when it has none (format 1)."""
  fmt = read_yaml(location(path)).get("config_format")
  if fmt is not None and (not isinstance(fmt, int) or isinstance(fmt, bool)):
    raise ConfigError(f"{path}: config_format must be an integer, got {fmt!r}")
  return fmt


def read_yaml(path: Path) -> dict:
  """The mapping in config file `path`, read as YAML chunklm did not write (config.untrusted: at most 1 MiB, aliases
  expanding to at most 100,000 values, 100 levels deep); every problem is a one-line ConfigError."""
  try:
    with path.open("rb") as f:
      data = f.read(MAX_TEXT + 1)  # no more: a huge file is refused without reading it all
  except OSError as e:
    raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
  if len(data) > MAX_TEXT:
    raise ConfigError(f"{path}: the config file is over the {MAX_TEXT:,} bytes allowed")
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
  try:
    tree = load_yaml(text)
  except Refused as e:
    if e.syntax:
      raise ConfigError(f"invalid YAML in {path}{e.mark}: {e.problem}") from None
    raise ConfigError(f"{path}: {e}") from None
  if tree is None:
    return {}
  if not isinstance(tree, dict):
    raise ConfigError(
      f"{path}: expected a mapping of sections (model, data, train, eval, mesh, kernels) at the top level"
    )
  return tree


def resolve_bundled(path: str | os.PathLike, folder: Path, what: str) -> Path:
  """A path, or the name of a YAML file in `folder` ('x' or 'x.yaml'); else an error listing the bundled ones."""
  p = location(path, what)
  if p.is_file():
    return p
  for candidate in (folder / p.name, folder / f"{p.name}.yaml"):
    if candidate.is_file():
      return candidate
  bundled = ", ".join(sorted(q.stem for q in folder.glob("*.yaml")))
  raise ConfigError(f"{what} {str(path)!r} not found; bundled {what}s: {bundled}")


def resolve_config_path(path: str | os.PathLike) -> Path:
  """A path, or the name of a bundled config ('hnet_1stage_tiny' or 'hnet_1stage_tiny.yaml')."""
  return resolve_bundled(path, CONFIG_DIR, "config")


def dump_yaml(cfg) -> str:
  """The fully resolved config (no `base`) as YAML, `config_format` first."""
  return yaml.safe_dump({"config_format": CONFIG_FORMAT, **to_dict(cfg)}, sort_keys=False, default_flow_style=None)


def flat_items(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flat_items(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
  return {prefix: tree}


def differing_fields(a: Config, b: Config, sections: tuple[str, ...]) -> list[str]:
  """Dotted keys under `sections` whose values differ, as 'key: a -> b'."""
  fa, fb = flat_items(to_dict(a)), flat_items(to_dict(b))
  return [f"{k}: {fa[k]!r} -> {fb[k]!r}" for k in fa if k.split(".")[0] in sections and fa[k] != fb.get(k)]
