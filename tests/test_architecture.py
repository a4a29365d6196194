"""The architecture rules that import-linter (pyproject.toml, run by `make test`) does not check: short files and
functions, the workdir's file names spelled in one module (run/workdir.py), and imports at the top of every module (an import inside a function hides a dependency), except for optional heavy
extras that a plain install does not have and two start-up deferrals at the very top of the graph, where import-linter
still sees them: the package root (importing chunklm.config must not load jax) and the CLI (`--help` and flag
errors answer in a tenth of a second instead of seconds)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "chunklm"
MAX_LINES = 400
OPTIONAL_EXTRAS = {"torch", "libtpu", "lm_eval"}  # may be imported where used, with a comment saying why
STARTUP_DEFERRED = {
  "__init__.py": {"chunklm.eval.generate", "chunklm.api"},
  "cli/__init__.py": {"chunklm.cli.commands"},
}


def _modules():
  return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_400_lines():
  long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
  assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def _imports_inside_functions(path: Path):
  tree = ast.parse(path.read_text())
  lines = path.read_text().splitlines()
  for fn in ast.walk(tree):
    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      for node in ast.walk(fn):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
          names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
          top = {(n or "").split(".")[0] for n in names}
          deferred = set(names) <= STARTUP_DEFERRED.get(_name(path), set())
          commented = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
          if not ((top <= OPTIONAL_EXTRAS or deferred) and commented):
            yield f"{path.relative_to(PACKAGE)}:{node.lineno}: {lines[node.lineno - 1].strip()}"


def _name(path: Path) -> str:
  return str(path.relative_to(PACKAGE))


def test_imports_are_at_module_level():
  found = [hit for p in _modules() for hit in _imports_inside_functions(p)]
  assert not found, "move these imports to the top of their module:\n" + "\n".join(found)


def test_the_rule_finds_an_import_inside_a_function(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def f():\n  import json\n  return json\n\ndef g():\n  import torch  # optional extra\n")
  global PACKAGE
  saved, PACKAGE = PACKAGE, tmp_path
  try:
    assert [h.split(":")[1] for h in _imports_inside_functions(bad)] == ["2"]
  finally:
    PACKAGE = saved


MAX_FUNCTION_LINES = 80


def _long_functions(root: Path):
  for path in sorted(root.rglob("*.py")):
    for fn in ast.walk(ast.parse(path.read_text())):
      if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES:
        yield f"{path.relative_to(root)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"


def test_no_function_is_over_80_lines():
  long = list(_long_functions(PACKAGE))
  assert not long, f"split these functions (over {MAX_FUNCTION_LINES} lines):\n" + "\n".join(long)


def test_the_function_rule_finds_a_long_function(tmp_path):
  (tmp_path / "m.py").write_text("def f():\n" + "  x = 1\n" * MAX_FUNCTION_LINES + "\ndef g():\n  pass\n")
  assert [hit.split(" ")[1] for hit in _long_functions(tmp_path)] == ["f"]


def _layout_names():
  tree = ast.parse((PACKAGE / "run" / "workdir.py").read_text())
  return {
    node.value.value
    for node in tree.body
    if isinstance(node, ast.Assign)
    and node.targets[0].id.isupper()
    and isinstance(node.value, ast.Constant)
    and isinstance(node.value.value, str)
  }


def _spelled_layout_names(root: Path, names: set[str]):
  for path in sorted(root.rglob("*.py")):
    if path.relative_to(root) == Path("run/workdir.py"):
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
        yield f"{path.relative_to(root)}:{node.lineno}: {node.value!r}"


def test_the_workdir_layout_is_spelled_in_one_module():
  names = _layout_names()
  assert {"config.yaml", "checkpoints", "metrics.jsonl", "cache", ".lock"} <= names
  found = list(_spelled_layout_names(PACKAGE, names))
  assert not found, "ask run/workdir.py: RunDir for these paths:\n" + "\n".join(found)


def test_the_layout_rule_finds_a_spelled_name(tmp_path):
  (tmp_path / "m.py").write_text(
    'from pathlib import Path\n\n"""config.yaml in prose is fine"""\np = Path("run") / "metrics.jsonl"\n'
  )
  assert [hit.split(":")[1] for hit in _spelled_layout_names(tmp_path, {"metrics.jsonl", "config.yaml"})] == ["4"]
