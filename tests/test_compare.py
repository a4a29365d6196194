"""`chunklm compare`: specs, data identity, FLOPs matching, an end-to-end tiny comparison and its resumption."""

import dataclasses
import os
import signal
from types import SimpleNamespace

import pytest
import yaml

from chunklm.cli import main
from chunklm.config import load_config
from chunklm.errors import ConfigError, UserError
from chunklm.experiments import compare, compare_configs, compare_report, compare_spec
from chunklm.experiments import sweep as sweeps
from chunklm.model.flops import match_flops, train_flops_per_byte
from chunklm.run.metrics import read_jsonl
from chunklm.train.signals import Preempted
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
    compare.load_spec(
      write_spec(tmp_path / "c.yaml", [{"name": "x", "config": "byte_transformer_tiny", "match_flops": "y"}])
    )
  with pytest.raises(ConfigError, match="unknown key"):
    compare.load_spec(write_spec(tmp_path / "d.yaml", [{"name": "x", "config": "byte_transformer_tiny"}], budget=3))
  with pytest.raises(ConfigError, match="bundled specs: .*tiny_code"):
    compare.load_spec("no_such_spec")
  with pytest.raises(ConfigError, match="efficiency_reference 'z' is not one of its models"):
    compare_spec.CompareSpec("s", (compare_spec.ModelSpec("x", "byte_transformer_tiny"),), efficiency_reference="z")
  bundled = sorted(f.stem for f in compare_spec.SPEC_DIR.glob("*.yaml"))
  assert {"tiny_code", "tune_tiny", "budget_tiny", "budget_tiny_code"} <= set(bundled)
  for name in bundled:  # every bundled spec loads and its models' configs resolve
    compare.plain_configs(compare.load_spec(name), ["data.sources=[x]", "data.valid_sources=[y]"])


def test_specs_are_read_by_the_config_loader(tmp_path):
  byte = {"name": "x", "config": "byte_transformer_tiny"}
  for extra, models, message in (
    ({"budget_bytes": "lots"}, [byte], r"s\.yaml: budget_bytes: expected int, got 'lots'$"),
    ({}, [{"name": "x"}], r"s\.yaml: models\[0\]: needs config$"),
    ({}, [{**byte, "sett": ["train.lr=1"]}], r"models\[0\]\.sett: unknown key; valid keys in models\[0\]: name, "),
    ({}, [{**byte, "vary": ["depth"]}], r"models\[0\]\.vary\[0\]: unknown vary 'depth'; valid: layers, width$"),
    ({}, [{**byte, "set": "train.lr=1"}], None),
  ):  # one override is a list of one, as in a config
    path = write_spec(tmp_path / "s.yaml", models, **extra)
    if message is None:
      assert compare.load_spec(path).models[0].set == ("train.lr=1",)
      continue
    with pytest.raises(ConfigError, match=message):
      compare.load_spec(path)
  spec = compare.load_spec(write_spec(tmp_path / "s.yaml", [byte], budget_bytes=2.5e6, sweep={"train.lr": [1.0e-3]}))
  assert spec.budget_bytes == 2_500_000 and spec.sweep == (("train.lr", ("0.001",)),) and spec.name == "s"


def test_a_token_model_is_told_by_its_vocabulary_not_by_an_error(tmp_path):
  spec = compare.load_spec(
    write_spec(
      tmp_path / "s.yaml",
      [
        {"name": "b", "config": "byte_transformer_tiny"},
        {"name": "t", "config": "byte_transformer_tiny", "set": ["model.vocab_size=300", "data.tokenizer="]},
      ],
    )
  )
  plain = compare.plain_configs(spec, [])
  assert plain["t"].model.is_token_model and plain["t"].data.tokenizer == compare_configs.TOKENIZER_PENDING
  assert not plain["b"].model.is_token_model and plain["b"].data.tokenizer == ""
  configs, _ = compare.resolve_configs(spec, [], "/x/tok.model", 3.0, plain=plain)
  assert configs["t"].data.tokenizer == "/x/tok.model" and configs["t"].model.vocab_size == 300
  with pytest.raises(ConfigError, match=r"^model t: model\.n_heads: d_model 128 is not divisible by n_heads 3"):
    compare.plain_configs(
      dataclasses.replace(
        spec, models=(dataclasses.replace(spec.models[1], set=spec.models[1].set + ("model.n_heads=3",)),)
      ),
      [],
    )


def test_models_on_different_data_are_refused(tmp_path):
  spec = compare.load_spec(
    write_spec(
      tmp_path / "s.yaml",
      [
        {"name": "a", "config": "byte_transformer_tiny"},
        {"name": "b", "config": "byte_transformer_tiny", "set": ["data.split_seed=3"]},
      ],
    )
  )
  with pytest.raises(
    UserError,
    match=r"models a and b would train on different data \(data\.split_seed: 0 \(a\) "
    r"vs 3 \(b\)\)",
  ):
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
  row = lambda executed: compare_report.Row(
    "m", "H-Net (1 stage)", 10**6, 4e6, executed, 100.0, 2.0, 6.0, [(1.0, 2.0, 3.0)], None
  )
  assert compare_report._cells(row(5.2e6))[4] == "5.20 M (1.30x)"
  assert compare_report._cells(row(4e6))[4] == "4.00 M"


def test_data_efficiency_is_read_off_the_curves_on_the_same_bytes():
  curve = lambda *pts: [(b, bpb, 100.0) for b, bpb in pts]
  assert compare_report.bytes_to_reach(curve((10, 3.0), (20, 2.0), (30, 1.5)), 1.75) == pytest.approx(25.0)
  assert compare_report.bytes_to_reach(curve((10, 3.0), (20, 2.0)), 1.0) is None
  leading = [(10, 1.0, 50.0), (20, 2.2, 100.0), (30, 1.8, 100.0)]  # the first point is on fewer bytes: not used
  assert compare_report.bytes_to_reach(leading, 2.0) == pytest.approx(25.0)
  row = lambda name, c: compare_report.Row(name, "k", 1, 1.0, 1.0, 1.0, c[-1][1], 1.0, c, None)
  lines = compare_report.efficiency(
    [
      row("ref", curve((10, 3.0), (40, 2.0))),
      row("h", curve((10, 2.5), (20, 1.9))),
      row("slow", curve((10, 3.5), (40, 2.5))),
    ],
    "ref",
  )
  assert lines[1] == "h: 18 bytes, 2.18x fewer" and lines[2].startswith("slow: not reached within its 40 bytes")
  early = compare_report.efficiency(
    [row("ref", curve((10, 3.0), (40, 2.0))), row("e", curve((10, 1.9), (40, 1.8)))], "ref"
  )
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
  finals = {
    n: [r for r in read_jsonl(out / n / "metrics.jsonl") if r["split"] == "valid"][-1]["bytes"]
    for n in ("hnet", "bytes", "bpe")
  }
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


def test_sweep_values_and_expansion():
  assert sweeps.parse_sweep("train.lr=1e-3, 2.0e-3") == ("train.lr", ("0.001", "0.002"))  # one name per value
  assert sweeps.parse_sweep("model.pooling=[mean],[max, 1]") == ("model.pooling", ("[mean]", "[max,1]"))
  for bad in ("train.lr", "=1,2", "train.lr=", "train.lr=1,,2"):
    with pytest.raises(UserError, match="expected KEY=V1,V2"):
      sweeps.parse_sweep(bad)
  with pytest.raises(ConfigError, match="distinct"):
    sweeps.parse_sweep("train.lr=1e-3,0.001")
  runs = sweeps.expand(["a", "b"], {"train.lr": ("1", "2")}, 2)
  assert [r.name for r in runs[:4]] == ["a@train.lr=1", "a@train.lr=1@seed1", "a@train.lr=2", "a@train.lr=2@seed1"]
  assert len(runs) == 8 and sweeps.overrides(runs[1], 3, 5) == ["train.lr=1", "train.seed=4", "data.seed=6"]
  assert [r.name for r in sweeps.expand(["a"], {}, 1)] == ["a"]  # no sweep, one seed: the spec's own names


def test_spec_sweep_expands_into_runs_with_their_flops_references(tmp_path):
  models = [
    {"name": "h", "config": "hnet_1stage_tiny"},
    {"name": "t", "config": "byte_transformer_tiny", "match_flops": "h"},
  ]
  spec = compare.load_spec(write_spec(tmp_path / "s.yaml", models, sweep={"train.lr": [1e-3, 4e-3]}, seeds=2))
  assert spec.sweep == (("train.lr", ("0.001", "0.004")),) and spec.seeds == 2
  expanded, runs = compare.expand_spec(spec, compare.plain_configs(spec, []))
  by_name = {m.name: m for m in expanded.models}
  assert by_name["t@train.lr=0.004@seed1"].match_flops == "h@train.lr=0.004@seed1"
  configs = compare.plain_configs(expanded, [])
  assert configs["t@train.lr=0.004@seed1"].train.lr == 0.004
  assert configs["t@train.lr=0.004@seed1"].data.seed == 1 and configs["t@train.lr=0.004"].data.seed == 0
  compare.check_same_data(configs, runs=runs)  # the seeds differ in order only: each seed's runs agree
  expanded, _ = compare.expand_spec(spec, compare.plain_configs(spec, ["train.seed=7", "data.seed=3"]))
  shifted = compare.plain_configs(expanded, ["train.seed=7", "data.seed=3"])
  assert (shifted["h@train.lr=0.001@seed1"].train.seed, shifted["h@train.lr=0.001@seed1"].data.seed) == (8, 4)
  assert (shifted["h@train.lr=0.001"].train.seed, shifted["h@train.lr=0.001"].data.seed) == (7, 3)
  with pytest.raises(UserError, match="different data"):
    compare.check_same_data(configs)
  for bad, match in (
    ({"sweep": {"train.lr": 3}}, "sweep must map"),
    ({"seeds": 0}, "at least 1"),
    ({"sweep": {"train.lr": ["a/b"]}}, "may not contain"),
  ):
    with pytest.raises(ConfigError, match=match):
      compare.load_spec(write_spec(tmp_path / "b.yaml", models, **bad))


def test_summary_mean_spread_and_best_point(tmp_path):
  runs = sweeps.expand(["h", "t"], {"train.lr": ("1", "2", "4")}, 2)
  bpb = {r.name: v for r, v in zip(runs, [2.0, 2.2, 1.5, 1.7, 1.8, 1.8, 3.0, 3.0, 2.9, 2.9, 2.5, 2.7])}
  summaries = sweeps.summarise(runs, bpb)
  assert len(summaries) == 6 and summaries[1].mean == pytest.approx(1.6)
  assert summaries[1].std == pytest.approx(0.1414, abs=1e-4)
  best = sweeps.best_per_model(summaries, {"train.lr": ("1", "2", "4")})
  assert best["h"][0].point == (("train.lr", "2"),) and best["h"][1] == ""
  assert best["t"][0].point == (("train.lr", "4"),) and "edge of the swept train.lr range" in best["t"][1]
  text = "\n".join(sweeps.lines(summaries, {"train.lr": ("1", "2", "4")}, 2))
  assert "| h | train.lr=2 | 1.6000 ± 0.1414 (1.5000–1.7000) |" in text
  assert "**h** (1.6000); t +1.0000 (+62.5%)" in text
  assert sweeps.plot(summaries, {"train.lr": ("1", "2", "4")}, tmp_path / "s.png").exists()
  unsorted = {"train.lr": ("4", "1", "2")}  # the edges are the lowest and highest values, not the first and last
  best = sweeps.best_per_model(
    sweeps.summarise(
      sweeps.expand(["t"], unsorted, 1), {"t@train.lr=4": 2.5, "t@train.lr=1": 3.0, "t@train.lr=2": 2.0}
    ),
    unsorted,
  )
  assert best["t"][0].point == (("train.lr", "2"),) and best["t"][1] == ""
  partial = sweeps.summarise(runs, {runs[0].name: 2.0, runs[2].name: 1.0, runs[3].name: 1.4})
  assert [s.bpbs for s in partial] == [[2.0], [1.0, 1.4]]  # a run not trained yet is left out, not counted
  assert partial[0].cell() == "2.0000 [1 of 2 seeds]"
  lone = sweeps.summarise(runs, {runs[0].name: 0.9, runs[2].name: 1.0, runs[3].name: 1.4})
  assert sweeps.best_per_model(lone, {"train.lr": ("1", "2", "4")})["h"][0].point == (("train.lr", "2"),)


def test_budget_sweep_trains_each_run_on_its_own_budget(tmp_path):
  models = [
    {"name": "h", "config": "byte_transformer_tiny", "set": SMALL},
    {"name": "t", "config": "byte_transformer_tiny", "set": SMALL + ["model.d_model=32"], "match_flops": "h"},
  ]
  spec = compare.load_spec(write_spec(tmp_path / "s.yaml", models, sweep={"budget_bytes": [1000, 4000]}))
  expanded, runs = compare.expand_spec(spec, compare.plain_configs(spec, []))
  by_name = {m.name: m for m in expanded.models}
  assert [r.name for r in runs] == [
    "h@budget_bytes=1000",
    "h@budget_bytes=4000",
    "t@budget_bytes=1000",
    "t@budget_bytes=4000",
  ]
  big = by_name["t@budget_bytes=4000"]
  assert big.budget_bytes == 4000 and big.match_flops == "h@budget_bytes=4000"
  assert not any("budget" in o for m in expanded.models for o in m.run_set)  # not a config field
  configs, _ = compare.resolve_configs(expanded, [], None, 1.0, runs)
  per_step = configs["h@budget_bytes=1000"].train.batch_size * configs["h@budget_bytes=1000"].data.seq_len
  for name, budget in (("h@budget_bytes=1000", 1000), ("h@budget_bytes=4000", 4000), ("t@budget_bytes=4000", 4000)):
    assert configs[name].train.steps == -(-budget // per_step)
  assert configs["t@budget_bytes=4000"].model == configs["t@budget_bytes=1000"].model  # sized the same at both


def test_budget_curve_lines_and_plot(tmp_path):
  sweep = {"budget_bytes": ("1000", "4000")}
  runs = sweeps.expand(["hnet", "bpe"], sweep, 2)
  bpb = dict(zip([r.name for r in runs], [2.2, 2.4, 1.9, 2.1, 2.0, 2.0, 1.8, 1.8]))  # means 2.3, 2.0 | 2.0, 1.8
  summaries = sweeps.summarise(runs, bpb)
  text = "\n".join(sweeps.budget_lines(summaries, sweep))
  assert "| model | 1,000 bytes | 4,000 bytes |" in text
  assert "| hnet | 2.3000 ± 0.1414 (2.2000–2.4000) | 2.0000 ± 0.1414 (1.9000–2.1000) |" in text
  # +15.0 % at 1,000 bytes, +11.1 % at 4,000 (two doublings): the gap narrows by 1.94 points per doubling
  assert (
    "- hnet vs bpe: +15.0% at 1,000 bytes, +11.1% at 4,000: the gap narrows by 1.94 percentage points per doubling"
    in text
  )
  assert "best of" not in "\n".join(sweeps.lines(summaries, sweep, 2, best=False))
  flops = {(s.model, s.point): 5e6 for s in summaries}
  assert sweeps.plot_budget(summaries, flops, tmp_path / "b.png").exists()
  grid = {"budget_bytes": ("1000", "4000"), "train.lr": ("1", "2")}  # with another key: each model's best per budget
  runs = sweeps.expand(["hnet", "bpe"], grid, 1)
  text = "\n".join(
    sweeps.budget_lines(
      sweeps.summarise(runs, dict(zip([r.name for r in runs], [2.5, 2.3, 2.0, 2.1, 2.0, 2.2, 1.8, 1.9]))), grid
    )
  )
  assert (
    "| hnet | 2.3000 (train.lr=2) | 2.0000 (train.lr=1) |" in text and "+15.0% at 1,000 bytes, +11.1% at 4,000" in text
  )
  runs = sweeps.expand(["hnet", "bpe", "new"], sweep, 1)  # hnet ahead, then behind; "new" only at the small budget
  text = "\n".join(
    sweeps.budget_lines(
      sweeps.summarise(
        runs,
        {
          "hnet@budget_bytes=1000": 1.9,
          "hnet@budget_bytes=4000": 1.89,
          "bpe@budget_bytes=1000": 2.0,
          "bpe@budget_bytes=4000": 1.8,
          "new@budget_bytes=1000": 2.5,
        },
      ),
      sweep,
    )
  )
  assert (
    "- hnet vs bpe: -5.0% at 1,000 bytes, +5.0% at 4,000: ahead at the smaller budget, behind at the larger "
    "(+5.00 percentage points per doubling of the budget)" in text
  )
  assert "| new | 2.5000 | – |" in text and "- new vs bpe: fewer than two budgets finished by both" in text
  partial = sweeps.summarise(
    sweeps.expand(["bpe"], grid, 2),
    {
      "bpe@budget_bytes=1000@train.lr=1": 2.0,
      "bpe@budget_bytes=1000@train.lr=2": 1.5,
      "bpe@budget_bytes=1000@train.lr=1@seed1": 2.1,
    },
  )
  assert sweeps.best_per_budget(partial)["bpe"][1000].point == (("budget_bytes", "1000"), ("train.lr", "1"))


def test_sweep_command_line_errors(tmp_path, capsys):
  spec = write_spec(tmp_path / "s.yaml", [{"name": "t", "config": "byte_transformer_tiny", "set": SMALL}])
  base = ["compare", "--spec", str(spec), "--out", str(tmp_path / "o"), "--no-progress"]
  for extra, message in (
    (["--sweep", "train.lr"], "expected KEY=V1,V2"),
    (["--seeds", "0"], "at least 1"),
    (["--models", "x"], "--models x: not in spec"),
    (["--sweep", "train.lr=1e-3,2e-3", "--set", "train.lr=1e-3"], "swept and also set"),
    (["--sweep", "data.split_seed=1,2"], "every run of a comparison reads the same bytes"),
    (["--sweep", "train.seed=1,2", "--seeds", "2"], "the seeds already shift train.seed"),
    (["--sweep", "budget_bytes=2.5e6"], "budgets are whole positive numbers of training bytes"),
    (["--sweep", "budget_bytes=1000,²"], "budgets are whole positive numbers of training bytes"),
    (["--sweep", "budget_bytes=1000,2000", "--budget-bytes", "500"], "in one of them"),
  ):
    assert main(base + extra) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # CI budget (the default suite measured 16:26 on a clean clone); .ci/run runs it
def test_sweep_over_seeds_end_to_end(tmp_path, corpus_dir, capsys):
  models = [
    {"name": "t", "config": "byte_transformer_tiny", "set": SMALL + ["model.d_model=16"]},
    {"name": "u", "config": "byte_transformer_tiny", "set": SMALL + ["model.d_model=16"]},
  ]
  spec = write_spec(tmp_path / "s.yaml", models, budget_bytes=1024, evals=1)
  out = tmp_path / "out"
  args = [
    "compare",
    "--spec",
    str(spec),
    "--out",
    str(out),
    "--data",
    str(corpus_dir),
    "--no-progress",
    "--sweep",
    "train.lr=1e-2",
    "--seeds",
    "2",
    "--models",
    "t",
  ]  # two runs: the unit tests cover the grid
  assert main(args) == 0
  names = ["t@train.lr=0.01", "t@train.lr=0.01@seed1"]
  assert all((out / n / "checkpoints").is_dir() for n in names) and not (out / "u@train.lr=0.01").exists()
  finals = {n: [r for r in read_jsonl(out / n / "metrics.jsonl") if r["split"] == "valid"][-1]["bpb"] for n in names}
  assert finals[names[0]] != finals[names[1]]  # another seed is another run
  md = (out / "report.md").read_text()
  assert "## Over seeds and sweep points" in md and "2 of 4 runs not trained yet" in md
  mean = sum(finals.values()) / 2
  assert f"| t | train.lr=0.01 | {mean:.4f} ± " in md and (out / "sweep.png").exists()
  assert "- best of t: train.lr=0.01" in md
  summary = yaml.safe_load((out / "summary.json").read_text())  # JSON is YAML
  assert summary[0]["valid_bpb"] == [finals[n] for n in names]
  capsys.readouterr()
  assert main(args) == 0 and capsys.readouterr().out.count("reused") == 2


@pytest.mark.slow  # CI budget (the default suite measured 16:26 on a clean clone); .ci/run runs it
def test_budget_sweep_end_to_end(tmp_path, corpus_dir):
  models = [
    {"name": "t", "config": "byte_transformer_tiny", "set": SMALL + ["model.d_model=16"]},
    {"name": "u", "config": "byte_transformer_tiny", "set": SMALL + ["model.d_model=16", "train.lr=3e-2"]},
  ]
  spec = write_spec(tmp_path / "s.yaml", models, evals=1, sweep={"budget_bytes": [512, 1536]})
  out = tmp_path / "out"
  assert main(["compare", "--spec", str(spec), "--out", str(out), "--data", str(corpus_dir), "--no-progress"]) == 0
  steps = {
    n: max(r["step"] for r in read_jsonl(out / n / "metrics.jsonl"))
    for n in ("t@budget_bytes=512", "t@budget_bytes=1536", "u@budget_bytes=1536")
  }
  assert steps["t@budget_bytes=1536"] == steps["u@budget_bytes=1536"] == 3 * steps["t@budget_bytes=512"]
  md = (out / "report.md").read_text()
  assert "| model | 512 bytes | 1,536 bytes |" in md and "points per doubling of the budget" in md
  assert "budget_bytes swept over 512, 1,536" in md and "best of" not in md
  assert (out / "sweep.png").exists()


def test_sigterm_stops_the_whole_comparison(monkeypatch, tmp_path):
  """SIGTERM while a model trains: it checkpoints (train returns `signalled`) and the comparison ends with exit 143
  before the next model; SIGTERM between two models (here: while one finishes) stops before the next one too."""
  trained = []

  def fake_train(cfg, wd, progress, log):
    trained.append(wd.name)
    if wd.name == "b":
      os.kill(os.getpid(), signal.SIGTERM)  # arrives outside the trainer's own handler: the comparison's flag
    return SimpleNamespace(signalled=wd.name == "a", run=SimpleNamespace(step=3))

  monkeypatch.setattr(compare, "train", fake_train)
  monkeypatch.setattr(compare, "finished", lambda wd, cfg: False)
  cfg = load_config("byte_transformer_tiny", SMALL)
  prep = SimpleNamespace(todo=["a", "b", "c"], configs=dict.fromkeys("abc", cfg), out=tmp_path)
  with pytest.raises(Preempted, match="a saved its checkpoint at step 3; re-run the same command") as e:
    compare.train_runs(prep, progress=False, log=lambda *a: None)
  assert e.value.exit_code == 143 and trained == ["a"]
  prep.todo = ["b", "c"]
  with pytest.raises(Preempted):
    compare.train_runs(prep, progress=False, log=lambda *a: None)
  assert trained == ["a", "b"] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_evaluation_bytes_of_a_quick_trial_and_of_the_flag():
  spec = compare_spec.CompareSpec("s", (compare_spec.ModelSpec("m", "byte_transformer_tiny"),))
  assert compare_spec.with_eval_bytes(spec, None, None) == spec  # the spec's: all valid bytes at the end
  assert compare_spec.with_eval_bytes(spec, None, 10**7) == spec  # not a quick trial
  quick = compare_spec.with_eval_bytes(spec, None, 8192)
  assert quick.eval_max_bytes == quick.final_eval_max_bytes == 65536
  given = compare_spec.with_eval_bytes(spec, 4096, 8192)
  assert given.eval_max_bytes == given.final_eval_max_bytes == 4096
  cfg = compare_configs._budgeted(load_config("byte_transformer_tiny", SMALL), 8192, given, 1.0)
  assert cfg.eval.max_bytes == cfg.eval.final_max_bytes == 4096
