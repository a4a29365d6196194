import dataclasses
import typing

import pytest
import yaml

from chunklm.config import (
  BYTE_ROUTERS,
  CONFIG_DIR,
  CONFIG_FORMAT,
  ROUTERS,
  Config,
  KernelImpl,
  ModelConfig,
  RouterName,
  differing_fields,
  dump_yaml,
  from_dict,
  load_config,
  read_config_format,
)
from chunklm.errors import ConfigError
from chunklm.kernels import api as kernels_api
from chunklm.model import routers as model_routers

SECTIONS = ("model", "data", "train", "eval", "mesh", "kernels")


def test_every_bundled_config_loads():
  names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
  assert "byte_transformer_tiny" in names
  for name in names:
    cfg = load_config(name)
    assert isinstance(cfg, Config)


def test_overrides_convert_types_and_broadcast():
  cfg = load_config(
    "byte_transformer_tiny",
    ["model.d_model=256", "train.steps=500", "train.lr=1e-3", "data.sources=[a.txt, b.txt]", "eval.sample_prompt=123"],
  )
  assert cfg.model.d_model == (256,) and cfg.train.steps == 500 and cfg.train.lr == 1e-3
  assert cfg.data.sources == ("a.txt", "b.txt")
  assert cfg.eval.sample_prompt == "123"  # strings stay strings


def test_yaml_roundtrip(tmp_path):
  cfg = load_config("byte_transformer_tiny", ["train.steps=7"])
  path = tmp_path / "c.yaml"
  path.write_text(dump_yaml(cfg))
  assert load_config(path) == cfg


def test_unknown_key_names_it_and_lists_valid_keys():
  with pytest.raises(ConfigError, match=r"model\.d_modle.*valid keys in model: layout, d_model"):
    load_config(None, ["model.d_modle=3"])
  with pytest.raises(ConfigError, match=r"modle.*valid keys in the top level: model, data"):
    load_config(None, ["modle.d_model=3"])
  with pytest.raises(ConfigError, match=r"train\.stepz: unknown key"):
    from_dict(Config, {"train": {"stepz": 3}})


@pytest.mark.parametrize(
  "override, message",
  [
    ("train.steps=abc", r"train\.steps: expected int, got 'abc'"),
    ("train.steps=0", r"train\.steps: must be positive"),
    ("model.d_model=-4", r"sizes must be positive"),
    ("data.seq_len=0", r"data\.seq_len: must be > 1"),
    ("train.lr=-1", r"train\.lr: must be positive"),
    ("model.n_heads=3", r"not divisible"),
    ("model.layout=[X4]", r"cannot parse layer string 'X4'"),
    ("model.dtype=float16", r"model\.dtype"),
    ("train.batch_size=2.5", r"expected int"),
    ("train=3", r"train is a section"),
    ("steps", r"expected KEY=VALUE"),
  ],
)
def test_bad_values_are_config_errors(override, message):
  with pytest.raises(ConfigError, match=message):
    load_config(None, [override])


# ----------------------------------------------------------------------------- closed sets of choices (Literal types)


def _choice_fields(cls: type, prefix: str = ""):
  """(dotted key, choices, per-stage) of every Literal field under `cls`, a per-stage tuple of Literals included."""
  for name, tp in typing.get_type_hints(cls).items():
    if dataclasses.is_dataclass(tp):
      yield from _choice_fields(tp, f"{prefix}{name}.")
    elif typing.get_origin(tp) is typing.Literal:
      yield prefix + name, typing.get_args(tp), False
    elif typing.get_origin(tp) is tuple and typing.get_origin(typing.get_args(tp)[0]) is typing.Literal:
      yield prefix + name, typing.get_args(typing.get_args(tp)[0]), True


def test_every_choice_field_is_checked_by_the_loader():
  fields = {key: (choices, per_stage) for key, choices, per_stage in _choice_fields(Config)}
  assert {
    "model.router",
    "model.pooling",
    "model.dtype",
    "model.entropy.mode",
    "data.dna.n_runs",
    "train.nan_policy",
    "kernels.impl",
    "kernels.attention",
  } <= set(fields)
  for key, (choices, per_stage) in fields.items():
    valid = ", ".join(choices)
    message = (
      rf"^{key}\[0\]: unknown {key.rsplit('.', 1)[-1]} 'bogus'; valid: {valid}$"
      if per_stage
      else rf"^{key}: 'bogus' is not one of {valid}$"
    )
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
      load_config("hnet_1stage_tiny", [f"{key}=bogus"])
    assert load_config("hnet_1stage_tiny", [f"{key}={choices[-1]}"])  # and each of the choices is taken


def test_a_per_stage_list_with_one_bad_element_is_refused():
  with pytest.raises(ConfigError, match=r"^model\.pooling\[1\]: unknown pooling 'max'; valid: select, mean$"):
    load_config("hnet_2stage_tiny", ["model.pooling=[select, max]"])
  with pytest.raises(ConfigError, match=r"^model\.router\[1\]: unknown router 'Cosine'; valid: cosine, stride"):
    from_dict(Config, {"model": {"layout": ["m1", ["m1", ["T1"], "m1"], "m1"], "router": ["cosine", "Cosine"]}})
  cfg = load_config("hnet_2stage_tiny", ["model.pooling=[select, mean]", "model.router=gumbel"])
  assert cfg.model.pooling == ("select", "mean") and cfg.model.router == ("gumbel", "gumbel")  # broadcast as before


def test_a_choice_from_a_file_must_have_the_choices_type(tmp_path):
  path = tmp_path / "c.yaml"
  path.write_text("train: {nan_policy: 3}\nkernels: {impl: [xla]}\n")
  with pytest.raises(ConfigError, match=r"^train\.nan_policy: 3 is not one of stop, skip$"):
    load_config(path)


def test_invalid_yaml_reports_line(tmp_path):
  path = tmp_path / "bad.yaml"
  path.write_text("model:\n  d_model: [128\ntrain: {steps: 3}\n")
  with pytest.raises(ConfigError, match=r"invalid YAML in .*bad.yaml \(line \d+"):
    load_config(path)
  path.write_text("- a\n- b\n")
  with pytest.raises(ConfigError, match="mapping"):
    load_config(path)


def test_config_files_are_read_within_bounds(tmp_path):
  """A config file is YAML chunklm did not write (config.untrusted): an alias bomb, a file over 1 MiB and bytes that
  are not UTF-8 are one-line ConfigErrors at once; aliases and merge keys work as before."""
  path = tmp_path / "c.yaml"
  path.write_text("base_train: &t {steps: 3}\ntrain:\n  <<: *t\n  batch_size: 4\n")
  with pytest.raises(ConfigError, match="base_train: unknown key"):  # the merge itself loads
    load_config(path)
  path.write_text("train: {steps: &n 3, batch_size: *n}\n")
  assert load_config(path).train.batch_size == 3
  bomb = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
  )
  for text, message in [
    (bomb, r"c\.yaml: YAML aliases expand to more than 100,000 values"),
    ("model: {}\n" + "#" * (1 << 20), r"c\.yaml: the config file is over the 1,048,576 bytes allowed"),
    (b"train: {steps: \xff}\n", r"c\.yaml: not UTF-8 text \(byte 0xff at offset 15\)"),
    ("model: " + "[" * 200 + "]" * 200 + "\n", r"c\.yaml: YAML nested more than 100 levels deep"),
  ]:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=message) as e:
      load_config(path)
    assert "\n" not in str(e.value)


def test_missing_config_lists_bundled():
  with pytest.raises(ConfigError, match="bundled configs: .*byte_transformer_tiny"):
    load_config("no_such_config")


def test_differing_fields():
  a = load_config("byte_transformer_tiny")
  b = load_config("byte_transformer_tiny", ["model.d_model=64", "train.steps=9"])
  assert differing_fields(a, b, ("model",)) == ["model.d_model: [128] -> [64]"]


# ----------------------------------------------------------------------------- base: inheritance


def test_base_is_deep_merged_under_the_file(tmp_path):
  (tmp_path / "child.yaml").write_text(
    "base: hnet_1stage_tiny\nmodel:\n  router: [gumbel]\n  gumbel: {temperature: 0.3}\ntrain: {steps: 7}\n"
  )
  expected = load_config("hnet_1stage_tiny", ["model.router=[gumbel]", "model.gumbel.temperature=0.3", "train.steps=7"])
  assert load_config(tmp_path / "child.yaml") == expected


def test_base_chain_with_relative_paths_lists_replace(tmp_path):
  (tmp_path / "a.yaml").write_text("base: hnet_2stage_tiny\ntrain: {steps: 7, lr: 1.0e-3}\n")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nmodel: {d_model: [128, 192, 240]}\ntrain: {steps: 9}\n")
  cfg = load_config(tmp_path / "sub" / "b.yaml")
  assert cfg.model.d_model == (128, 192, 240)  # a list replaces the base's
  assert cfg.model.layout == load_config("hnet_2stage_tiny").model.layout  # the rest of model is the base's
  assert (cfg.train.steps, cfg.train.lr) == (9, 1e-3)


def test_base_cycle_names_the_files(tmp_path):
  (tmp_path / "a.yaml").write_text("base: b.yaml\n")
  (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain: {steps: 3}\n")
  with pytest.raises(ConfigError, match=r"cycle \(.*a\.yaml -> .*b\.yaml -> .*a\.yaml\)"):
    load_config(tmp_path / "a.yaml")


def test_missing_base_names_both_files(tmp_path):
  (tmp_path / "a.yaml").write_text("base: nowhere.yaml\n")
  with pytest.raises(ConfigError, match=r"a\.yaml: base 'nowhere\.yaml' not found next to it .*bundled configs"):
    load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("router", ["stride", "whitespace", "gumbel", "entropy", "delete_gate"])
def test_router_tiny_configs_differ_from_their_base_in_the_router_only(router):
  assert "base: hnet_1stage_tiny" in (CONFIG_DIR / f"hnet_{router}_tiny.yaml").read_text()
  diffs = differing_fields(load_config("hnet_1stage_tiny"), load_config(f"hnet_{router}_tiny"), SECTIONS)
  expected = [f"model.router: ['cosine'] -> [{router!r}]"]
  if router == "entropy":
    expected.append("model.entropy.d_model: 32 -> 64")
  assert diffs == expected


# ----------------------------------------------------------------------------- router sections and registry


def test_router_sections_take_nested_overrides():
  cfg = load_config("hnet_gumbel_tiny", ["model.gumbel.temperature=0.3", "model.gumbel.script_ratios={latin: 5}"])
  assert cfg.model.gumbel.temperature == 0.3 and cfg.model.gumbel.prior_weight == 1.0
  assert cfg.model.script_targets() == {"default": 6.0, "latin": 5.0}
  cfg = load_config("hnet_delete_gate_tiny", ["model.delete_gate.keep_all=true"])
  assert cfg.model.delete_gate.keep_all and cfg.model.delete_gate.scale == -30.0


@pytest.mark.parametrize(
  "override, message",
  [
    ("model.gumbel.temperature=0", r"model\.gumbel\.temperature: must be > 0"),
    ("model.gumbel.prior_weight=-1", r"model\.gumbel\.prior_weight: must be >= 0"),
    ("model.entropy.momentum=1", r"model\.entropy\.momentum: must be in \[0, 1\)"),
    ("model.entropy.layout=X3", r"model\.entropy\.layout: cannot parse layer string"),
    ("model.entropy.mode=sideways", r"model\.entropy\.mode: 'sideways' is not one of global, jump"),
    ("model.delete_gate.scale=2", r"model\.delete_gate\.scale: k must be negative"),
    ("model.whitespace.boundary=tabs", r"model\.whitespace\.boundary: 'tabs' is not one of"),
    (
      "model.gumbel.temp=0.3",
      r"unknown key 'model\.gumbel\.temp'; valid keys in model\.gumbel: temperature, "
      r"prior_weight, script_ratios",
    ),
    ("model.gumbel_temperature=0.3", r"unknown key 'model\.gumbel_temperature'"),
    ("model.gumbel=0.3", r"model\.gumbel is a section; set one of its keys, e\.g\. model\.gumbel\.temperature="),
  ],
)
def test_bad_router_settings_are_config_errors(override, message):
  with pytest.raises(ConfigError, match=message):
    load_config("hnet_1stage_tiny", [override])


def test_router_section_checks_that_need_the_model():
  with pytest.raises(ConfigError, match=r"model\.entropy\.d_model: must be a multiple of n_heads\[0\]=4, got 30"):
    load_config("hnet_entropy_tiny", ["model.entropy.d_model=30"])
  with pytest.raises(ConfigError, match=r"model\.gumbel\.script_ratios: .*gumbel router only"):
    load_config("hnet_1stage_tiny", ["model.gumbel.script_ratios={latin: 4}"])
  with pytest.raises(ConfigError, match=r"model\.gumbel\.temp: unknown key; valid keys in model\.gumbel: temperature"):
    from_dict(Config, {"model": {"gumbel": {"temp": 1.0}}})


def test_one_router_registry():
  assert set(model_routers.ROUTERS) == set(ROUTERS)
  hints = typing.get_type_hints(ModelConfig)
  for name, kind in ROUTERS.items():
    if kind.settings is not None:
      assert hints[name] is kind.settings  # a router's section is the ModelConfig field of its name
  assert BYTE_ROUTERS == ("whitespace", "entropy")
  assert tuple(ROUTERS) == typing.get_args(RouterName)  # the registry and the option type name the same kinds
  assert kernels_api.IMPLS == typing.get_args(KernelImpl)


# ----------------------------------------------------------------------------- config_format


def test_dump_is_resolved_and_starts_with_the_format(tmp_path):
  text = dump_yaml(load_config("hnet_gumbel_tiny"))
  assert text.startswith(f"config_format: {CONFIG_FORMAT}\n") and "base" not in yaml.safe_load(text)
  path = tmp_path / "config.yaml"
  path.write_text(text)
  assert read_config_format(path) == CONFIG_FORMAT == 2
  assert load_config(path) == load_config("hnet_gumbel_tiny")


def test_other_config_formats_are_refused(tmp_path):
  path = tmp_path / "config.yaml"
  path.write_text("model:\n  layout: [T2]\n  word_boundary: space\n")  # a format-1 file (before the sections)
  assert read_config_format(path) is None
  path.write_text("config_format: 3\ntrain: {steps: 5}\n")
  assert read_config_format(path) == 3
  with pytest.raises(
    ConfigError,
    match=r"config\.yaml was written by another chunklm version \(config format 3; "
    r"this one reads 2\)",
  ):
    load_config(path)
