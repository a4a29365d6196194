"""The collectives of a compiled XLA program, counted in its HLO text, by what they do.

The TPU compiler does not always keep the collective the program asked for:
  - a reduce-scatter may be fused with its slice into a computation named `all-reduce-scatter*`;
  - over a whole torus (every chip of a v5p:4x4x4 in one group) it writes an all-gather as an all-reduce of a
    zero buffer with this chip's shard written in (a dynamic-update-slice), and a reduce-scatter as an all-reduce
    whose result is only sliced (a dynamic-slice).
These count as the all-gather / reduce-scatter they are, with `as_all_reduce` saying how many the compiler lowered
through an all-reduce. What is left under "all-reduce" is a real one: a sum every chip keeps whole.
"""

from __future__ import annotations

import dataclasses
import math
import re

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+(.+?)\s*\{\s*$")
# "%name = <shape> opcode(operands), attributes": the opcode is the first lower-case word followed by "(" (layouts
# such as {1,0:T(8,128)} write their tiles with a capital T)
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\((.*)$")
_NAME = re.compile(r"%([\w.\-]+)")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_ARRAY = re.compile(r"([a-z0-9]+)\[([0-9,]*)\]")
_PASS_THROUGH = {"get-tuple-element", "bitcast", "copy", "all-reduce-done"}


@dataclasses.dataclass
class _Instruction:
  name: str
  shape: str
  opcode: str
  operands: list[str]
  computation: str
  calls: str | None


def _split_operands(rest: str) -> tuple[str, str]:
  """'a, b), attrs' -> ('a, b', 'attrs'): up to the parenthesis that closes the operand list."""
  depth = 0
  for i, ch in enumerate(rest):
    if ch in "({":
      depth += 1
    elif ch in ")}":
      if depth == 0:
        return rest[:i], rest[i + 1:]
      depth -= 1
  return rest, ""


def _parse(hlo_text: str) -> tuple[dict[str, _Instruction], dict[str, str], dict[str, str]]:
  """Instructions by name, each computation's result shape, and its root's opcode."""
  instructions, results, roots = {}, {}, {}
  computation = ""
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      computation, results[computation] = header.groups()
      continue
    m = _INSTRUCTION.match(line)
    if m is None:
      continue
    root, name, shape, opcode, rest = m.groups()
    operands, attributes = _split_operands(rest)
    calls = _CALLS.search(attributes)
    instructions[name] = _Instruction(name, shape, opcode, _NAME.findall(operands), computation,
                                      calls.group(1) if calls else None)
    if root:
      roots[computation] = opcode
  return instructions, results, roots


def _bytes(shape: str, last_only: bool = False) -> int:
  arrays = [_DTYPE_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d)
            for dt, dims in _ARRAY.findall(shape)]
  if last_only and arrays:  # an asynchronous start's tuple ends with its result
    return arrays[-1]
  return sum(arrays)


def count_collectives(hlo_text: str) -> dict[str, dict]:
  """{kind: {count, bytes, max_bytes, as_all_reduce}} over the compiled HLO. Bytes are each op's result per chip
  (for a reduce-scatter, this chip's shard); an asynchronous start/done pair counts once, an op inside a loop body
  once."""
  instructions, results, roots = _parse(hlo_text)
  users: dict[str, list[_Instruction]] = {}
  for ins in instructions.values():
    for o in ins.operands:
      users.setdefault(o, []).append(ins)

  def does(ins: _Instruction, opcode: str) -> bool:  # the op itself, or a fusion whose root is that op
    return ins.opcode == opcode or (ins.opcode == "fusion" and roots.get(ins.calls) == opcode)

  def final_users(name: str) -> list[_Instruction]:  # through tuples, bitcasts, copies and async done
    out = []
    for u in users.get(name, []):
      out += final_users(u.name) if u.opcode in _PASS_THROUGH else [u]
    return out

  out = {k: {"count": 0, "bytes": 0, "max_bytes": 0, "as_all_reduce": 0} for k in COLLECTIVES}
  for ins in instructions.values():
    kind = ins.opcode.removesuffix("-start")
    if kind not in COLLECTIVES:  # an asynchronous "-done" is counted with its start
      continue
    size = _bytes(ins.shape, last_only=ins.opcode.endswith("-start"))
    if kind == "all-reduce":
      sources = [instructions.get(o) for o in ins.operands]
      sliced = final_users(ins.name)
      if ins.computation.startswith("all-reduce-scatter"):  # the fused form: the computation's result is the shard
        kind, size = "reduce-scatter", _bytes(results[ins.computation])
      elif sources and all(s is not None and does(s, "dynamic-update-slice") for s in sources):
        kind = "all-gather"
        out[kind]["as_all_reduce"] += 1
      elif sliced and all(does(u, "dynamic-slice") for u in sliced):
        kind, size = "reduce-scatter", sum(_bytes(u.shape) for u in sliced)
        out[kind]["as_all_reduce"] += 1
    out[kind]["count"] += 1
    out[kind]["bytes"] += size
    out[kind]["max_bytes"] = max(out[kind]["max_bytes"], size)
  return out
