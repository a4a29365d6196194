"""Official H-Net weights in and out (chunklm convert): names, shapes, bit-exact round trips, bad input, the bundled
configs against the released layouts, and (with torch) the whole model against a plain-torch reference of the
official forward under model.compat official."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chunklm import cli
from chunklm.config import load_config
from chunklm.errors import UserError
from chunklm.interop.convert import official_params
from chunklm.interop.hnet_official import model_from_official, official_config, to_official
from chunklm.model import chunking
from chunklm.model.functional import merge_model, named_leaves
from chunklm.run.trained import abstract_params
from hnet_torch_reference import Reference, official_state_dict

SSM = {"chunk_size": 16, "d_conv": 4, "d_state": 16, "expand": 2}
ONE_STAGE = {
  "arch_layout": ["m2", ["T2"], "m2"],
  "d_model": [64, 96],
  "d_intermediate": [0, 256],
  "vocab_size": 256,
  "ssm_cfg": SSM,
  "attn_cfg": {"num_heads": [2, 2], "rotary_emb_dim": [16, 24], "window_size": [15, -1]},
  "tie_embeddings": False,
}
TWO_STAGE = {
  "arch_layout": ["m2", ["T1m2", ["T2"], "m2T1"], "m2"],
  "d_model": [64, 96, 128],
  "d_intermediate": [0, 256, 256],
  "vocab_size": 256,
  "ssm_cfg": SSM,
  "attn_cfg": {"num_heads": [2, 2, 2], "rotary_emb_dim": [16, 24, 32], "window_size": [15, 15, -1]},
  "tie_embeddings": False,
}
LAYOUTS = {"1stage": ONE_STAGE, "2stage": TWO_STAGE}
RELEASED_SSM = {"chunk_size": 256, "d_conv": 4, "d_state": 128, "expand": 2}
RELEASED = {  # the official configs/*.json of the released models
  "hnet_1stage_L": {
    "arch_layout": ["m4", ["T22"], "m4"],
    "d_model": [1024, 1536],
    "d_intermediate": [0, 4096],
    "attn_cfg": {"num_heads": [16, 16], "rotary_emb_dim": [32, 48], "window_size": [1023, -1]},
  },
  "hnet_1stage_XL": {
    "arch_layout": ["m4", ["T24"], "m4"],
    "d_model": [1024, 2048],
    "d_intermediate": [0, 5504],
    "attn_cfg": {"num_heads": [16, 16], "rotary_emb_dim": [32, 64], "window_size": [1023, -1]},
  },
  "hnet_2stage_L": {
    "arch_layout": ["m4", ["T1m4", ["T26"], "m4T1"], "m4"],
    "d_model": [1024, 1024, 1536],
    "d_intermediate": [0, 2816, 4096],
    "attn_cfg": {"num_heads": [16, 16, 16], "rotary_emb_dim": [32, 32, 48], "window_size": [1023, 1023, -1]},
  },
  "hnet_2stage_XL": {
    "arch_layout": ["m4", ["T1m4", ["T27"], "m4T1"], "m4"],
    "d_model": [1024, 1536, 2048],
    "d_intermediate": [0, 4096, 5504],
    "attn_cfg": {"num_heads": [16, 16, 16], "rotary_emb_dim": [32, 48, 64], "window_size": [1023, 1023, -1]},
  },
}
ARCH_FIELDS = ("layout", "d_model", "n_heads", "window", "rotary_fraction", "vocab_size", "mamba")


def _released(name):
  return {**RELEASED[name], "vocab_size": 256, "ssm_cfg": RELEASED_SSM, "tie_embeddings": False}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_round_trip_is_bit_exact(name):
  js = LAYOUTS[name]
  state = official_state_dict(js, seed=1)
  cfg, params = official_params(state, js, load_config(None), "synthetic")
  assert cfg.model.compat == "official" and official_config(cfg.model) == js
  back = to_official({k: np.asarray(v) for k, v in named_leaves(params).items()}, cfg.model)
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    assert back[key].dtype == np.float32 and back[key].tobytes() == value.tobytes(), key


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_bundled_configs_match_the_released_layouts_and_counts(name):
  js = _released(name)
  converted = model_from_official(js, name)
  bundled = load_config(name).model
  for field in ARCH_FIELDS:
    assert getattr(bundled, field) == getattr(converted, field), field
  assert [bundled.ff_dim(lv) for lv in range(bundled.num_levels) if lv] == js["d_intermediate"][1:]
  official = sum(math.prod(s) for s in official_state_dict(js, shapes_only=True).values())
  ours = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params(load_config(name))[1]))
  biases = sum(js["d_model"][:-1])  # compat chunklm has no residual_proj bias (one D-vector per routing stage)
  assert ours + biases == official


def _state_file(tmp_path, js, state):
  import torch

  pt, cj = tmp_path / "model.pt", tmp_path / "config.json"
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, pt)
  cj.write_text(json.dumps(js))
  return pt, cj


def test_bad_state_dicts_and_configs_are_one_line_errors():
  js = ONE_STAGE
  state = official_state_dict(js)
  base = load_config(None)
  missing = dict(state)
  del missing["backbone.routing_module.q_proj_layer.weight"]
  with pytest.raises(UserError, match=r"1 keys missing \(backbone.routing_module.q_proj_layer.weight\)"):
    official_params(missing, js, base, "f.pt")
  with pytest.raises(UserError, match=r"1 unexpected \(backbone.extra\)"):
    official_params({**state, "backbone.extra": np.zeros(3, np.float32)}, js, base, "f.pt")
  bad = {**state, "lm_head.weight": np.zeros((256, 65), np.float32)}
  with pytest.raises(UserError, match=r"lm_head.weight has shape \[256, 65\], the config needs \[256, 64\]"):
    official_params(bad, js, base, "f.pt")
  with pytest.raises(UserError, match="unknown field attn_cfg.softcap"):
    model_from_official({**js, "attn_cfg": {**js["attn_cfg"], "softcap": 1}}, "c.json")
  with pytest.raises(UserError, match="unknown field d_embed"):
    model_from_official({**js, "d_embed": 3}, "c.json")
  assert model_from_official({**js, "d_intermediate": [0, 129]}, "c.json").d_ff == (0, 256)  # rounded as official
  with pytest.raises(UserError, match="tie_embeddings"):
    model_from_official({**js, "tie_embeddings": True}, "c.json")


ATTN = ONE_STAGE["attn_cfg"]
WRONG_FIELDS = [  # (fields over ONE_STAGE, the error's words: the field named)
  ({"d_model": "wide"}, "d_model must list one width per level, got 'wide'"),
  ({"d_model": [64, "96"]}, "d_model[1] must be a positive integer, got '96'"),
  ({"d_model": [-64, 96]}, "d_model[0] must be a positive integer, got -64"),
  ({"ssm_cfg": 3}, "ssm_cfg must be an object with fields chunk_size, d_conv, d_state, expand, got 3"),
  ({"ssm_cfg": {**SSM, "d_state": 0}}, "ssm_cfg.d_state must be a positive integer, got 0"),
  ({"attn_cfg": [2, 2]}, "attn_cfg must be an object with fields num_heads, rotary_emb_dim, window_size, got [2, 2]"),
  ({"attn_cfg": {**ATTN, "num_heads": [0, 2]}}, "attn_cfg.num_heads[0] must be a positive integer, got 0"),
  ({"attn_cfg": {**ATTN, "num_heads": [2, 64]}}, "attn_cfg.num_heads[1] 64 does not divide d_model[1] 96"),
  ({"attn_cfg": {**ATTN, "rotary_emb_dim": [16.5, 24]}}, "attn_cfg.rotary_emb_dim[0] must be an integer >= 0"),
  ({"attn_cfg": {**ATTN, "window_size": [-2, -1]}}, "attn_cfg.window_size[0] must be an integer >= -1, got -2"),
  ({"d_intermediate": [0, -256]}, "d_intermediate[1] must be an integer >= 0, got -256"),
  ({"vocab_size": "256"}, "vocab_size must be a positive integer, got '256'"),
  ({"tie_embeddings": "no"}, "tie_embeddings must be true or false, got 'no'"),
  ({"arch_layout": "m2"}, "arch_layout must be a nested list of layer strings, got 'm2'"),
  ({"arch_layout": ["m2", ["T2"], 2]}, "arch_layout: decoder must be a layer string, got 2"),
]


@pytest.mark.parametrize("fields, message", WRONG_FIELDS, ids=[m.split()[0] for _, m in WRONG_FIELDS])
def test_config_fields_of_the_wrong_type_or_size_are_named(fields, message):
  with pytest.raises(UserError) as e:
    model_from_official({**ONE_STAGE, **fields}, "c.json")
  assert str(e.value).startswith(f"c.json: {message}")


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16-rounding"])
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_compat_official_equals_a_torch_reference_of_the_official_forward(name, bf16, monkeypatch):
  """The official dechunk rounds its inputs and output to bfloat16. Torch and XLA reach float32 values that differ by
  ~1e-7 relative, and the few that straddle a bfloat16 rounding midpoint round one ulp (2^-8 relative) apart, which
  then flows into every later logit (measured: up to 1.9e-3 x the logits' scale). So the exact comparison (1e-5 x
  scale) runs with that rounding skipped on both sides; with it, the logits must be much closer to the rounding
  reference than to the one without rounding (which is 4e-3 to 8e-3 x scale away) and within 4e-3 x scale."""
  pytest.importorskip("torch")
  if not bf16:
    monkeypatch.setattr(chunking, "round_bf16", lambda x: x)
  js = LAYOUTS[name]
  state = official_state_dict(js, seed=2)
  cfg, params = official_params(state, js, load_config(None), "synthetic")
  graphdef, _ = abstract_params(cfg)
  model = merge_model(graphdef, params)
  rng = np.random.default_rng(0)
  text = b"The quick brown fox jumps over the lazy dog; 12345 bytes, spaces and   runs!!!! "
  rows = [np.frombuffer(text[:64], np.uint8), rng.integers(32, 127, 64).astype(np.uint8)]
  ids = jnp.asarray(np.stack(rows).astype(np.int32))
  seg = jnp.ones_like(ids)
  pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  logits, stages = model(ids, seg, pos, exact=True)
  reference, unrounded = Reference(state, js, bf16=bf16), Reference(state, js, bf16=False)
  for row in range(len(rows)):
    want_logits, want_stages = reference.forward(rows[row])
    assert len(want_stages) == len(stages)
    for stage, (p, b) in zip(stages, want_stages):
      n = len(p)
      np.testing.assert_allclose(np.asarray(stage.probs_BxL[row, :n]), p, atol=1e-6)
      assert 0 < b.sum() < n  # the weights give real routing decisions, neither all nor none
      assert (np.asarray(stage.boundaries_BxL[row, :n]) == b).all()
    scale = np.abs(want_logits).max()
    if not bf16:
      np.testing.assert_allclose(np.asarray(logits[row]), want_logits, atol=1e-5 * scale)  # measured: 3e-6 x scale
      continue
    err = np.abs(np.asarray(logits[row]) - want_logits).max()
    err_unrounded = np.abs(np.asarray(logits[row]) - unrounded.forward(rows[row])[0]).max()
    assert err < 4e-3 * scale and err < 0.5 * err_unrounded, (err / scale, err_unrounded / scale)


def test_convert_cli_round_trip_and_refusals(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  js = TWO_STAGE
  state = official_state_dict(js, seed=3)
  pt, cj = _state_file(tmp_path, js, state)
  run = tmp_path / "run"
  assert cli.main(["convert", "from-hnet", "--checkpoint", str(pt), "--config", str(cj), "--out", str(run)]) == 0
  assert cli.main(["eval", "--workdir", str(run), "--max-bytes", "2048", "--json", str(tmp_path / "e.json")]) == 0
  assert json.loads((tmp_path / "e.json").read_text())["bpb"] > 0
  assert cli.main(["train", "--workdir", str(run), "--set", "train.steps=1"]) == 2
  assert "holds parameters only" in capsys.readouterr().err
  out = tmp_path / "back"
  assert cli.main(["convert", "to-hnet", "--workdir", str(run), "--out", str(out)]) == 0
  back = torch.load(out / "model.pt", weights_only=True)
  assert sorted(back) == sorted(state)
  assert all(back[k].numpy().tobytes() == v.tobytes() for k, v in state.items())
  assert json.loads((out / "config.json").read_text()) == js
  # a pickle of anything but tensors is refused, never run
  evil = tmp_path / "evil.pt"
  torch.save({"model": state["lm_head.weight"], "note": object.__new__(_Unpicklable)}, evil)
  capsys.readouterr()
  assert (
    cli.main(["convert", "from-hnet", "--checkpoint", str(evil), "--config", str(cj), "--out", str(tmp_path / "r2")])
    == 2
  )
  err = capsys.readouterr().err
  assert "not a file of tensors only" in err and len(err.strip().splitlines()) == 1


class _Unpicklable:
  """A class instance in a .pt file: weights_only loading must refuse it."""


def test_convert_cli_bad_config_and_model_overrides_are_one_line(tmp_path, capsys):
  cj = tmp_path / "c.json"
  cj.write_text(json.dumps({**ONE_STAGE, "d_embed": 3}))
  args = [
    "convert",
    "from-hnet",
    "--checkpoint",
    str(tmp_path / "none.pt"),
    "--config",
    str(cj),
    "--out",
    str(tmp_path / "r"),
  ]
  assert cli.main(args) == 2  # the config is checked before the checkpoint is read (or torch is needed)
  err = capsys.readouterr().err
  assert "unknown field d_embed" in err and len(err.strip().splitlines()) == 1
  cj.write_text("{not json")
  assert cli.main(args) == 2 and "not JSON" in capsys.readouterr().err
  cj.write_text(json.dumps(ONE_STAGE))
  assert cli.main([*args, "--set", "model.d_model=[8, 8]"]) == 2
  assert "the model comes from the official config" in capsys.readouterr().err
  for text, message in [  # JSON chunklm did not write (config.untrusted)
    ("[" * 100_000 + "]" * 100_000, "JSON nested more than 100 levels deep"),
    (b'{"d_model": "\xff"}', "not UTF-8 text (byte 0xff at offset 13)"),
    (json.dumps({**ONE_STAGE, "x": "y" * (1 << 20)}), "over the 1,048,576 bytes an official config may have"),
    (json.dumps({**ONE_STAGE, "ssm_cfg": 4}), "ssm_cfg must be an object"),
  ]:
    cj.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_convert_out_must_be_new_or_empty(tmp_path, capsys):
  """to-hnet and from-hnet never write into an existing file or a non-empty directory (to-hnet replaced model.pt);
  both are refused before the run or the checkpoint is read (no torch needed)."""
  (tmp_path / "file").write_text("x")
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "model.pt").write_bytes(b"kept")
  cj = tmp_path / "c.json"
  cj.write_text(json.dumps(ONE_STAGE))
  for out, message in [
    (tmp_path / "file", "is a file; name a new (or empty) directory"),
    (tmp_path / "full", "already exists and is not empty"),
    (tmp_path / "file" / "sub", "file is a file, not a directory"),
  ]:
    for args in (
      ["convert", "to-hnet", "--workdir", str(tmp_path / "no_run")],
      ["convert", "from-hnet", "--checkpoint", str(tmp_path / "none.pt"), "--config", str(cj)],
    ):
      assert cli.main([*args, "--out", str(out)]) == 2
      err = capsys.readouterr().err
      assert message in err and len(err.strip().splitlines()) == 1, err
  assert (tmp_path / "full" / "model.pt").read_bytes() == b"kept"
