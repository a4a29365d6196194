"""`chunklm compare`: specs, data identity, FLOPs matching, an end-to-end tiny comparison and its resumption."""

import pytest
import yaml

from chunklm.cli import main
from chunklm.config import load_config
from chunklm.errors import ConfigError, UserError
from chunklm.experiments import compare, compare_report
from chunklm.model.flops import match_flops, train_flops_per_byte
from chunklm.run.metrics import read_jsonl
from conftest import TINY
from test_hnet import HNET1

SMALL = [o for o in TINY if not o.startswith(("train.steps", "train.checkpoint_every"))]


def write_spec(path, models, **extra):
  spec = {"budget_bytes": 3000, "evals": 2, "eval_max_bytes": 1024, "tokenizer_vocab": 300, "models": models, **extra}
  path.write_text(yaml.safe_dump(spec))
  return path


def tiny_models():
  return [
      {"name": "hnet", "config": "hnet_1stage_tiny", "set": SMALL + HNET1},
      {"name": "bytes", "config": "byte_transformer_tiny", "set": SMALL, "match_flops": "hnet"},
      {"name": "bpe", "config": "bpe_transformer_tiny", "set": SMALL + ["data.seq_len=12"], "match_flops": "hnet"},
  ]


def test_spec_errors(tmp_path):
  with pytest.raises(ConfigError, match="bundled configs: .*hnet_1stage_tiny"):
    compare.plain_configs(compare.load_spec(write_spec(tmp_path / "a.yaml", [{"name": "x", "config": "nope"}])), [])
  with pytest.raises(ConfigError, match="unique"):
    compare.load_spec(write_spec(tmp_path / "b.yaml", [{"name": "x", "config": "byte_transformer_tiny"}] * 2))
  with pytest.raises(ConfigError, match="unknown model 'y'"):
    compare.load_spec(write_spec(tmp_path / "c.yaml", [{"name": "x", "config": "byte_transformer_tiny",
                                                          "match_flops": "y"}]))
  with pytest.raises(ConfigError, match="unknown key"):
    compare.load_spec(write_spec(tmp_path / "d.yaml", [{"name": "x", "config": "byte_transformer_tiny"}], budget=3))
  with pytest.raises(ConfigError, match="bundled specs: .*tiny_code"):
    compare.load_spec("no_such_spec")
  with pytest.raises(ConfigError, match="efficiency_reference 'z' is not one of its models"):
    compare.CompareSpec("s", (compare.ModelSpec("x", "byte_transformer_tiny"),), efficiency_reference="z")
  for name in ("tiny_code", "tiny_english", "small_english", "small_dna", "tiny_dna", "transfer_tiny"):
    compare.plain_configs(compare.load_spec(name), ["data.sources=[x]", "data.valid_sources=[y]"])


def test_models_on_different_data_are_refused(tmp_path):
  spec = compare.load_spec(write_spec(tmp_path / "s.yaml", [
      {"name": "a", "config": "byte_transformer_tiny"},
      {"name": "b", "config": "byte_transformer_tiny", "set": ["data.split_seed=3"]}]))
  with pytest.raises(UserError, match=r"models a and b would train on different data \(data\.split_seed: 0 \(a\) "
                                      r"vs 3 \(b\)\)"):
    compare.check_same_data(compare.plain_configs(spec, []))


@pytest.mark.parametrize("other", ["byte_transformer_tiny", "bpe_transformer_tiny"])
def test_flops_matching_is_within_five_percent(other):
  ref = load_config("hnet_1stage_tiny")
  target = train_flops_per_byte(ref.model, ref.data.seq_len)
  cfg = load_config(other)
  bpt = 3.4 if cfg.data.tokenizer else 1.0
  model, err = match_flops(target, cfg.model, cfg.data.seq_len, bytes_per_token=bpt)
  assert abs(err) < 0.05
  assert train_flops_per_byte(model, cfg.data.seq_len, bytes_per_token=bpt) == pytest.approx(target * (1 + err))


def test_report_shows_executed_flops_beside_the_measured_ones():
  row = lambda executed: compare_report.Row("m", "H-Net (1 stage)", 10**6, 4e6, executed, 100.0, 2.0, 6.0,  # noqa: E731
                                            [(1.0, 2.0, 3.0)], None)
  assert compare_report._cells(row(5.2e6))[4] == "5.20 M (1.30x)"
  assert compare_report._cells(row(4e6))[4] == "4.00 M"


def test_data_efficiency_is_read_off_the_curves_on_the_same_bytes():
  curve = lambda *pts: [(b, bpb, 100.0) for b, bpb in pts]  # noqa: E731
  assert compare_report.bytes_to_reach(curve((10, 3.0), (20, 2.0), (30, 1.5)), 1.75) == pytest.approx(25.0)
  assert compare_report.bytes_to_reach(curve((10, 3.0), (20, 2.0)), 1.0) is None
  leading = [(10, 1.0, 50.0), (20, 2.2, 100.0), (30, 1.8, 100.0)]  # the first point is on fewer bytes: not used
  assert compare_report.bytes_to_reach(leading, 2.0) == pytest.approx(25.0)
  row = lambda name, c: compare_report.Row(name, "k", 1, 1.0, 1.0, 1.0, c[-1][1], 1.0, c, None)  # noqa: E731
  lines = compare_report.efficiency([row("ref", curve((10, 3.0), (40, 2.0))), row("h", curve((10, 2.5), (20, 1.9))),
                                     row("slow", curve((10, 3.5), (40, 2.5)))], "ref")
  assert lines[1] == "h: 18 bytes, 2.18x fewer" and lines[2].startswith("slow: not reached within its 40 bytes")
  early = compare_report.efficiency([row("ref", curve((10, 3.0), (40, 2.0))), row("e", curve((10, 1.9), (40, 1.8)))],
                                    "ref")
  assert early[1] == "e: at most 10 bytes (already at its first evaluation), at least 4.00x fewer"


@pytest.mark.slow  # CI budget: the default suite stays under 15 minutes on 2 cores
def test_end_to_end_and_resume(tmp_path, corpus_dir, capsys):
  spec = write_spec(tmp_path / "tiny.yaml", tiny_models())
  out = tmp_path / "out"
  args = ["compare", "--spec", str(spec), "--out", str(out), "--data", str(corpus_dir), "--no-progress"]
  assert main(args) == 0
  md = (out / "report.md").read_text()
  for name in ("hnet", "bytes", "bpe"):
    assert f"| {name} |" in md and (out / name / "checkpoints").is_dir()
  assert "Lowest valid BPB" in md and (out / "comparison.png").exists() and (out / "tokenizer.model").exists()
  rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in md.splitlines() if line.startswith("| ")}
  column = rows["model"].index("executed FLOPs/byte")
  assert rows["hnet"][column].endswith("x)") and "x)" not in rows["bytes"][column]  # only chunk slots cost extra
  assert "<table>" in (out / "report.html").read_text()
  # the token model is scored on the same bytes: every model's final evaluation covers the same byte count
  finals = {n: [r for r in read_jsonl(out / n / "metrics.jsonl") if r["split"] == "valid"][-1]["bytes"]
            for n in ("hnet", "bytes", "bpe")}
  assert len(set(finals.values())) == 1
  capsys.readouterr()
  (out / "report.md").unlink()
  assert main(args) == 0
  log = capsys.readouterr().out
  assert log.count("reused") == 3 and (out / "report.md").read_text() == md
  # a saved run trained on other data is refused, naming the setting
  other = args.copy()
  other[other.index(str(corpus_dir))] = str(tmp_path / "elsewhere")
  (tmp_path / "elsewhere").mkdir()
  (tmp_path / "elsewhere" / "x.txt").write_text("other text " * 200)
  (tmp_path / "elsewhere" / "y.txt").write_text("more text " * 200)
  code = main(other)
  assert code == 2 and "different data (data.sources" in capsys.readouterr().err
