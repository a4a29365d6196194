"""chunklm mrt5: training with span corruption resumes exactly, seq2seq tasks train and report exact match, the
evaluation's deletion by byte class adds up, the diagnostic-task builder writes what the paper's tasks define, and
bad input is one line."""

import importlib.util
import json
import os
import random
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chunklm.cli import main
from chunklm.config import dump_yaml
from chunklm.experiments.mrt5_compare import _speedup_line
from chunklm.model.functional import named_leaves, split_model
from chunklm.model.mrt5 import MrT5
from chunklm.seq2seq.batches import Data
from chunklm.seq2seq.evaluation import evaluate_mrt5
from chunklm.seq2seq.trainer import (
  _optimizer,
  build,
  gate_leaves,
  load_mrt5_config,
  make_train_step,
  open_mrt5,
  train_mrt5,
  with_gate,
)
from chunklm.train.signals import EXIT_CODE, Preempted
from conftest import write_corpus

QUIET = dict(progress=False, log=lambda *a, **k: None)
TINY = [
  "mrt5.d_model=32",
  "mrt5.n_heads=2",
  "mrt5.enc_layers=3",
  "mrt5.gate_layer=1",
  "mrt5.dec_layers=1",
  "data.seq_len=48",
  "data.min_doc_bytes=4",
  "seq2seq.target_len=20",
  "train.batch_size=4",
  "train.schedule=constant",
  "train.warmup_steps=1",
  "train.log_every=1",
  "train.checkpoint_every=3",
  "mrt5.regularizer_delay=1",
]
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_mrt5_tasks.py"


def _tasks():
  spec = importlib.util.spec_from_file_location("make_mrt5_tasks", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow  # CI budget: three short trainings and evaluations (~1.5 min); the README test trains mrt5 too
def test_span_corruption_training_resumes_exactly(tmp_path):
  corpus = write_corpus(tmp_path / "corpus")
  cfg = lambda steps: load_mrt5_config("mrt5_tiny", [*TINY, f"data.sources=[{corpus}]", f"train.steps={steps}"])
  train_mrt5(cfg(6), tmp_path / "straight", **QUIET)
  train_mrt5(cfg(3), tmp_path / "resumed", **QUIET)
  res = train_mrt5(cfg(6), tmp_path / "resumed", **QUIET)
  a, b = open_mrt5(tmp_path / "straight")[2], open_mrt5(tmp_path / "resumed")[2]
  la, lb = named_leaves(a), named_leaves(b)
  assert all(np.asarray(la[k]).tobytes() == np.asarray(lb[k]).tobytes() for k in la)
  rows = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(0 <= r["deleted"] <= 1 for r in rows)
  assert res["bits_per_target_byte"] > 0 and 0 <= res["deletion_rate"] <= 1
  assert json.loads((tmp_path / "resumed" / "eval.json").read_text())["step"] == res["step"] == 6


def test_evaluation_counts_what_the_gate_deletes_by_byte_class(tmp_path):
  cfg = load_mrt5_config("mrt5_tiny", [*TINY, f"data.sources=[{write_corpus(tmp_path / 'corpus')}]"])
  model = MrT5(cfg.mrt5, rngs=nnx.Rngs(params=0))
  model.gate_w[...] = model.gate_w[...] * 50.0  # gate scores far apart around 0: some positions deleted, some kept
  model.gate_c[...] = jnp.zeros(())
  data = Data(cfg, tmp_path / "cache")
  res = evaluate_mrt5(cfg, *split_model(model), data)
  assert 0.05 < res["deletion_rate"] < 0.95
  by_class = res["deleted_by_class"].values()
  total = sum(c["positions"] for c in by_class)
  assert total == sum(int(b["valid"].sum()) for b in data.eval_batches(16))  # every valid input position, once
  assert sum(c["positions"] * c["deletion_rate"] for c in by_class) / total == pytest.approx(res["deletion_rate"])
  assert sum(c["share_of_deleted"] for c in by_class) == pytest.approx(1.0)


def test_the_gate_average_follows_the_gate_once_it_is_switched_on(tmp_path):
  corpus = write_corpus(tmp_path / "corpus")
  cfg = load_mrt5_config(
    "mrt5_tiny", [*TINY, f"data.sources=[{corpus}]", "mrt5.gate_ema=0.75", "mrt5.regularizer_delay=2"]
  )
  graphdef, params = build(cfg)
  tx = _optimizer(cfg, params)
  step = make_train_step(cfg, graphdef, tx)
  data = Data(cfg, tmp_path / "cache")
  opt, pi = tx.init(params), {k: jnp.zeros((), jnp.float32) for k in ("p_acc", "i_acc", "alpha")}
  ema = {n: x + 5.0 for n, x in gate_leaves(params).items()}  # anything: before switch-on the average is the gate
  assert sorted(ema) == ["gate_c", "gate_scale_ln", "gate_shift_ln", "gate_w"]
  for k in range(4):
    before = {n: np.asarray(x) for n, x in ema.items()}
    params, opt, pi, ema, _ = step(params, opt, pi, ema, jax.tree.map(jnp.asarray, data.train_batch(k)), jnp.int32(k))
    now = {n: np.asarray(x) for n, x in gate_leaves(params).items()}
    want = now if k < 2 else {n: 0.75 * before[n] + 0.25 * now[n] for n in now}
    assert all(np.allclose(ema[n], want[n], rtol=1e-6, atol=1e-7) for n in now), k
  assert any(not np.allclose(ema[n], x) for n, x in gate_leaves(params).items())  # the gate moved after step 2
  swapped = named_leaves(with_gate(params, ema))
  for name, x in named_leaves(params).items():  # the gate's parameters are the average's, the others unchanged
    assert np.array_equal(np.asarray(swapped[name]), np.asarray(ema[name] if name in ema else x)), name


@pytest.mark.slow  # CI budget: two short trainings with the gate average (~40 s)
def test_inference_uses_the_gate_average_and_it_resumes_exactly(tmp_path):
  corpus = write_corpus(tmp_path / "corpus")
  cfg = lambda steps: load_mrt5_config(
    "mrt5_tiny", [*TINY, f"data.sources=[{corpus}]", f"train.steps={steps}", "mrt5.gate_ema=0.9"]
  )
  straight = train_mrt5(cfg(6), tmp_path / "straight", **QUIET)
  c, graphdef, averaged, _ = open_mrt5(tmp_path / "straight")  # the final evaluation used the average too
  assert evaluate_mrt5(c, graphdef, averaged, Data(c, tmp_path / "straight" / "cache")) == {
    k: v for k, v in straight.items() if k not in ("workdir", "step")
  }
  train_mrt5(cfg(3), tmp_path / "resumed", **QUIET)
  resumed = train_mrt5(cfg(6), tmp_path / "resumed", **QUIET)
  assert straight == {**resumed, "workdir": straight["workdir"]}
  a, b = named_leaves(open_mrt5(tmp_path / "straight")[2]), named_leaves(open_mrt5(tmp_path / "resumed")[2])
  assert all(np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)
  plain = load_mrt5_config(tmp_path / "straight" / "config.yaml", ["mrt5.gate_ema=0"])
  (tmp_path / "last").mkdir()
  (tmp_path / "last" / "config.yaml").write_text(dump_yaml(plain))
  (tmp_path / "last" / "checkpoints").symlink_to(tmp_path / "straight" / "checkpoints")
  last = named_leaves(open_mrt5(tmp_path / "last")[2])  # the same checkpoint read without the average
  assert any(not np.allclose(a[k], last[k]) for k in a if k.startswith("gate_"))
  assert all(np.array_equal(a[k], last[k]) for k in a if not k.startswith("gate_"))


def test_diagnostic_tasks_are_what_the_paper_defines(tmp_path):
  tasks = _tasks()
  rng = random.Random(0)
  assert tasks.vowel_removal("bAnanaX", rng) == ("bAnanaX", "bnnX")
  inp, tgt = tasks.contextual_vowel("x" * 40, rng)
  assert tgt == "".join(
    c for i, c in enumerate(inp) if not (c in tasks.VOWELS and i and inp[i - 1] in tasks.LOWER_CONSONANTS)
  )
  inp, tgt = tasks.sequence_merge("q" * 40, rng)
  assert "ABC" in inp and tgt == inp.replace("ABC", "D") and len(tgt) < len(inp)
  assert tasks.main(["--out", str(tmp_path / "t"), "--length", "16", "--train", "40", "--test", "8"]) == 0
  rows = [json.loads(x) for x in (tmp_path / "t" / "sequence_merge_test.jsonl").read_text().splitlines()]
  assert len(rows) == 8 and all(r["target"] == r["input"].replace("ABC", "D") for r in rows)


@pytest.mark.slow  # CI budget: a short seq2seq training with cached greedy decoding (~1 min)
def test_seq2seq_training_reports_exact_match(tmp_path, capsys):
  assert _tasks().main(["--out", str(tmp_path / "t"), "--length", "16", "--train", "40", "--test", "8"]) == 0
  capsys.readouterr()
  args = ["mrt5", "train", "--workdir", str(tmp_path / "run"), "--no-progress", "--json", str(tmp_path / "r.json")]
  for s in [
    *TINY,
    "seq2seq.objective=seq2seq",
    f"seq2seq.train_file={tmp_path}/t/vowel_removal_train.jsonl",
    f"seq2seq.test_file={tmp_path}/t/vowel_removal_test.jsonl",
    "data.seq_len=16",
    "train.steps=3",
  ]:
    args += ["--set", s]
  assert main(args) == 0
  res = json.loads((tmp_path / "r.json").read_text())
  assert 0 <= res["exact_match"] <= 1 and "exact match" in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path, capsys):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"input": "abc"}\n')
  cases = [
    (["--set", "mrt5.target_deletion=1.0"], "target_deletion"),
    (["--set", "mrt5.gate_layer=9"], "gate_layer"),
    (
      ["--set", "seq2seq.objective=seq2seq", "--set", f"seq2seq.train_file={bad}", "--set", f"seq2seq.test_file={bad}"],
      'needs string fields "input" and "target"',
    ),
  ]
  for extra, message in cases:
    assert main(["mrt5", "train", "--workdir", str(tmp_path / "w"), "--no-progress", *extra]) == 2, message
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
  assert main(["mrt5", "eval", "--workdir", str(tmp_path / "w"), "--batch-size", "0"]) == 2
  assert "--batch-size must be >= 1" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    main(["mrt5", "fly"])


@pytest.mark.slow  # CI budget: two short trainings, evaluations and encoder timings (~50 s)
def test_mrt5_compare_trains_each_target_reports_and_reuses(tmp_path, capsys):
  corpus = write_corpus(tmp_path / "corpus")
  sets = [
    a for o in [*TINY, f"data.sources=[{corpus}]", "train.steps=2", "train.checkpoint_every=2"] for a in ("--set", o)
  ]
  args = [
    "mrt5",
    "compare",
    "--sweep",
    "mrt5.target_deletion=0,0.5",
    "--out",
    str(tmp_path / "cmp"),
    "--bench-repeats",
    "1",
    "--no-progress",
    *sets,
  ]
  assert main(args) == 0
  md = (tmp_path / "cmp" / "report.md").read_text()
  names = ["mrt5_tiny@mrt5.target_deletion=0", "mrt5_tiny@mrt5.target_deletion=0.5"]
  evals = [json.loads((tmp_path / "cmp" / n / "eval.json").read_text()) for n in names]
  for n, e in zip(names, evals):  # the table holds each run's own final evaluation
    assert f"| {n} | " in md and f"{e['bits_per_target_byte']:.4f}" in md
    by_class = e["deleted_by_class"].values()  # the per-kind rates add up to the overall one
    total = sum(c["positions"] for c in by_class)
    assert sum(c["positions"] * c["deletion_rate"] for c in by_class) / total == pytest.approx(e["deletion_rate"])
  assert "over δ = 0: **" in md and "(seed 0; deleted" in md and "bits per target byte, mean" not in md
  summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
  assert [r["target_deletion"] for r in summary] == [0.0, 0.5] and all(
    r["bench"]["hard_bytes_per_s"] > 0 for r in summary
  )
  capsys.readouterr()
  assert main(args) == 0 and capsys.readouterr().out.count("reused") == 2
  assert main([*args, "--set", "mrt5.gate_scale=-20"]) == 2  # finished runs of other settings are not reused
  assert (
    "holds an MrT5 run with other model, data or objective settings; resume with the same config, or give "
    "another --out" in capsys.readouterr().err
  )
  for bad, message in (
    (["--sweep", "mrt5.target_deletion=0,1.5"], "delta must be in [0, 1)"),
    (["--sweep", "mrt5.target_deletion=0", "--set", "mrt5.target_deletion=0.5"], "swept and also"),
    ([], "give at least one --sweep"),
  ):
    assert main(["mrt5", "compare", "--out", str(tmp_path / "bad"), *bad]) == 2
    assert message in capsys.readouterr().err


def test_the_speed_up_is_given_seed_by_seed_against_the_goal():
  def row(target, seed, hard, deleted, **other):
    return {
      "target_deletion": target,
      "seed": seed,
      "deletion_rate": deleted,
      "bench": {"hard_bytes_per_s": hard},
      "point": {"mrt5.target_deletion": str(target), **other},
    }

  rows = [
    row(0.0, 0, 100.0, 0.0),
    row(0.7, 0, 150.0, 0.6),
    row(0.5, 0, 400.0, 0.5),  # not the highest target
    row(0.0, 1, 100.0, 0.0),
    row(0.7, 1, 210.0, 0.72),
    row(0.7, 2, 999.0, 0.7),
  ]  # seed 2 has no δ = 0 run
  line = _speedup_line(rows)
  assert "δ = 0.70 over δ = 0: **1.50x** (seed 0; deleted 0.600 vs 0.000), **2.10x** (seed 1; deleted 0.720" in line
  assert line.endswith("goal ≥ 2x: reached in 1 of 2 pairs") and "seed 2" not in line
  assert _speedup_line(rows[:2]).endswith("not reached")
  assert _speedup_line([row(0.0, 0, 1.0, 0.0), row(0.7, 0, 3.0, 0.7)]).endswith("goal ≥ 2x: reached")
  assert _speedup_line([row(0.5, 0, 1.0, 0.5), row(0.7, 0, 3.0, 0.7)]) == ""  # no δ = 0
  assert _speedup_line([row(0.0, 0, 1.0, 0.0), row(0.7, 1, 3.0, 0.7)]) == ""  # no seed with both
  grid = [
    row(0.0, 0, 100.0, 0.0, **{"mrt5.gate_layer": "1"}),
    row(0.0, 0, 50.0, 0.0, **{"mrt5.gate_layer": "2"}),
    row(0.7, 0, 250.0, 0.7, **{"mrt5.gate_layer": "1"}),
    row(0.7, 0, 60.0, 0.7, **{"mrt5.gate_layer": "2"}),
  ]
  line = _speedup_line(grid)  # a second swept key: each of its values against its own δ = 0 run
  assert "**2.50x** (mrt5.gate_layer=1, seed 0;" in line and "**1.20x** (mrt5.gate_layer=2, seed 0;" in line
  assert line.endswith("reached in 1 of 2 pairs")


@pytest.mark.slow  # CI budget: two short trainings and evaluations (~45 s on 2 cores)
def test_sigterm_checkpoints_and_the_rerun_records_each_step_once(tmp_path, monkeypatch):
  """The MrT5 loop shares the LM trainer's signals and reporter: SIGTERM (here sent while step 3's batch is made)
  saves a checkpoint and raises Preempted (exit 143 from the CLI); re-running resumes there and metrics.jsonl holds
  each step once."""
  corpus = write_corpus(tmp_path / "corpus")
  cfg = load_mrt5_config(
    "mrt5_tiny", [*TINY, f"data.sources=[{corpus}]", "train.steps=5", "train.checkpoint_every=100"]
  )
  real = Data.train_batch

  def batch(self, step):
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return real(self, step)

  monkeypatch.setattr(Data, "train_batch", batch)
  with pytest.raises(Preempted, match="saved checkpoint at step 3") as stopped:
    train_mrt5(cfg, tmp_path / "run", **QUIET)
  assert stopped.value.exit_code == EXIT_CODE
  assert open_mrt5(tmp_path / "run")[3] == 3
  monkeypatch.setattr(Data, "train_batch", real)
  train_mrt5(cfg, tmp_path / "run", **QUIET)
  rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
