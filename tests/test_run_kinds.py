"""Every command that opens a run, given each other kind of run and each kind of non-run, answers one line (exit 2)
and changes nothing on disk; commands that write a run never write into another run's directory; outputs never
replace a run's own files (run/kind.py).

The runs here are their marker files only (config.yaml, classify.json, origin.json, summary.json): each command must
refuse before it reads a checkpoint, so none is needed and every case is fast."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from chunklm.api import load
from chunklm.cli import main
from chunklm.config import dump_yaml
from chunklm.errors import UserError
from chunklm.run.kind import CLASSIFIER_HEADER, kind_of
from chunklm.seq2seq.trainer import load_mrt5_config
from conftest import tiny_config

KINDS = ("lm", "params", "classifier", "mrt5", "comparison", "empty", "junk", "file", "missing")


def make_kind(kind: str, where: Path) -> Path:
  """A directory (or file, or nothing) of `kind` at `where`."""
  lm = dump_yaml(tiny_config())
  if kind == "missing":
    return where
  if kind == "file":
    where.write_text("not a run\n")
    return where
  where.mkdir(parents=True)
  if kind in ("lm", "params"):
    (where / "config.yaml").write_text("# written by chunklm train\n" + lm)
    (where / "checkpoints").mkdir()
  if kind == "params":
    (where / "origin.json").write_text('{"what": "imported"}\n')
  if kind == "classifier":
    (where / "config.yaml").write_text(CLASSIFIER_HEADER + "\n" + lm)
    (where / "classify.json").write_text(json.dumps({"settings": {}, "classes": ["a", "b"]}))
  if kind == "mrt5":
    (where / "config.yaml").write_text(dump_yaml(load_mrt5_config("mrt5_tiny")))
  if kind == "comparison":
    (where / "summary.json").write_text("{}")
    (where / "report.md").write_text("# report\n")
    (where / "byte_transformer").mkdir()
  if kind == "junk":
    (where / "notes.txt").write_text("hello\n")
  return where


def snapshot(root: Path) -> dict:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp("kinds")
  for k in KINDS:
    make_kind(k, root / k)
  (root / "records.jsonl").write_text('{"text": "abc", "label": "a"}\n{"text": "xyz", "label": "b"}\n')
  return root


def test_each_kind_is_recognised(kinds):
  expected = {"empty": "new", "missing": "new", "junk": "other", "file": "other"}
  for k in KINDS:
    assert kind_of(kinds / k) == expected.get(k, k)


# (command line with {run} for the run given and {out} for a fresh output place, the kinds it takes)
READERS = {
  "eval": ("eval --workdir {run} --no-progress", ("lm", "params")),
  "generate": ("generate --workdir {run} --max-bytes 2", ("lm", "params")),
  "boundaries": ("boundaries --workdir {run} --text abc --out {out}", ("lm", "params")),
  "report": ("report --workdir {run} --out {out}.html", ("lm", "params")),
  "robustness": ("robustness --workdir {run} --out {out} --no-progress", ("lm", "params")),
  "info": ("info --workdir {run}", ("lm", "params")),
  "export": ("export --workdir {run} --out {out}.safetensors", ("lm", "params")),
  "to-hnet": ("convert to-hnet --workdir {run} --out {out}", ("lm", "params")),
  "init-from": ("train --init-from {run} --config hnet_1stage_tiny --workdir {out} --no-progress", ("lm", "params")),
  "classify-init": (
    "classify train --init-from {run} --data {records} --test {records} --out {out} --no-progress",
    ("lm", "params"),
  ),
  "classify-eval": ("classify eval --workdir {run} --data {records}", ("classifier",)),
  "classify-predict": ("classify predict --workdir {run} --data {records}", ("classifier",)),
  "mrt5-eval": ("mrt5 eval --workdir {run} --no-progress", ("mrt5",)),
}
# commands that write a run: into a new or empty directory, or (resuming) a run of their own kind
WRITERS = {
  "train": ("train --workdir {run} --config hnet_1stage_tiny --no-progress", ("lm", "empty", "junk", "missing")),
  "mrt5-train": ("mrt5 train --workdir {run} --config mrt5_tiny --no-progress", ("mrt5", "empty", "junk", "missing")),
  "classify-train": (
    "classify train --config hnet_1stage_tiny --data {records} --test {records} --out {run} --no-progress",
    ("empty", "junk", "missing"),
  ),
  "import": ("import --weights {records} --out {run}", ("empty", "missing")),
}
CASES = [
  (name, kind) for table in (READERS, WRITERS) for name, (_, ok) in table.items() for kind in KINDS if kind not in ok
]


@pytest.mark.parametrize("name, kind", CASES)
def test_a_run_of_another_kind_is_one_line_and_nothing_changes(kinds, tmp_path, capsys, name, kind):
  run = tmp_path / kind
  if (kinds / kind).is_dir():
    shutil.copytree(kinds / kind, run)
  elif (kinds / kind).exists():
    shutil.copy(kinds / kind, run)
  before = snapshot(tmp_path)
  line = {**READERS, **WRITERS}[name][0].format(run=run, out=tmp_path / "out", records=kinds / "records.jsonl")
  assert main(line.split()) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("chunklm: error:"), err
  assert str(run) in err or "does not exist" in err, err
  assert snapshot(tmp_path) == before
  assert not (tmp_path / "out").exists() and not (tmp_path / "out.html").exists()


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("lm", "params")])
def test_the_python_api_refuses_other_kinds_with_its_own_error(kinds, kind):
  with pytest.raises(UserError, match="language-model run"):
    load(kinds / kind)


@pytest.mark.parametrize(
  "flag, target",
  [
    ("--json", "metrics.jsonl"),
    ("--json", "config.yaml"),
    ("--out", "checkpoints/4"),
    ("--out", "checkpoints"),
    ("--plot", "loss.png"),
  ],
)
def test_an_output_never_replaces_a_runs_own_file(kinds, tmp_path, capsys, flag, target):
  run = shutil.copytree(kinds / "lm", tmp_path / "run")
  before = snapshot(run)
  clf = shutil.copytree(kinds / "classifier", tmp_path / "clf")
  args = {
    "--json": ["eval", "--workdir", str(run)],
    "--out": ["classify", "predict", "--workdir", str(clf), "--data", str(kinds / "records.jsonl")],
    "--plot": ["classify", "eval", "--workdir", str(clf), "--data", str(kinds / "records.jsonl")],
  }[flag]
  assert main([*args, flag, str(run / target)]) == 2
  err = capsys.readouterr().err
  assert f"would replace {target.split('/')[0]} of the run in {run}" in err
  assert snapshot(run) == before


@pytest.fixture
def read_only_run(kinds, tmp_path):
  """A run on a read-only bind mount (needs the rights to mount: skipped without them)."""
  src, mnt = tmp_path / "src", tmp_path / "mnt"
  shutil.copytree(kinds / "lm", src / "run")
  mnt.mkdir()
  mounted = subprocess.run(["mount", "--bind", str(src), str(mnt)], capture_output=True)
  if mounted.returncode != 0:
    pytest.skip("cannot mount here (not root)")
  try:
    if subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], capture_output=True).returncode != 0:
      pytest.skip("cannot remount read-only here")
    yield mnt / "run"
  finally:
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_run_on_a_read_only_mount_is_one_line_for_every_writer(read_only_run, capsys):
  run = read_only_run
  for args, message in [
    (["train", "--workdir", str(run), "--config", str(run / "config.yaml"), "--no-progress"], "cannot write into"),
    (["eval", "--workdir", str(run), "--json", str(run.parent / "e.json")], "a read-only file system"),
    (["export", "--workdir", str(run), "--out", str(run.parent / "x.safetensors")], "a read-only file system"),
    (["import", "--weights", str(run / "config.yaml"), "--out", str(run.parent / "imp")], "a read-only file system"),
  ]:
    assert main(args) == 2, args
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_a_damaged_config_is_named_not_called_not_a_run(tmp_path, capsys):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.yaml").write_text("model: [unclosed\n")
  assert main(["eval", "--workdir", str(run)]) == 2
  assert f"invalid YAML in {run / 'config.yaml'} (line 2" in capsys.readouterr().err
