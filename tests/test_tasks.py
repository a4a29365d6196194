"""Offline harness task folders (chunklm/eval/task_*.py, `chunklm tasks make`): the probe, cloze and noisy records
are right, the same seed writes the same files, bad input is one line, and lm-evaluation-harness loads the folders,
builds the expected requests and scores an oracle model 1.0 on every task."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from chunklm.cli import main
from chunklm.errors import UserError
from chunklm.eval.task_cloze import cloze_records, length_tolerance, noisy_records
from chunklm.eval.task_files import MARKER, make_tasks
from chunklm.eval.task_probes import DEMO_POOL, PROBES, levenshtein, probe_records, words_from_text

VOCAB = (
  "house river mouse garden window yellow quickly bright stone letter market silver doctor planet candle orange "
  "summer winter forest bridge castle animal kitchen pencil basket button rabbit turtle dragon violin guitar meadow "
  "harbor island valley desert thunder shadow mirror ladder bottle jacket apple cherry lemon tiger eagle salmon "
  "wagon anchor"
).split()


def synthetic_text(sentences: int = 300, seed: int = 0) -> str:
  rng = random.Random(seed)
  words = VOCAB + ["the", "a", "of"]
  return " ".join(
    " ".join(rng.choice(words) for _ in range(rng.randint(5, 12))).capitalize() + "." for _ in range(sentences)
  )


@pytest.fixture
def text(tmp_path) -> Path:
  path = tmp_path / "text.txt"
  path.write_text(synthetic_text() + "\n")
  return path


def test_words_from_text():
  words = words_from_text('The "house", the HOUSE; a cat x3 house, antidisestablishment twice twice; ok ok café café')
  assert words == ["house", "the", "twice"]  # 3-12 ASCII letters, seen twice, lower-cased, punctuation stripped


def _oracle(probe: str, question: str, word: str) -> str:
  """The answer to a probe's question, worked out from the question alone."""
  q = re.findall(r'"([^"]*)"', question)
  match probe:
    case "spell":
      return " ".join(q[0])
    case "spell_inverse":
      return q[0].replace(" ", "")
    case "contains_char":
      return "Yes" if q[0] in q[1] else "No"
    case "contains_word":
      return "Yes" if q[0] in q[1].split() else "No"
    case "orthographic":
      return min(q[1:], key=lambda x: levenshtein(q[0], x))
    case "insert":
      return q[2].replace(q[1], q[1] + q[0])
    case "delete":
      return q[1].replace(q[0], "")
    case "substitute":
      return q[2].replace(q[0], q[1])
    case "swap":
      i, j = q[2].index(q[0]), q[2].index(q[1])
      chars = list(q[2])
      chars[i], chars[j] = chars[j], chars[i]
      return "".join(chars)
  raise AssertionError(probe)


@pytest.mark.parametrize("probe", list(PROBES))
def test_probe_records_are_right(probe):
  words = sorted(set(VOCAB))
  random.Random(0).shuffle(words)
  records = probe_records(probe, words, 40, random.Random(1))
  k = PROBES[probe][0]
  assert len(records) >= 10
  for r in records:
    lines = r["query"].split("\n")
    assert len(lines) == 4  # three solved demonstrations, then the question
    for demo in lines[:3]:
      question, answer = demo.rsplit(" ", 1) if probe != "spell" else demo.split(": ", 1)
      assert _oracle(probe, question, "").strip() == answer.strip(), demo
    assert r["word"] not in words[:DEMO_POOL] and (f'"{r["word"]}"' in lines[3] or " ".join(r["word"]) in lines[3])
    assert len(r["choices"]) == k and len(set(r["choices"])) == k and all(c.startswith(" ") for c in r["choices"])
    assert 0 <= r["gold"] < k and r["answer"] == r["choices"][r["gold"]]
    assert r["answer"] == " " + _oracle(probe, lines[3], r["word"]), r
  counts = Counter(r["gold"] for r in records)
  assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == k  # balanced over the positions
  assert records == probe_records(probe, words, 40, random.Random(1))


def test_cloze_records_come_from_the_text():
  data = synthetic_text(200).encode()
  records = cloze_records(data, 30, random.Random(0), context_bytes=120, continuation_bytes=30)
  assert len(records) == 30
  golds = Counter(r["gold"] for r in records)
  assert sorted(golds) == [0, 1, 2, 3] and max(golds.values()) - min(golds.values()) <= 1
  for r in records:
    context, answer, p = r["query"].encode(), r["answer"].encode(), r["offset"]
    start = p - len(context)
    assert data[start:p] == context and data[p : p + len(answer)] == answer  # the text that follows the context
    assert 0 < len(context) <= 120 and (start == 0 or data[start - 1 : start] == b" ") and not context[:1].isspace()
    assert answer.startswith(b" ") and 15 <= len(answer) <= 30 and data[p + len(answer) : p + len(answer) + 1] in b" \n"
    assert len(set(r["choices"])) == 4 and r["offsets"][r["gold"]] == p
    for c, o in zip(r["choices"], r["offsets"]):
      c = c.encode()
      assert data[o : o + len(c)] == c and abs(len(c) - len(answer)) <= length_tolerance(len(answer))
      assert o == p or o + len(c) <= start or o >= p + len(answer)  # elsewhere: not in the context or the answer
  spans = sorted((r["offset"], r["offset"] + len(r["answer"])) for r in records)
  assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no two items share continuation bytes


def test_noisy_records_perturb_the_context_only_above_strength_0():
  records = cloze_records(synthetic_text(100).encode(), 20, random.Random(0))
  for name in ("swap", "delete", "uppercase", "antspeak"):
    assert noisy_records(records, name, 0.0, 0) == [r | {"perturbation": name, "strength": 0.0} for r in records]
    noisy = noisy_records(records, name, 0.2, 0)
    assert [(r["id"], r["gold"], r["choices"]) for r in noisy] == [(r["id"], r["gold"], r["choices"]) for r in records]
    assert sum(a["query"] != b["query"] for a, b in zip(noisy, records)) >= 18
    both = noisy_records(records, name, 0.2, 0, choices=True)
    assert all(c[0] == " " for r in both for c in r["choices"]) and both[0]["choices"] != records[0]["choices"]
    assert noisy == noisy_records(records, name, 0.2, 0)


def _files(root: Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files_and_a_rerun_replaces_its_folder(text, tmp_path):
  out = tmp_path / "tasks"
  kw = dict(n=20, strengths=[0.0, 0.1], perturbations=["swap", "keyboard"])
  summary = make_tasks(text, out, progress=False, **kw)
  first = _files(out)
  assert summary["tasks"]["chunklm_cloze_noisy_swap_s0.1"] == 20 and "chunklm_cloze_noisy_s0" in summary["groups"]
  readme = first["README.md"].decode()
  assert str(text) in readme and summary["sha256"] in readme and "seed 0" in readme
  make_tasks(text, out, progress=False, **kw)
  assert _files(out) == first
  make_tasks(text, out, progress=False, seed=1, **kw)
  assert _files(out)["cloze/data/chunklm_cloze.jsonl"] != first["cloze/data/chunklm_cloze.jsonl"]
  make_tasks(text, out, families=["cloze"], n=5, progress=False)  # fewer files: the others go
  assert sorted(_files(out)) == sorted(
    [MARKER, "README.md", "cloze/chunklm_cloze.yaml", "cloze/data/chunklm_cloze.jsonl"]
  )
  assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "README.md", "cloze"])


@pytest.mark.parametrize(
  "kw, message",
  [
    (dict(n=0), "--n must be at least 1"),
    (dict(strengths=[1.5]), r"--strength must be in \[0, 1\], got 1.5"),
    (dict(perturbations=["swop"]), "unknown perturbation 'swop'"),
    (dict(families=["probes", "quiz"]), "--families"),
    (dict(noisy_on=["spell"], families=["cloze", "noisy"]), "needs the probes family"),
    (dict(context_bytes=4), "--context-bytes must be at least"),
  ],
)
def test_bad_arguments_are_refused(text, tmp_path, kw, message):
  with pytest.raises(UserError, match=message):
    make_tasks(text, tmp_path / "out", progress=False, **kw)
  assert not (tmp_path / "out").exists()


def test_bad_texts_and_folders_are_refused(text, tmp_path):
  few = tmp_path / "few.txt"
  few.write_text("one two three one two three " * 50)
  with pytest.raises(UserError, match="3 distinct words .* need at least 24"):
    make_tasks(few, tmp_path / "a", progress=False)
  with pytest.raises(UserError, match="too short for cloze"):
    make_tasks(few, tmp_path / "a", families=["cloze"], context_bytes=2000, progress=False)
  theirs = tmp_path / "theirs"
  theirs.mkdir()
  (theirs / "notes.txt").write_text("mine")
  with pytest.raises(UserError, match="did not write"):
    make_tasks(text, theirs, progress=False)
  with pytest.raises(UserError, match="no such file"):
    make_tasks(tmp_path / "missing.txt", tmp_path / "b", progress=False)
  assert (theirs / "notes.txt").read_text() == "mine" and not (tmp_path / "a").exists()


def test_cli_makes_tasks_and_errors_are_one_line(text, tmp_path, capsys):
  out = tmp_path / "out"
  code = main(["tasks", "make", "--text", str(text), "--out", str(out), "--n", "8", "--perturbations", "swap"])
  stdout = capsys.readouterr().out
  assert code == 0 and "chunklm_cloze_noisy_s0.05: 1 tasks, 8 items" in stdout and f"--include-path {out}" in stdout
  assert json.loads((out / MARKER).read_text())["settings"]["strengths"] == [0.05, 0.15]
  for bad, message in [(["--strength", "-0.1"], "--strength must be in [0, 1]"), (["--n", "0"], "--n must be")]:
    assert main(["tasks", "make", "--text", str(text), "--out", str(tmp_path / "x"), *bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("chunklm: error: tasks make: ") and message in err
  with pytest.raises(SystemExit) as e:
    main(["tasks", "make", "--help"])
  assert e.value.code == 0 and "chunklm_cute" in capsys.readouterr().out
  with pytest.raises(SystemExit) as e:
    main(["tasks", "make", "--text", str(text)])
  assert e.value.code == 2 and "--out" in capsys.readouterr().err


@pytest.fixture
def offline_harness(monkeypatch, tmp_path):
  """lm_eval with `datasets` reading nothing from the network and caching under tmp_path."""
  for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
    monkeypatch.setenv(var, "1")
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
  monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
  pytest.importorskip("lm_eval")
  import datasets.config  # after the environment: it reads it once, at import

  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
  monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
  from lm_eval.tasks import TaskManager

  return TaskManager


def _records(out: Path) -> dict[str, list[dict]]:
  return {p.stem: [json.loads(line) for line in p.open()] for p in out.rglob("*.jsonl")}


def test_the_harness_builds_the_expected_requests(text, tmp_path, offline_harness):
  out = tmp_path / "tasks"
  make_tasks(text, out, n=12, strengths=[0.1], perturbations=["swap", "delete"], progress=False)
  tm = offline_harness(include_path=str(out), include_defaults=False)
  loaded = tm.load(["chunklm_cute", "chunklm_cute_gen", "chunklm_cloze", "chunklm_cloze_noisy_s0.1"])
  assert set(loaded["groups"]) == {"chunklm_cute", "chunklm_cute_gen", "chunklm_cloze_noisy_s0.1"}
  assert len(loaded["tasks"]) == 2 * len(PROBES) + 3
  records = _records(out)
  for name in ["chunklm_cute_spell", "chunklm_cloze", "chunklm_cloze_noisy_swap_s0.1", "chunklm_cute_swap_gen"]:
    task = loaded["tasks"][name]
    task.build_all_requests()
    docs = records[name.removesuffix("_gen")]
    if name.endswith("_gen"):
      assert [(i.args[0], i.args[1]["until"]) for i in task.instances] == [(d["query"], ["\n"]) for d in docs]
      assert [task.doc_to_target(d) for d in docs] == [d["answer"] for d in docs]
    else:
      expect = sorted((d["id"], d["query"], c) for d in docs for c in d["choices"])
      assert sorted((i.doc["id"], *i.args) for i in task.instances) == expect  # context, then the choice as is
      assert [task.doc_to_target(d) for d in task.eval_docs] == [d["gold"] for d in docs]


def test_an_oracle_scores_1_on_every_task(text, tmp_path, offline_harness):
  from lm_eval import evaluator
  from lm_eval.api.model import LM

  out = tmp_path / "tasks"
  make_tasks(text, out, n=8, strengths=[0.1], perturbations=["swap"], noisy_choices=True, progress=False)
  answers = {(r["query"]): r["answer"] for rs in _records(out).values() for r in rs}

  class Oracle(LM):
    def loglikelihood(self, requests):
      return [(0.0 if answers[ctx] == cont else -1.0, False) for ctx, cont in (r.args for r in requests)]

    def loglikelihood_rolling(self, requests):
      raise NotImplementedError

    def generate_until(self, requests):
      return [answers[r.args[0]] for r in requests]

  tm = offline_harness(include_path=str(out), include_defaults=False)
  res = evaluator.simple_evaluate(
    model=Oracle(), tasks=["chunklm_cute", "chunklm_cute_gen", "chunklm_cloze", "chunklm_cloze_noisy_s0.1"],
    task_manager=tm, bootstrap_iters=0, log_samples=False,
  )  # fmt: skip
  scores = {t: v.get("acc,none", v.get("exact_match,none")) for t, v in res["results"].items()}
  assert len(scores) == 2 * len(PROBES) + 2 + 3 and all(s == 1.0 for s in scores.values()), scores
