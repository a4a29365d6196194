"""YAML and JSON that chunklm did not write (config files a user gives, a weights file's metadata, an official H-Net
config, JSONL records), loaded within bounds so a small hostile or damaged file costs a one-line error, not minutes or
a traceback.

Bounds: the text's size (1 MiB for configs and metadata; JSONL records, which may hold whole documents, have none),
the nesting depth (100 levels), and for YAML the number of nodes once aliases are expanded (100,000). PyYAML's
safe_load shares the object an alias names, so an "alias bomb" of a few hundred bytes (nine lists of nine aliases to
the one before) loads at once and blows up only when something walks or copies the tree; here the composed node graph
is counted first, each node once (memoised), and refused over the bound. Scalar aliases and merge keys (`<<: *base`)
work as before. JSON text must be UTF-8; numbers that Python cannot convert (an integer of 5,000 digits) are refused.

YAML is read twice: one pass over the parser's events refuses deep nesting and too many values before anything is
built, then the text is composed (by libyaml where PyYAML has it), its expanded size counted, and the value built by
PyYAML's safe constructor, as yaml.safe_load would.

Every refusal is a `Refused` (a ValueError) whose text is one line without the file's name; callers add the name and
raise their own UserError.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

import yaml

MAX_TEXT = 1 << 20  # bytes of a config file, a weights file's config metadata, an official config JSON
MAX_NODES = 100_000  # YAML nodes once aliases are expanded
MAX_DEPTH = 100  # levels of nested lists and mappings


class Refused(ValueError):
  """YAML or JSON text that is not loaded. str() is one line without the file's name; `problem` and `mark` (" (line
  L, column C)" or "") are set when the text is not valid YAML/JSON at all (`syntax`), rather than over a bound."""

  def __init__(self, message: str, problem: str | None = None, mark: str = ""):
    super().__init__(message)
    self.problem, self.mark = problem, mark

  @property
  def syntax(self) -> bool:
    return self.problem is not None


def check_size(text: str | bytes, limit: int | None = MAX_TEXT) -> None:
  """Refused when `text` is over `limit` bytes (None: no bound)."""
  if limit is None or len(text) <= limit // 4:  # (a character is at most 4 bytes of UTF-8)
    return
  size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else len(text)
  if size > limit:
    raise Refused(f"{size:,} bytes, over the {limit:,} allowed")


def _mark(mark: Any) -> str:
  return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


# libyaml where PyYAML has it: a 1 MiB file parses in a fraction of a second (pure-Python PyYAML: tens of seconds)
_LOADER = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader


def _children(node: yaml.Node) -> list[yaml.Node]:
  if isinstance(node, yaml.SequenceNode):
    return list(node.value)
  if isinstance(node, yaml.MappingNode):
    return [n for pair in node.value for n in pair]
  return []


def expanded_nodes(root: yaml.Node, limit: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> int:
  """The nodes of the tree `root` stands for once every alias is expanded, counted on the node graph with each
  node visited once; Refused above `limit` nodes or `max_depth` levels, or for an alias inside its own anchor."""
  size: dict[int, int] = {}
  depth: dict[int, int] = {}
  open_: set[int] = set()  # the nodes on the path from the root: meeting one again is a cycle
  stack: list[tuple[yaml.Node, bool]] = [(root, False)]
  while stack:
    node, done = stack.pop()
    key = id(node)
    if done:
      open_.discard(key)
      kids = _children(node)
      size[key] = 1 + sum(size[id(k)] for k in kids)
      depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
      if size[key] > limit:
        raise Refused(f"YAML aliases expand to more than {limit:,} values (an alias bomb?){_mark(node.start_mark)}")
      if depth[key] > max_depth:
        raise Refused(f"YAML nested more than {max_depth} levels deep{_mark(node.start_mark)}")
      continue
    if key in size:
      continue
    if key in open_:
      raise Refused(f"a YAML alias inside its own anchor (a recursive structure){_mark(node.start_mark)}")
    open_.add(key)
    stack.append((node, True))
    stack.extend((k, False) for k in _children(node) if id(k) not in size)
  return size[id(root)]


def _count_values(text: str, limit: int) -> None:
  """Refused when the text alone, before any alias is expanded, holds more than `limit` values or nests more than
  MAX_DEPTH levels: one pass over the parser's events stops there, before the composer (which recurses per level)
  builds a node per value (the slow part)."""
  count = depth = 0
  for event in yaml.parse(text, Loader=_LOADER):
    if isinstance(event, yaml.CollectionStartEvent):
      depth += 1
      if depth > MAX_DEPTH:
        raise Refused(f"YAML nested more than {MAX_DEPTH} levels deep{_mark(event.start_mark)}")
    elif isinstance(event, yaml.CollectionEndEvent):
      depth -= 1
    if isinstance(event, yaml.NodeEvent):
      count += 1
      if count > limit:
        raise Refused(f"YAML holding more than {limit:,} values{_mark(event.start_mark)}")


def load_yaml(text: str, limit: int | None = MAX_TEXT, max_nodes: int = MAX_NODES) -> Any:
  """The value of YAML `text` (safe tags only), or Refused: invalid, over `limit` bytes, nested more than MAX_DEPTH
  levels, or more than `max_nodes` values once aliases are expanded."""
  check_size(text, limit)
  loader = _LOADER(text)
  try:
    _count_values(text, max_nodes)
    node = loader.get_single_node()
    if node is None:
      return None
    expanded_nodes(node, max_nodes)
    try:
      return loader.construct_document(node)
    except (ValueError, TypeError, AttributeError, OverflowError) as e:  # a date or !!int scalar that does not convert
      problem = f"a value that does not convert ({str(e).strip().splitlines()[0][:120]})"
      raise Refused(f"invalid YAML: {problem}", problem) from None
  except yaml.YAMLError as e:
    problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
    mark = _mark(getattr(e, "problem_mark", None))
    raise Refused(f"invalid YAML{mark}: {problem}", problem, mark) from None
  except RecursionError:  # not expected within MAX_DEPTH; a safety net
    raise Refused(f"YAML nested more than {MAX_DEPTH} levels deep") from None
  finally:
    loader.dispose()


def nested_over(value: Any, max_depth: int = MAX_DEPTH) -> bool:
  """Whether lists and dicts nest more than `max_depth` levels deep in `value` (walked without recursion)."""
  stack = [(value, 1)]
  while stack:
    item, depth = stack.pop()
    children = item.values() if isinstance(item, dict) else item
    if depth > max_depth:
      return True
    stack.extend((c, depth + 1) for c in children if isinstance(c, (list, dict)))
  return False


def load_json(text: str | bytes, limit: int | None = MAX_TEXT, max_depth: int = MAX_DEPTH) -> Any:
  """The value of JSON `text` (bytes must be UTF-8), or Refused: invalid, not UTF-8, over `limit` bytes, nested more
  than `max_depth` levels, or a number Python refuses to convert."""
  check_size(text, limit)
  if isinstance(text, bytes):
    try:
      text = text.decode("utf-8-sig" if text.startswith(codecs.BOM_UTF8) else "utf-8")
    except UnicodeDecodeError as e:
      raise Refused(f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    mark = f" (line {e.lineno}, column {e.colno})"
    raise Refused(f"invalid JSON{mark}: {e.msg}", e.msg, mark) from None
  except RecursionError:  # the parser recurses per level: nested deeper than Python's recursion limit
    raise Refused(f"JSON nested more than {max_depth} levels deep") from None
  except ValueError as e:  # e.g. an integer of more than 4,300 digits
    raise Refused(f"a number Python cannot read ({str(e).strip().splitlines()[0].split(';')[0]})") from None
  if isinstance(value, (list, dict)) and nested_over(value, max_depth):
    raise Refused(f"JSON nested more than {max_depth} levels deep")
  return value


def utf8(text: str, what: str = "the text") -> bytes:
  """`text` encoded as UTF-8; Refused when it holds a lone surrogate (a JSON "\\ud800" escape makes one), which UTF-8
  cannot encode."""
  try:
    return text.encode("utf-8")
  except UnicodeEncodeError as e:
    raise Refused(f"{what} holds a lone surrogate (\\u{ord(text[e.start]):04x}), which is not UTF-8 text") from None
