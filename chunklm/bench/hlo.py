"""The collectives of a compiled XLA program, counted in its HLO text, by what they do; and its custom-calls (the
Pallas kernels by name).

The TPU compiler does not always keep the collective the program asked for:
  - a reduce-scatter may be fused with its slice into a computation named `all-reduce-scatter*`;
  - over a whole torus (every chip of a v5p:4x4x4 in one group) it writes an all-gather as an all-reduce of a
    zero buffer with this chip's shard written in (a dynamic-update-slice, perhaps copied to another memory space
    first), and a reduce-scatter as an all-reduce whose result is only sliced (a dynamic-slice, perhaps inside the
    fusion that uses it, e.g. the optimizer update);
  - it combines many collectives into one op over a tuple of tensors;
  - on a 2-D torus (v5e) it overlaps a weight's all-gather with compute as a chain: one `all-gather` op in the
    fusion that starts it (an `AsyncCollectiveStart` custom-call), one in each continuation fusion and one in the
    fusion that ends it (`AsyncCollectiveDone`), each over the whole group with the whole result, all marked with
    the same `frontend_attributes={chain_id="N"}`; the chain is one gathered tensor and counts once.
Each tensor counts as the all-gather / reduce-scatter it is, with `as_all_reduce` saying how many the compiler
lowered through an all-reduce. What is left under "all-reduce" is a real one: a sum every chip keeps whole (the
loss, metrics, gradients of replicated parameters).
"""

from __future__ import annotations

import dataclasses
import math
import re

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "bf16": 2,
  "f16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
}
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+(.+?)\s*\{\s*$")
# "%name = <shape> opcode(operands), attributes": the opcode is the first lower-case word followed by "(" (layouts
# such as {1,0:T(8,128)} write their tiles with a capital T)
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\((.*)$")
_NAME = re.compile(r"%([\w.\-]+)")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_INDEX = re.compile(r"\bindex=(\d+)")
_CHAIN = re.compile(r"\bchain_id=\"([^\"]*)\"")  # in frontend_attributes: the members of one chained collective
_ARRAY = re.compile(r"([a-z0-9]+)\[([0-9,]*)\]")
_COPIES = ("copy", "bitcast", "copy-start", "copy-done")  # the same values, in another layout or memory space
_PASS_THROUGH = {"get-tuple-element", "all-reduce-done", *_COPIES}
KERNEL_TARGETS = ("tpu_custom_call", "__gpu$xla.gpu.triton")  # a Pallas kernel: Mosaic (TPU), Triton (GPU)
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_PALLAS_SCOPE = re.compile(r'op_name="(?:[^"]*/)?([^/"]+)/pallas_call"')
_CALL_SUFFIX = re.compile(r"(\.clone|\.\d+)+$")


@dataclasses.dataclass
class _Instruction:
  name: str
  shape: str
  opcode: str
  operands: list[str]
  computation: str
  calls: str | None
  index: int | None  # a get-tuple-element's index, a parameter's number
  chain: str | None = None  # the chain a continued collective belongs to


def _split_operands(rest: str) -> tuple[str, str]:
  """'a, b), attrs' -> ('a, b', 'attrs'): up to the parenthesis that closes the operand list."""
  depth = 0
  for i, ch in enumerate(rest):
    if ch in "({":
      depth += 1
    elif ch in ")}":
      if depth == 0:
        return rest[:i], rest[i + 1 :]
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
    calls, index, chain = _CALLS.search(attributes), _INDEX.search(attributes), _CHAIN.search(attributes)
    if opcode == "parameter" and operands.strip().isdigit():
      index = re.match(r"(\d+)", operands.strip())
    instructions[name] = _Instruction(
      name,
      shape,
      opcode,
      _NAME.findall(operands),
      computation,
      calls.group(1) if calls else None,
      int(index.group(1)) if index else None,
      chain.group(1) if chain else None,
    )
    if root:
      roots[computation] = opcode
  return instructions, results, roots


def _bytes(shape: str, last_only: bool = False) -> int:
  arrays = [
    _DTYPE_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d) for dt, dims in _ARRAY.findall(shape)
  ]
  if last_only and arrays:  # an asynchronous start's tuple ends with its result
    return arrays[-1]
  return sum(arrays)


def _element_shapes(shape: str) -> list[str]:
  """The array shapes of a (possibly tuple) HLO shape, in order."""
  return [m.group(0) for m in _ARRAY.finditer(shape)]


def count_collectives(hlo_text: str) -> dict[str, dict]:
  """{kind: {count, bytes, max_bytes, as_all_reduce}} over the compiled HLO. Counts are tensors (an op the compiler
  combined over k tensors counts k); bytes are each tensor's result per chip (for a reduce-scatter, this chip's
  shard); an asynchronous start/done pair counts once, a chain of ops continuing one collective once, an op inside
  a loop body once."""
  instructions, results, roots = _parse(hlo_text)
  users: dict[str, list[_Instruction]] = {}
  for ins in instructions.values():
    for o in ins.operands:
      users.setdefault(o, []).append(ins)

  def does(ins: _Instruction | None, opcode: str) -> bool:  # the op itself, or a fusion whose root is that op
    if ins is None:
      return False
    return ins.opcode == opcode or (ins.opcode == "fusion" and ins.calls is not None and roots.get(ins.calls) == opcode)

  params = {(i.computation, i.index): i for i in instructions.values() if i.opcode == "parameter"}

  def origin(name: str) -> _Instruction | None:
    """What produced `name`, back through copies (also between memory spaces) and bitcasts."""
    ins = instructions.get(name)
    while ins is not None and ins.opcode in _COPIES and ins.operands:
      ins = instructions.get(ins.operands[0])
    return ins

  def final_users(name: str, element: int | None = None) -> list[_Instruction]:
    """Users of `name` (of its tuple element `element`), through tuple access, bitcasts, copies, async done and
    into fusions (the fused computation's parameter's users)."""
    out = []
    for u in users.get(name, []):
      if u.opcode == "get-tuple-element":
        if element is None or u.index == element:
          out += final_users(u.name)
      elif u.opcode in _PASS_THROUGH:
        out += final_users(u.name, element)
      elif u.opcode == "fusion" and u.calls is not None and (u.calls, u.operands.index(name)) in params:
        inside = final_users(params[(u.calls, u.operands.index(name))].name)
        out += inside or [u]  # passed straight to the fusion's result: the fusion itself is the use
      else:
        out.append(u)
    return out

  out = {k: {"count": 0, "bytes": 0, "max_bytes": 0, "as_all_reduce": 0} for k in COLLECTIVES}

  def add(kind: str, size: int, lowered: bool = False) -> None:
    out[kind]["count"] += 1
    out[kind]["bytes"] += size
    out[kind]["max_bytes"] = max(out[kind]["max_bytes"], size)
    out[kind]["as_all_reduce"] += lowered

  for computation, shape in results.items():  # a fused reduce-scatter: its results are the shards, one per tensor
    for shard in _element_shapes(shape) if computation.startswith("all-reduce-scatter") else ():
      add("reduce-scatter", _bytes(shard))
  chains: set[tuple[str, str]] = set()
  for ins in instructions.values():
    kind = ins.opcode.removesuffix("-start")
    if kind not in COLLECTIVES:  # an asynchronous "-done" is counted with its start
      continue
    if ins.chain is not None:  # a chain's members each hold the whole result: its first member stands for it
      if (kind, ins.chain) in chains:
        continue
      chains.add((kind, ins.chain))
    if kind != "all-reduce":
      add(kind, _bytes(ins.shape, last_only=ins.opcode.endswith("-start")))
      continue
    if ins.computation.startswith("all-reduce-scatter"):  # the fused form, counted above
      continue
    shapes = _element_shapes(ins.shape)
    for i, shape in enumerate(shapes):
      source = origin(ins.operands[i]) if i < len(ins.operands) else None
      sliced = final_users(ins.name, i if len(shapes) > 1 else None)
      if does(source, "dynamic-update-slice"):
        add("all-gather", _bytes(shape), lowered=True)
      elif sliced and all(does(u, "dynamic-slice") for u in sliced):
        add("reduce-scatter", max(_bytes(u.shape) for u in sliced), lowered=True)
      else:
        add("all-reduce", _bytes(shape))
  return out


def count_custom_calls(hlo_text: str) -> dict[str, dict[str, int]]:
  """{"kernels": {name: count}, "other": {target: count}} over the compiled HLO's custom-calls. Kernels are the
  Pallas calls (Mosaic on TPU, Triton on GPU) by kernel name: the op before `/pallas_call` in the call's metadata
  (`op_name=".../chunk_ema_scan/pallas_call"`), else the instruction's name less its numeric and `.clone` suffixes
  (XLA names the call after the kernel: `%chunk_ema_scan.2`). Every other custom-call counts by its target. Each
  call in the program text counts once (one inside a loop body once)."""
  kernels: dict[str, int] = {}
  other: dict[str, int] = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if m is None or m.group(4) != "custom-call":
      continue
    target = _TARGET.search(m.group(5))
    name = target.group(1) if target else "?"
    if name in KERNEL_TARGETS:
      scope = _PALLAS_SCOPE.search(m.group(5))
      kernel = scope.group(1) if scope else _CALL_SUFFIX.sub("", m.group(2))
      kernels[kernel] = kernels.get(kernel, 0) + 1
    else:
      other[name] = other.get(name, 0) + 1
  return {"kernels": dict(sorted(kernels.items())), "other": dict(sorted(other.items()))}
