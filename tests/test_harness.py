"""The lm-evaluation-harness adapter (chunklm/eval/harness.py) on the harness itself: local task YAMLs of its three
request types (multiple choice, rolling loglikelihood, generation) run through `lm_eval.simple_evaluate` on an
H-Net, a byte and a BPE Transformer, and the harness's figures equal what the model's own calls give; `chunklm
lm-eval` runs the same task on all three from one command and writes the results into each run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from chunklm.cli import main
from chunklm.errors import UserError
from tiny_models import SEQ, make_models, text_of

lm_eval = pytest.importorskip("lm_eval")
from lm_eval import evaluator  # noqa: E402
from lm_eval.api.registry import get_model, model_registry  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from chunklm.eval.harness import ChunkLM  # noqa: E402
from chunklm.eval.harness_run import interval95, noise_drops  # noqa: E402

CHOICES = ["cat", "dog", "tree", "mat"]


def _task(folder, name: str, rows: list[dict], body: str) -> None:
  data = folder / f"{name}.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))
  (folder / f"{name}.yaml").write_text(
    f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
    f"  cache_dir: {folder / 'hf_cache'}\ntest_split: test\n{body}metadata:\n  version: 1\n"
  )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("harness")
  tasks = root / "tasks"
  tasks.mkdir()
  rng = np.random.default_rng(0)
  choice_rows = [
    {"query": text_of(5, s).rstrip(".\n"), "choices": CHOICES, "gold": int(rng.integers(4))} for s in range(8)
  ]
  _task(
    tasks,
    "t_choice",
    choice_rows,
    'output_type: multiple_choice\ndoc_to_text: "{{query}}"\ndoc_to_choice: "{{choices}}"\n'
    'doc_to_target: "{{gold}}"\nmetric_list:\n  - metric: acc\n',
  )
  page_rows = [{"page": text_of(n, s)} for s, n in ((1, 4), (2, 30), (3, 70))]  # 1 to 5 windows
  _task(
    tasks,
    "t_rolling",
    page_rows,
    'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{page}}"\n'
    "metric_list:\n  - metric: bits_per_byte\n",
  )
  gen_rows = [{"query": text_of(4, s).rstrip(".\n"), "answer": " the"} for s in range(4)]
  _task(
    tasks,
    "t_generate",
    gen_rows,
    'output_type: generate_until\ndoc_to_text: "{{query}}"\ndoc_to_target: "{{answer}}"\n'
    'generation_kwargs:\n  until: ["\\n", " "]\n  max_gen_toks: 6\n  do_sample: false\n'
    "metric_list:\n  - metric: exact_match\n",
  )
  return make_models(root), tasks, {"choice": choice_rows, "page": page_rows, "gen": gen_rows}


# CI budget: the H-Net and BPE cases and the command on every kind are slow tests that .ci/run runs
@pytest.mark.parametrize(
  "kind", [pytest.param("hnet", marks=pytest.mark.slow), "bytes", pytest.param("bpe", marks=pytest.mark.slow)]
)
def test_the_harness_figures_are_the_models_own(setup, kind):
  models, tasks, rows = setup
  m = models[kind]
  lm = ChunkLM(run=m.run, batch_size=4, progress=False)
  out = evaluator.simple_evaluate(
    model=lm,
    tasks=["t_choice", "t_rolling", "t_generate"],
    task_manager=TaskManager(include_path=str(tasks)),
    log_samples=True,
    bootstrap_iters=0,
  )
  res = out["results"]
  # multiple choice: the harness's accuracy is the argmax of the model's own loglikelihoods (context, " choice")
  picks = [
    int(np.argmax([ll for ll, _ in m.loglikelihood([(r["query"], " " + c) for c in CHOICES])])) for r in rows["choice"]
  ]
  assert res["t_choice"]["acc,none"] == pytest.approx(np.mean([p == r["gold"] for p, r in zip(picks, rows["choice"])]))
  # rolling: bits per byte over the pages, from the model's own whole-text log-probabilities
  texts = [r["page"] for r in rows["page"]]
  total = sum(m.loglikelihood_rolling(texts))
  n_bytes = sum(len(t.encode()) for t in texts)
  assert res["t_rolling"]["bits_per_byte,none"] == pytest.approx(-total / n_bytes / math.log(2), rel=1e-5)
  # generation: greedy, cut at the first stop string, at most max_gen_toks bytes
  samples = out["samples"]["t_generate"]
  for s, r in zip(sorted(samples, key=lambda s: s["doc_id"]), rows["gen"]):
    (got,) = s["resps"][0]
    raw = m.generate(r["query"], max_bytes=6, temperature=0.0, stop=["\n", " "])
    assert got == raw.decode("utf-8", errors="replace") and len(raw) <= 6 and b"\n" not in raw and b" " not in raw


@pytest.mark.slow
def test_lm_eval_runs_one_task_on_every_model_kind_and_writes_into_the_run(setup, capsys, tmp_path):
  models, tasks, rows = setup
  for kind, m in models.items():
    out = tmp_path / f"{kind}.json"
    args = ["lm-eval", "--workdir", str(m.run.workdir), "--tasks", "t_choice", "--include-path", str(tasks)]
    assert main([*args, "--limit", "4", "--batch-size", "2", "--no-progress", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "t_choice" in printed and "acc" in printed and "95 % interval" in printed
    written = json.loads(out.read_text())
    saved = sorted((m.run.workdir / "lm_eval").glob("results_*.json"))
    assert saved and json.loads(saved[-1].read_text())["results"] == written["results"]
    assert written["chunklm"]["kind"] == m.run.kind and written["results"]["t_choice"]["acc,none"] in (
      0,
      0.25,
      0.5,
      0.75,
      1,
    )
    [row] = interval95(written)
    assert row["low"] <= row["value"] <= row["high"]


@pytest.mark.slow  # CI budget: .ci/run runs the slow tests of this file
def test_bad_harness_input_is_one_line(setup, capsys):
  models, tasks, _ = setup
  run = str(models["bytes"].run.workdir)
  for extra, message in (
    (["--tasks", "no_such_task", "--include-path", str(tasks)], "the harness knows no task or group no_such_task"),
    (["--tasks", "t_choice", "--include-path", str(tasks / "missing")], "not a folder of task YAML files"),
    (["--tasks", " , ", "--include-path", str(tasks)], "name at least one harness task"),
    (["--tasks", "t_choice", "--include-path", str(tasks), "--batch-size", "0"], "batch_size must be a positive int"),
  ):
    assert main(["lm-eval", "--workdir", run, *extra, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
  with pytest.raises(UserError, match="give a run directory"):
    ChunkLM()


def test_the_harness_finds_the_adapter_by_name(setup):
  """`--model chunklm --model_args workdir=RUN,batch_size=4`: the registry and the harness's argument string."""
  run = setup[0]["bytes"].run.workdir
  lm = get_model("chunklm").create_from_arg_string(f"workdir={run},batch_size=4,stride=32", {"device": "cpu"})
  assert isinstance(lm, ChunkLM) and lm.scorer.batch_size == 4 and lm.stride == 32 and lm.run.workdir == run
  assert {"hf", "dummy", "chunklm"} <= set(model_registry.keys())  # the harness's own models stay registered


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_a_long_generation_context_keeps_its_end_and_room_for_the_answer(setup, kind):
  lm = ChunkLM(run=setup[0][kind].run, progress=False)
  long = (text_of(200, 9) * 2).encode()
  for max_bytes, keep in ((16, SEQ - 1 - 16), (100, SEQ // 2)):
    fitted = lm._fitted(long, max_bytes)
    assert long.endswith(fitted) and len(lm.scorer.encode(fitted)) <= keep
    assert len(lm.scorer.encode(fitted)) >= keep - 8  # no more cut than the tokens at the cut need


def test_the_adapter_scores_what_the_api_refuses_and_says_so_once(setup, caplog):
  lm = ChunkLM(run=setup[0]["bytes"].run, progress=False)
  empty, long = lm.scorer.loglikelihood([(b"the cat", b""), (b"the", b"x" * (SEQ + 5))])
  assert empty == (0.0, True) and math.isfinite(long[0]) and long[0] < 0


def test_noise_drops_pair_items_by_id():
  """Drop = mean over shared items of (noisy - clean); the 95 % interval from the per-item differences."""
  clean = [{"doc_id": i, "acc": float(i % 2)} for i in range(6)]  # items 1, 3, 5 right
  noisy = [{"doc_id": i, "acc": float(i in (1, 2))} for i in range(5)]  # item 5 missing: only 0-4 pair
  rows = noise_drops(
    {"x": clean, "x_noisy_random_case_s0.15": noisy, "x_noisy_s0.15": noisy, "y_noisy_swap_s0.1": noisy}
  )
  [row] = rows  # groups and tasks without their clean base are left out
  diffs = [0 - 0, 1 - 1, 1 - 0, 0 - 1, 0 - 0]
  mean = sum(diffs) / 5
  sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4)
  assert row["perturbation"] == "random_case" and row["strength"] == 0.15 and row["n"] == 5
  assert row["clean"] == pytest.approx(2 / 5) and row["noisy"] == pytest.approx(2 / 5) and row["drop"] == 0
  assert row["high"] - row["drop"] == pytest.approx(1.96 * sd / math.sqrt(5))


@pytest.mark.slow  # CI budget: .ci/run runs the slow tests of this file
def test_tasks_noisy_copies_a_harness_task_and_lm_eval_pairs_the_drops(setup, tmp_path, capsys):
  models, tasks, rows = setup
  out = tmp_path / "noisy"
  make = ["tasks", "noisy", "--task", "t_choice", "--include-path", str(tasks), "--out", str(out)]
  assert main([*make, "--perturbations", "swap,delete", "--strength", "0.3"]) == 0
  capsys.readouterr()
  copied = [json.loads(line) for line in (out / "noisy" / "data" / "chunklm_t_choice.jsonl").open()]
  assert [(r["query"], r["choices"], r["gold"]) for r in copied] == [
    (r["query"], CHOICES, r["gold"]) for r in rows["choice"]
  ]  # the requests the harness builds; the copy keeps the task's target delimiter (" ") between query and choice
  assert "target_delimiter: ' '" in (out / "noisy" / "chunklm_t_choice.yaml").read_text()
  noisy = [json.loads(line) for line in (out / "noisy" / "data" / "chunklm_t_choice_noisy_swap_s0.3.jsonl").open()]
  assert [r["gold"] for r in noisy] == [r["gold"] for r in copied] and any(
    a["query"] != b["query"] for a, b in zip(noisy, copied)
  )
  result = tmp_path / "r.json"
  run = str(models["bytes"].run.workdir)
  names = "t_choice,chunklm_t_choice,chunklm_t_choice_noisy_s0.3"
  args = ["lm-eval", "--workdir", run, "--tasks", names, "--include-path", str(tasks), "--include-path", str(out)]
  assert main([*args, "--no-progress", "--no-write", "--json", str(result)]) == 0
  assert "drop" in capsys.readouterr().out
  res = json.loads(result.read_text())
  assert res["results"]["chunklm_t_choice"]["acc,none"] == res["results"]["t_choice"]["acc,none"]
  drops = {d["perturbation"]: d for d in res["chunklm"]["noise_drops"]}
  assert set(drops) == {"swap", "delete"} and all(d["n"] == len(rows["choice"]) for d in drops.values())
  for d in drops.values():
    noisy_acc = res["results"][f"chunklm_t_choice_noisy_{d['perturbation']}_s0.3"]["acc,none"]
    assert d["drop"] == pytest.approx(noisy_acc - res["results"]["chunklm_t_choice"]["acc,none"])
  for extra, message in (
    (["--task", "t_rolling", "--include-path", str(tasks)], "is a loglikelihood_rolling task"),
    (["--task", "t_choice", "--include-path", str(tasks), "--perturbations", "nope"], "unknown perturbation 'nope'"),
  ):
    assert main(["tasks", "noisy", *extra, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
