"""The architecture rules that import-linter (pyproject.toml, run by `make test`) does not check: short files and
imports at the top of every module (an import inside a function hides a dependency), except for optional heavy
extras that a plain install does not have and two start-up deferrals at the very top of the graph, where import-linter
still sees them: the package root (importing chunklm.config must not load jax) and the CLI (`--help` and flag
errors answer in a tenth of a second instead of seconds)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "chunklm"
MAX_LINES = 400
OPTIONAL_EXTRAS = {"torch", "libtpu"}  # may be imported where used, with a comment saying why
STARTUP_DEFERRED = {"__init__.py": {"chunklm.eval.generate", "chunklm.api"}, "cli/__init__.py": {"chunklm.cli.commands"}}


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
