import pytest

from chunklm.config import CONFIG_DIR, Config, load_config, dump_yaml, from_dict, differing_fields
from chunklm.errors import ConfigError


def test_every_bundled_config_loads():
  names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
  assert "byte_transformer_tiny" in names
  for name in names:
    cfg = load_config(name)
    assert isinstance(cfg, Config)


def test_overrides_convert_types_and_broadcast():
  cfg = load_config("byte_transformer_tiny", ["model.d_model=256", "train.steps=500", "train.lr=1e-3",
                                              "data.sources=[a.txt, b.txt]", "eval.sample_prompt=123"])
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


@pytest.mark.parametrize("override, message", [
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
])
def test_bad_values_are_config_errors(override, message):
  with pytest.raises(ConfigError, match=message):
    load_config(None, [override])


def test_invalid_yaml_reports_line(tmp_path):
  path = tmp_path / "bad.yaml"
  path.write_text("model:\n  d_model: [128\ntrain: {steps: 3}\n")
  with pytest.raises(ConfigError, match=r"invalid YAML in .*bad.yaml \(line \d+"):
    load_config(path)
  path.write_text("- a\n- b\n")
  with pytest.raises(ConfigError, match="mapping"):
    load_config(path)


def test_missing_config_lists_bundled():
  with pytest.raises(ConfigError, match="bundled configs: .*byte_transformer_tiny"):
    load_config("no_such_config")


def test_differing_fields():
  a = load_config("byte_transformer_tiny")
  b = load_config("byte_transformer_tiny", ["model.d_model=64", "train.steps=9"])
  assert differing_fields(a, b, ("model",)) == ["model.d_model: [128] -> [64]"]
