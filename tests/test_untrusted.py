"""config.untrusted: YAML and JSON that chunklm did not write load within bounds (size, nesting, expanded aliases),
every refusal one line; and the JSONL record readers (classify, MrT5 seq2seq) answer the same damaged lines alike."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from chunklm.classify.records import read_records
from chunklm.config import MAX_TEXT, Refused, load_json, load_yaml, untrusted, utf8
from chunklm.config.untrusted import MAX_NODES, expanded_nodes
from chunklm.errors import UserError
from chunklm.seq2seq.batches import read_pairs


def alias_bomb(levels: int = 9) -> str:
  """A few hundred bytes: nine lists of nine aliases to the list before, 9**9 values once expanded."""
  lines = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
  lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
  return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once():
  text = alias_bomb()
  assert len(text) < 500
  start = time.perf_counter()
  with pytest.raises(Refused, match=r"expand to more than 100,000 values \(an alias bomb\?\) \(line \d+") as e:
    load_yaml(text)
  assert time.perf_counter() - start < 1.0 and not e.value.syntax
  assert load_yaml(alias_bomb(5))["l4"][0][0][0][0] == ["x"] * 9  # 9**5 values: under the bound, loads as before


def test_scalar_aliases_merges_and_bounds():
  assert load_yaml("a: &x 5\nb: *x\nc: [*x, *x]\n") == {"a": 5, "b": 5, "c": [5, 5]}
  merged = load_yaml("base: &b {lr: 1, steps: 2}\nrun:\n  <<: *b\n  steps: 3\n")
  assert merged["run"] == {"lr": 1, "steps": 3}
  assert load_yaml("") is None
  with pytest.raises(Refused, match="alias inside its own anchor"):
    load_yaml("a: &a [1, *a]\n")
  with pytest.raises(Refused, match="nested more than 100 levels"):
    load_yaml("a: " + "[" * 150 + "]" * 150)
  with pytest.raises(Refused, match="nested more than 100 levels"):  # depth made by aliases, not by the text
    load_yaml("a: &a " + "[" * 60 + "1" + "]" * 60 + "\nb: " + "[" * 60 + "*a" + "]" * 60 + "\n")
  with pytest.raises(Refused, match=r"over the 1,048,576 allowed"):
    load_yaml("a: " + "x" * MAX_TEXT)
  start = time.perf_counter()
  with pytest.raises(Refused, match="YAML holding more than 100,000 values"):  # counted before composing
    load_yaml("[" + "1," * (MAX_NODES + 10) + "1]")
  assert time.perf_counter() - start < 3.0
  with pytest.raises(Refused, match=r"invalid YAML \(line 2, column 5\): mapping values are not allowed") as e:
    load_yaml("a: 1\nb: c: d\n")
  assert e.value.syntax and e.value.mark == " (line 2, column 5)"
  with pytest.raises(Refused, match=r"a value that does not convert \(month must be in 1..12\)"):
    load_yaml("start: 2020-13-01\n")
  with pytest.raises(Refused, match="could not determine a constructor"):
    load_yaml("a: !!python/object/apply:os.system [echo]\n")


def test_the_pure_python_loader_keeps_the_bounds(monkeypatch):
  """Where PyYAML has no libyaml (whose parser stops at 1,000 levels itself): the pure-Python composer recurses per
  level, so the depth is refused in the pass over the events, before composing."""
  monkeypatch.setattr(untrusted, "_LOADER", yaml.SafeLoader)
  assert load_yaml("a: &x [1]\nb: *x\n") == {"a": [1], "b": [1]}
  with pytest.raises(Refused, match="an alias bomb"):
    load_yaml(alias_bomb())
  with pytest.raises(Refused, match=r"YAML nested more than 100 levels deep \(line 1, column 10[0-9]\)"):
    load_yaml("a: " + "[" * 5000 + "]" * 5000)


def test_expanded_nodes_counts_each_shared_node_once_per_use():
  node = yaml.compose("a: &a [1, 2]\nb: [*a, *a]\n")
  assert expanded_nodes(node) == 1 + (1 + 3) + (1 + 1 + 3 + 3)  # the mapping; key a, its list; key b, two copies


def test_json_bounds():
  assert load_json(b'\xef\xbb\xbf{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}  # a UTF-8 byte order mark is fine
  assert load_json('{"a": "\\ud800"}') == {"a": "\ud800"}  # lone surrogates load; utf8() refuses them
  for text, message in [
    ("[" * 150 + "]" * 150, "nested more than 100 levels"),
    ("[" * 100_000 + "]" * 100_000, "nested more than 100 levels"),  # deeper than Python's recursion limit
    (b'{"a": "\xff"}', r"not UTF-8 text \(byte 0xff at offset 7\)"),
    ('{"a": ' + "9" * 5000 + "}", "a number Python cannot read"),
    ('{"a": 1,}', r"invalid JSON \(line 1, column 9\): "),
    ('"' + "x" * MAX_TEXT + '"', "over the 1,048,576 allowed"),
  ]:
    with pytest.raises(Refused, match=message) as e:
      load_json(text)
    assert "\n" not in str(e.value)
  assert len(load_json('"' + "x" * MAX_TEXT + '"', limit=None)) == MAX_TEXT
  with pytest.raises(Refused, match=r"field \"t\" holds a lone surrogate \(\\ud800\)"):
    utf8("a\ud800", 'field "t"')


BAD_LINES = [
  (b'{"text": "\xff", "label": 1, "input": "\xff", "target": "b"}', r"not UTF-8 text"),
  (b'{"text": "a\\ud800", "label": 1, "input": "a\\ud800", "target": "b"}', r"holds a lone surrogate \(\\ud800\)"),
  (b'{"x": ' + b"[" * 500 + b"]" * 500 + b"}", "JSON nested more than 100 levels deep"),
  (b'{"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "JSON nested more than 100 levels deep"),
  (b'{"text": "a", ', "invalid JSON"),
  (b"[1, 2]", "not a JSON object"),
]


@pytest.mark.parametrize("line, message", BAD_LINES, ids=["utf8", "surrogate", "deep", "deeper", "json", "array"])
def test_classify_and_seq2seq_records_refuse_damaged_lines_alike(tmp_path, line, message):
  good = {"text": "a", "label": "x", "input": "a", "target": "b"}
  path = tmp_path / "r.jsonl"
  path.write_bytes(json.dumps(good).encode() + b"\n\n" + line + b"\n")
  for read in (read_records, read_pairs):
    with pytest.raises(UserError, match=rf"r\.jsonl:3: .*{message}") as e:
      read(path)
    assert "\n" not in str(e.value)
