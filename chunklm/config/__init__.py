"""Typed, frozen experiment configuration: YAML files (with `base:` inheritance) plus `--set a.b=c` overrides.

A config is data: every field is typed and documented in one line, a closed set of choices is a `Literal` type that
the loader checks, other values are checked once in `__post_init__`, and unknown keys are errors that list the valid
ones. layout.py: layer strings and nested layouts; routers.py: the router registry and the routers' settings
sections; schema.py and data.py: the sections; capacity.py: static chunk capacities; experiment.py: Config, the
sections together; loading.py: files, overrides, dumps and diffs; untrusted.py: bounded loading of YAML and
JSON that chunklm did not write.
"""

from chunklm.config.capacity import auto_capacity_factor, capacities, capacity_factor, stage_capacities
from chunklm.config.data import DataConfig, DnaCase, DnaConfig, DnaIupac, DnaNRuns, MixtureSource
from chunklm.config.experiment import Config
from chunklm.config.layout import check_layout, layout_depth, parse_layer_string
from chunklm.config.loading import (
  CONFIG_DIR,
  CONFIG_FORMAT,
  config_tree,
  differing_fields,
  dump_yaml,
  flat_items,
  from_dict,
  load_config,
  merge_trees,
  read_config_format,
  read_config_tree,
  read_yaml,
  resolve_bundled,
  resolve_config_path,
  to_dict,
)
from chunklm.config.routers import (
  BYTE_ROUTERS,
  ROUTERS,
  SCRIPTS,
  DeleteGateConfig,
  EntropyConfig,
  EntropyMode,
  GumbelConfig,
  RouterKind,
  RouterName,
  WhitespaceConfig,
)
from chunklm.config.schema import (
  AttentionImpl,
  Compat,
  DType,
  EvalConfig,
  KernelImpl,
  KernelsConfig,
  MambaConfig,
  MeshConfig,
  ModelConfig,
  NanPolicy,
  Pooling,
  RatioLoss,
  Schedule,
  TrainConfig,
)
from chunklm.config.untrusted import MAX_TEXT, Refused, load_json, load_yaml, utf8

__all__ = [
  "BYTE_ROUTERS",
  "CONFIG_DIR",
  "CONFIG_FORMAT",
  "AttentionImpl",
  "Compat",
  "Config",
  "DType",
  "DataConfig",
  "DeleteGateConfig",
  "DnaCase",
  "DnaConfig",
  "DnaIupac",
  "DnaNRuns",
  "MixtureSource",
  "EntropyConfig",
  "EntropyMode",
  "EvalConfig",
  "GumbelConfig",
  "KernelImpl",
  "KernelsConfig",
  "MAX_TEXT",
  "MambaConfig",
  "MeshConfig",
  "ModelConfig",
  "NanPolicy",
  "Pooling",
  "ROUTERS",
  "RatioLoss",
  "Refused",
  "RouterKind",
  "RouterName",
  "SCRIPTS",
  "Schedule",
  "TrainConfig",
  "WhitespaceConfig",
  "auto_capacity_factor",
  "capacities",
  "capacity_factor",
  "check_layout",
  "config_tree",
  "differing_fields",
  "dump_yaml",
  "flat_items",
  "from_dict",
  "layout_depth",
  "load_config",
  "load_json",
  "load_yaml",
  "merge_trees",
  "parse_layer_string",
  "read_config_format",
  "read_config_tree",
  "read_yaml",
  "resolve_bundled",
  "resolve_config_path",
  "stage_capacities",
  "to_dict",
  "utf8",
]
