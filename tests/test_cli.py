"""The command line: an end-to-end smoke test through the real entry point, and every bad input."""

import ast
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from chunklm.cli import main
from chunklm.cli.backends import only_cpu_is_possible
from chunklm.errors import UserError
from conftest import TINY

SET = [a for o in TINY for a in ("--set", o)]


def run_cli(capsys, *argv):
  code = main(list(argv))
  out, err = capsys.readouterr()
  return code, out, err


@pytest.mark.slow  # CI budget: CI runs the README's train/eval/generate lines through the same entry (pytest -m readme)
def test_smoke_train_eval_generate(tmp_path, corpus_dir):
  wd = tmp_path / "run"
  cmd = [sys.executable, "-m", "chunklm.cli"]
  train = subprocess.run(
    cmd
    + [
      "train",
      "--config",
      "byte_transformer_tiny",
      *SET,
      "--data",
      str(corpus_dir),
      "--workdir",
      str(wd),
      "--no-progress",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert train.returncode == 0, train.stderr
  assert "valid bits per byte" in train.stdout and "order-0 byte entropy" in train.stdout
  assert "checkpoint" in train.stdout and (wd / "loss.png").exists()
  ev = subprocess.run(
    cmd + ["eval", "--workdir", str(wd), "--data", str(corpus_dir / "doc000.py")],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert ev.returncode == 0, ev.stderr
  n = len((corpus_dir / "doc000.py").read_bytes())
  assert f"bits per byte over {n:,} bytes" in ev.stdout
  gen = subprocess.run(
    cmd + ["generate", "--workdir", str(wd), "--prompt", "def ", "--max-bytes", "12", "--seed", "3"],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert gen.returncode == 0, gen.stderr
  assert gen.stdout.startswith("def ")


@pytest.mark.parametrize(
  "sub", ["train", "eval", "generate", "compare", "tokenizer", "robustness", "boundaries", "report", "info", "bench"]
)
def test_every_subcommand_has_help(capsys, sub):
  with pytest.raises(SystemExit) as e:
    main([sub, "--help"])
  assert e.value.code == 0
  assert len(capsys.readouterr().out) > 200


def _bad(tmp_path, corpus_dir):
  gz = tmp_path / "broken.txt.gz"
  gz.write_bytes(b"not gzip")
  empty_dir = tmp_path / "empty_dir"
  empty_dir.mkdir()
  (tmp_path / "empty.txt").write_text("")
  (tmp_path / "short.txt").write_text("short")
  (tmp_path / "bad.yaml").write_text("model: [1, 2\n")
  deflate = bytearray(gzip.compress(b"some text " * 500))
  deflate[20:40] = bytes(range(200, 220))  # header and CRC intact, the compressed stream garbled
  (tmp_path / "deflate.txt.gz").write_bytes(bytes(deflate))
  return {
    "missing data": (["--data", str(tmp_path / "nope")], "no such file or directory"),
    "missing valid data": (["--valid-data", str(tmp_path / "nope")], "--valid-data " + str(tmp_path / "nope")),
    "unreadable data": (["--data", str(gz)], "cannot read"),
    "corrupt deflate data": (["--data", str(tmp_path / "deflate.txt.gz")], "cannot read"),
    "non-finite setting": (["--set", "train.lr=inf"], "train.lr: must be a finite number"),
    "model too big": (["--set", "model.d_model=65536"], "GiB per device"),
    "no matching files": (["--data", str(empty_dir)], "no files matching"),
    "empty corpus": (["--data", str(tmp_path / "empty.txt"), "--valid-data", str(corpus_dir)], "is empty"),
    "shorter than a window": (
      ["--data", str(tmp_path / "short.txt"), "--valid-data", str(corpus_dir)],
      "shorter than one window",
    ),
    "invalid yaml": (["--config", str(tmp_path / "bad.yaml")], "invalid YAML"),
    "unknown key": (["--set", "train.stepz=3"], "unknown key 'train.stepz'; valid keys in train: steps"),
    "wrong type": (["--set", "train.steps=many"], "expected int"),
    "non-positive size": (["--set", "model.d_model=0"], "must be positive"),
    "bad set syntax": (["--set", "train.steps"], "expected KEY=VALUE"),
  }


@pytest.mark.parametrize(
  "case",
  [
    "missing data",
    "missing valid data",
    "unreadable data",
    "corrupt deflate data",
    "non-finite setting",
    "model too big",
    "no matching files",
    "empty corpus",
    "shorter than a window",
    "invalid yaml",
    "unknown key",
    "wrong type",
    "non-positive size",
    "bad set syntax",
  ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, corpus_dir, capsys, case):
  extra, message = _bad(tmp_path, corpus_dir)[case]
  wd = tmp_path / "run"
  args = ["train", "--config", "byte_transformer_tiny", "--no-progress", "--workdir", str(wd)] + SET + extra
  if "--data" not in extra:
    args += ["--data", str(corpus_dir)]
  code, _, err = run_cli(capsys, *args)
  assert code == 2
  assert err.count("\n") == 1 and err.startswith("chunklm: error: ") and message in err, err
  assert not wd.exists()


def test_incompatible_workdir_and_missing_workdir(tmp_path, corpus_dir, capsys):
  wd = tmp_path / "run"
  base = [
    "train",
    "--config",
    "byte_transformer_tiny",
    "--no-progress",
    "--workdir",
    str(wd),
    "--data",
    str(corpus_dir),
  ] + SET
  assert run_cli(capsys, *base, "--set", "train.steps=2")[0] == 0
  code, _, err = run_cli(capsys, *base, "--set", "model.n_heads=4")
  assert code == 2 and "another model or optimizer state (model.n_heads: [2] -> [4])" in err
  code, _, err = run_cli(capsys, "eval", "--workdir", str(tmp_path / "nothing"))
  assert code == 2 and "does not exist; this takes a language-model run" in err
  one_doc = ["--data", str(corpus_dir / "doc000.py")]
  code, out, _ = run_cli(capsys, "eval", "--workdir", str(wd), *one_doc, "--no-progress", "--set", "kernels.impl=xla")
  assert code == 0 and "with kernels.impl=xla on" in out
  code, _, err = run_cli(capsys, "eval", "--workdir", str(wd), *one_doc, "--set", "model.d_model=[48]")
  assert code == 2 and "changes the trained model's parameters" in err
  code, _, err = run_cli(capsys, "generate", "--workdir", str(wd), "--top-p", "0")
  assert code == 2 and "--top-p" in err


def test_bench_train_prints_its_figures(capsys, corpus_dir, tmp_path):
  assert (
    main(
      [
        "bench",
        "train",
        "--config",
        "byte_transformer_tiny",
        "--set",
        "model.d_model=32",
        "--set",
        "data.seq_len=32",
        "--set",
        "data.min_doc_bytes=4",
        "--set",
        f"data.sources=[{corpus_dir}]",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--json",
        str(tmp_path / "out" / "bench.json"),
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert "step (median of 2)" in out and "training bytes/s" in out and "train FLOPs/byte" in out
  figures = json.loads((tmp_path / "out" / "bench.json").read_text())  # what was printed, for scripts
  assert figures["params"] > 0 and figures["bytes_per_s"] > 0 and "machine" in figures


# One grammar: each shared option means the same on every command that can use it.
SHARED = {
  "--set": [
    "train",
    "eval",
    "generate",
    "compare",
    "boundaries",
    "robustness",
    "tokenizer train",
    "info",
    "bench train",
    "bench generate",
    "bench capacity",
    "bench compile",
  ],
  "--data": ["train", "eval", "compare", "boundaries", "robustness", "tokenizer train"],
  "--max-bytes": ["eval", "boundaries", "robustness", "bench capacity"],  # leading data bytes (generate's: output)
  "--seed": ["generate", "report", "robustness", "bench generate"],
  "--out": ["compare", "boundaries", "report", "robustness", "tokenizer train"],
  "--json": [
    "eval",
    "compare",
    "boundaries",
    "robustness",
    "bench train",
    "bench generate",
    "bench kernels",
    "bench capacity",
    "bench compile",
  ],
  "--no-progress": ["train", "eval", "compare", "robustness"],
  "--progress-every": ["train", "eval", "compare", "robustness"],
}


def _option_groups(sub: str) -> dict[str, str]:
  """{option: the title of its help group} of a subcommand."""
  from chunklm.cli.parser import build_parser

  p = build_parser()
  for word in sub.split():
    p = next(a for a in p._actions if a.dest in ("command", "tokenizer", "bench")).choices[word]
  return {o: g.title for g in p._action_groups for a in g._group_actions for o in a.option_strings}


@pytest.mark.parametrize("option", list(SHARED))
def test_shared_options_are_offered_alike(option):
  groups = {sub: _option_groups(sub).get(option) for sub in SHARED[option]}
  missing = [sub for sub, g in groups.items() if g is None]
  assert not missing, f"{option} missing from: {missing}"
  if option != "--seed":  # sampling/perturbation seeds stay beside the options they go with
    assert len(set(groups.values())) == 1, groups  # the same help section everywhere


def test_progress_interval_setting(monkeypatch):
  from chunklm import progress

  monkeypatch.setenv("CHUNKLM_PROGRESS_EVERY", "2.5")
  assert progress.every() == 2.5
  progress.set_every(7)
  assert progress.every() == 7
  progress.set_every(None)
  monkeypatch.setenv("CHUNKLM_PROGRESS_EVERY", "soon")
  with pytest.raises(UserError, match="CHUNKLM_PROGRESS_EVERY='soon'"):
    progress.every()
  with pytest.raises(UserError, match="--progress-every must be a positive"):
    progress.set_every(0)


def test_progress_off_a_terminal_is_plain_lines(capsys):
  from chunklm import progress

  progress.set_every(1e-9)
  try:
    for _ in progress.bar(range(3), enabled=True, desc="eval", total=3):
      pass
  finally:
    progress.set_every(None)
  err = capsys.readouterr().err
  assert "\r" not in err and err.splitlines()[0].startswith("eval:   0%") and len(err.splitlines()) >= 3


def test_command_line_bytes_and_escapes():
  from chunklm.cli.generate import escaped_bytes

  assert escaped_bytes(r"\n;", "--stop") == b"\n;"
  assert escaped_bytes(r"\u20ac", "--stop") == escaped_bytes("\u20ac", "--stop") == "\u20ac".encode()
  with pytest.raises(UserError, match=r"--stop '\\\\x': truncated"):
    escaped_bytes("\\x", "--stop")


@pytest.mark.parametrize(
  "sub",
  [
    ["train"],
    ["eval"],
    ["generate"],
    ["compare"],
    ["boundaries"],
    ["report"],
    ["robustness"],
    ["tokenizer", "train"],
    ["info"],
    ["bench", "train"],
    ["bench", "kernels"],
    ["bench", "generate"],
    ["bench", "capacity"],
    ["bench", "compile"],
  ],
)
def test_every_bad_argument_is_one_line(capsys, sub):
  with pytest.raises(SystemExit) as e:
    main([*sub, "--no-such-flag"])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count("\n") == 1, err
  assert err.startswith(f"chunklm {' '.join(sub)}: error: ") and err.rstrip().endswith("--help)")


def test_version(capsys):
  with pytest.raises(SystemExit) as e:
    main(["--version"])
  assert e.value.code == 0 and capsys.readouterr().out.startswith("chunklm 0.")


def test_flags_load_no_jax_and_every_command_has_one_body():
  probe = (
    "import sys; from chunklm.cli.parser import build_parser, _leaves; "
    "print(sorted(p.get_default('body') for p in _leaves(build_parser()))); print('jax' in sys.modules)"
  )
  out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
  assert out[1] == "False", "the parser modules (cli/parser.py, options.py, flags/) must not import jax"
  from chunklm.cli.commands import COMMANDS

  assert json.loads(out[0].replace("'", '"')) == sorted(COMMANDS)


def test_cli_functions_are_short():
  cli = Path(__file__).resolve().parents[1] / "chunklm" / "cli"
  long = [
    f"{p.relative_to(cli)}:{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
    for p in sorted(cli.rglob("*.py"))
    for fn in ast.walk(ast.parse(p.read_text()))
    if isinstance(fn, ast.FunctionDef) and fn.end_lineno - fn.lineno + 1 > 80
  ]
  assert not long, f"split these functions (over 80 lines): {long}"


def test_quiet_and_verbose_before_or_after_the_command(capsys, tmp_path, corpus_dir):
  from chunklm import logs
  from chunklm.cli.parser import build_parser

  p = build_parser()
  assert p.parse_args(["info"]).verbosity is None
  assert p.parse_args(["--quiet", "info"]).verbosity == "quiet"
  assert p.parse_args(["bench", "train", "--verbose"]).verbosity == "verbose"
  assert p.parse_args(["--quiet", "mrt5", "eval", "--workdir", "x", "--verbose"]).verbosity == "verbose"
  with pytest.raises(SystemExit):
    p.parse_args(["info", "--quiet", "--verbose"])
  assert "not allowed with argument" in capsys.readouterr().err
  args = ["tokenizer", "train", "--data", str(corpus_dir), "--set", "data.valid_fraction=0.3", "--vocab-size", "300"]
  try:
    code, out, _ = run_cli(capsys, *args, "--out", str(tmp_path / "a.model"), "--quiet")
    assert code == 0 and "bytes per token" in out and "data:" not in out and "wrote" not in out  # results only
    code, out, _ = run_cli(capsys, *args, "--out", str(tmp_path / "b.model"))
    assert code == 0 and "bytes per token" in out and "data:" in out
  finally:
    logs.set_verbosity("normal")


@pytest.mark.parametrize(
  ("env", "libtpu", "plugins", "google_pci", "cpu"),
  [
    ({}, True, False, False, True),  # libtpu on a CPU host: jax would fall back to the CPU after libtpu's warnings
    ({}, False, False, False, False),  # no libtpu: nothing to skip
    ({}, True, False, True, False),  # a TPU host
    ({}, True, True, False, False),  # a CUDA (or other) plugin: jax chooses among more than the CPU
    ({"JAX_PLATFORMS": "tpu"}, True, False, False, False),  # the user's choice stands
  ],
)
def test_the_cli_asks_for_the_cpu_only_where_jax_could_end_nowhere_else(env, libtpu, plugins, google_pci, cpu):
  assert only_cpu_is_possible(env, libtpu, plugins, google_pci) is cpu
