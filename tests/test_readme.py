"""The README's usage block is documentation that must keep working: every `chunklm ...` line parses with today's
argument parser, and every config and comparison spec it names exists (what it costs to run each is in the other
tests; this one catches a renamed flag, subcommand, config or spec in milliseconds)."""

import json
import re
import shlex
from pathlib import Path

import pytest

from chunklm.cli import main
from chunklm.cli.parser import build_parser
from chunklm.config import load_config
from chunklm.experiments.compare import load_spec
from chunklm.seq2seq.trainer import load_mrt5_config
from chunklm.train.mergedna_trainer import load_mergedna_config

ROOT = Path(__file__).resolve().parents[1]


def usage_commands(readme: str) -> list[str]:
  """The `chunklm ...` lines of the first code block after '## Usage', without trailing comments."""
  block = re.search(r"## Usage\s+```\n(.*?)```", readme, re.S)
  assert block, "the README has no code block under ## Usage"
  lines = []
  for line in block.group(1).splitlines():
    words = shlex.split(line, comments=True)
    if words and Path(words[0]).name == "chunklm":
      lines.append(words[1:])
  return lines


def check(words: list[str]) -> None:
  args = build_parser().parse_args(words)
  if words[0] == "mrt5" and getattr(args, "config", None):
    load_mrt5_config(args.config)
  elif words[0] == "mergedna" and getattr(args, "config", None):
    load_mergedna_config(args.config)
  elif getattr(args, "config", None) and not str(args.config).startswith("configs/"):
    load_config(args.config, [])
  elif getattr(args, "config", None):
    load_config(str(ROOT / args.config), [])
  if getattr(args, "spec", None):
    load_spec(args.spec)


COMMANDS = usage_commands((ROOT / "README.md").read_text())


def test_the_usage_block_is_found():
  assert len(COMMANDS) >= 15


@pytest.mark.parametrize("words", [c for c in COMMANDS if c != ["--help"]], ids=lambda w: " ".join(w[:3]))
def test_every_usage_line_parses_and_names_what_exists(words):
  check(words)


def test_a_broken_line_fails(capsys):
  with pytest.raises(SystemExit):
    check(["train", "--confg", "hnet_1stage_tiny"])
  with pytest.raises(Exception, match="not found"):
    check(["train", "--config", "hnet_3stage_tiny"])


# --- Every usage line, run (marker `readme`: CI runs these after the default suite; `pytest -m readme` here) ---
#
# Each line runs in README order through the real entry point, in one workspace that holds what the lines name: a
# corpus/ (train.txt, valid.txt and .py files), held_out.txt, configs/, and runs/default made first as `make run`
# makes it. The substitutions keep every command itself: the built-in corpus is a few standard-library modules
# instead of all of them, and each subcommand gets flags that only make it small (FAST); nothing else changes.

STDLIB = Path(__import__("sysconfig").get_paths()["stdlib"])
BUILTIN = [
  "argparse.py",
  "ast.py",
  "calendar.py",
  "csv.py",
  "difflib.py",
  "fractions.py",
  "heapq.py",
  "inspect.py",
  "pathlib.py",
  "shutil.py",
  "string.py",
  "textwrap.py",
  "typing.py",
]
TRAIN_FAST = [
  "--set",
  "train.steps=2",
  "--set",
  "train.warmup_steps=1",
  "--set",
  "train.checkpoint_every=2",
  "--set",
  "eval.max_bytes=2048",
  "--set",
  "eval.final_max_bytes=2048",
  "--set",
  "eval.sample_bytes=16",
  "--no-progress",
]
FAST = {
  "train": TRAIN_FAST,
  "eval": ["--max-bytes", "2048", "--no-progress"],
  "generate": ["--max-bytes", "8"],
  "compare": ["--budget-bytes", "8192", "--no-progress"],
  "robustness": ["--max-bytes", "1024", "--no-progress"],
  "boundaries": ["--max-bytes", "2048"],
  "report": ["--samples", "1"],
  "bench train": ["--steps", "1", "--warmup", "0"],
  "bench generate": ["--units", "4", "--repeats", "1"],
  "bench score": ["--requests", "32", "--repeats", "1"],
  "tasks make": ["--n", "8", "--no-progress"],
  "lm-eval": ["--limit", "4", "--no-progress"],
  "bench kernels": ["--no-step", "--repeats", "1", "--warmup", "0", "--dtype", "float32"],
  "bench capacity": ["--max-bytes", "8192"],
  "classify train": ["--steps", "2", "--eval-every", "2", "--seq-len", "64", "--no-progress"],
  "mrt5 train": ["--set", "train.steps=2", "--set", "train.checkpoint_every=2", "--no-progress"],
  "mrt5 bench": ["--repeats", "1"],
  "mergedna train": ["--set", "train.steps=2", "--set", "train.checkpoint_every=2", "--no-progress"],
  "mergedna boundaries": ["--max-bases", "2048"],
  "data prepare": ["--no-progress", "--workers", "1"],
}


def _key(words: list[str]) -> str:
  families = ("bench", "tokenizer", "classify", "mrt5", "mergedna", "data", "tasks")
  return " ".join(words[:2]) if words[0] in families else words[0]


def promised_files(words: list[str]) -> list[Path]:
  """The files a line says it writes (relative to the workspace)."""
  args = build_parser().parse_args(words)
  key = _key(words)
  if key == "train":
    wd = Path(args.workdir)
    return [wd / "config.yaml", wd / "metrics.jsonl", wd / "loss.png", wd / "checkpoints"]
  if key == "compare":
    out = Path(args.out or Path("runs") / "compare" / Path(args.spec).stem)
    return [out / "report.md", out / "report.html"]
  if key == "tokenizer train":
    return [Path(args.out)]
  if key == "data prepare":
    return [Path(args.out) / "manifest.json"]
  if key == "robustness":
    return [Path(args.out or args.workdir[0]) / f"robustness.{ext}" for ext in ("md", "csv", "png")]
  if key == "boundaries":
    return [Path(args.out or Path(args.workdir) / "boundaries")]
  if key == "report":
    return [Path(args.out or Path(args.workdir[0]) / "report.html")]
  if key == "classify train":
    return [Path(args.out) / "classify.json", Path(args.out) / "confusion.png"]
  if key == "classify eval":
    return [Path(args.plot)]
  if key == "tasks make":
    return [Path(args.out) / "README.md", Path(args.out) / "cloze"]
  if key == "lm-eval":
    return [Path(args.workdir) / "lm_eval"]
  if key == "mergedna train":
    wd = Path(args.workdir)
    return [wd / "config.yaml", wd / "metrics.jsonl", wd / "eval.json", wd / "checkpoints"]
  if key == "mergedna boundaries":
    return [Path(args.out) / "boundaries.md", Path(args.out) / "tokens.png"]
  return []


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  root = tmp_path_factory.mktemp("readme")
  builtin = root / "stdlib"
  builtin.mkdir()
  for name in BUILTIN:
    (builtin / name).write_bytes((STDLIB / name).read_bytes())
  corpus = root / "corpus"
  corpus.mkdir()
  (corpus / "train.txt").write_bytes(b"".join((STDLIB / n).read_bytes() for n in BUILTIN[:9]))
  (corpus / "valid.txt").write_bytes((STDLIB / "textwrap.py").read_bytes())
  for name in ("heapq.py", "string.py", "csv.py", "fractions.py"):
    (corpus / name).write_bytes((STDLIB / name).read_bytes())
  (root / "held_out.txt").write_bytes((STDLIB / "shutil.py").read_bytes())
  genomes, rng = root / "genomes", __import__("random").Random(0)
  genomes.mkdir()
  for name, n in (("train.fa", 3), ("valid.fa", 1)):  # random genomes of 4,096 bases
    (genomes / name).write_text("".join(f">g{i}\n{''.join(rng.choices('ACGT', k=4096))}\n" for i in range(n)))
  with (root / "dna_train.jsonl").open("w") as f, (root / "dna_test.jsonl").open("w") as g:
    for i in range(40):  # two classes: GC-rich and AT-rich reads
      bases = "GCGCAT" if i % 2 else "ATATGC"
      (f if i < 30 else g).write(json.dumps({"text": "".join(rng.choices(bases, k=64)), "label": bases[:2]}) + "\n")
  for name, files in (("train.jsonl", BUILTIN[::2]), ("test.jsonl", BUILTIN[1::2])):  # both hold both classes
    with (root / name).open("w") as f:  # label: the module name's first letter
      for n in files:
        text = (STDLIB / n).read_text()
        f.writelines(
          json.dumps({"text": text[i : i + 64], "label": "a-h" if n < "i" else "i-z"}) + "\n" for i in range(0, 640, 64)
        )
  (root / "configs").symlink_to(ROOT / "configs")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr("chunklm.data.sources.stdlib_dir", lambda: builtin)
    mp.chdir(root)
    assert main(["train", "--workdir", "runs/default", *TRAIN_FAST]) == 0  # the README's `make run`
    yield root


RUNNABLE = [c for c in COMMANDS if c and c[0] != "--help"]


@pytest.mark.readme
@pytest.mark.parametrize("words", RUNNABLE, ids=lambda w: " ".join(w[:4]))
def test_every_usage_line_runs_and_writes_what_it_promises(words, workspace, capsys):
  if _key(words) == "bench compile":
    pytest.importorskip("libtpu", reason="bench compile needs the tpu extra (pip install 'chunklm[tpu]')")
  code = main([*words, *FAST.get(_key(words), [])])
  out, err = capsys.readouterr()
  assert code == 0, f"exit {code}: {err[-2000:]}"
  assert out.strip(), "printed nothing"
  missing = [str(p) for p in promised_files(words) if not (workspace / p).exists()]
  assert not missing, f"promised but not written: {missing}"


def test_the_runner_covers_every_line_but_help():
  assert len(RUNNABLE) == len(COMMANDS) - 1
  assert {_key(w) for w in RUNNABLE} - set(FAST) <= {
    "tokenizer train",
    "info",
    "bench compile",
    "classify eval",
    "export",
    "import",
  }  # cheap as they are
