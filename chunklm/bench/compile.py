"""`chunklm bench compile`: the project's training step compiled ahead of time for a TPU slice that is not there.

The devices come from `jax.experimental.topologies.get_topology_desc` (libtpu, the `tpu` extra), so a CPU host can
check what a pod run would do: the model, optimizer and train state are abstract (`jax.ShapeDtypeStruct`, nothing is
allocated), the batch has the pipeline's fields, the mesh and shardings are the trainer's own, and the step is traced
under the mesh, so the chunk ops take the target's kernels (TPU Pallas inside `shard_map` for `pallas`/`auto`).
What XLA reports is per chip: argument / temporary / output / aliased bytes, FLOPs and bytes accessed (its cost
analysis of the compiled step), code size; the collectives are counted in the compiled HLO by what they do and its
custom-calls by kind, the Pallas kernels by name, so a reader sees whether the kernels are in the program
(`bench/hlo.py`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time

import jax
import numpy as np
from jax.experimental.topologies import get_topology_desc

from chunklm.bench.hlo import count_collectives, count_custom_calls
from chunklm.bench.timing import with_corpus_cap
from chunklm.config import Config, load_config
from chunklm.data.corpus import Documents
from chunklm.data.pipeline import PackedWindows
from chunklm.errors import ConfigError, UserError
from chunklm.model.flops import train_flops_per_byte
from chunklm.train.sharding import (
  batch_sharding,
  check_batch_size,
  make_mesh,
  process_count,
  put_abstract,
  state_shardings,
)
from chunklm.train.step import make_train_step
from chunklm.train.trainer import setup_state

GIB = 1024**3
HBM_GIB = {"v4": 32, "v5e": 16, "v5litepod": 16, "v5p": 95, "v6e": 32}  # per chip


def topology_devices(topology: str) -> list:
  """The devices of a TPU slice such as 'v5p:4x4x4' or 'v5e:2x2' (compile-only: nothing runs on them)."""
  kind, sep, shape = topology.partition(":")
  if not sep or not re.fullmatch(r"\d+(x\d+)*", shape):
    raise UserError(f"--topology {topology!r}: expected KIND:SHAPE, e.g. v5p:4x4x4 or v5e:16x16")
  if kind.lower() in ("gpu", "cuda"):  # only where a JAX GPU plugin can describe devices it does not have
    platform, name, extra = "cuda", shape, {}
  elif importlib.util.find_spec("libtpu") is None:
    raise UserError("chunklm bench compile needs libtpu for TPU topologies: pip install 'chunklm[tpu]' (~700 MB)")
  else:
    chips = math.prod(int(s) for s in shape.split("x"))
    platform, name = "tpu", topology
    extra = {"chips_per_host_bounds": [1, 1, 1]} if chips == 1 else {}  # libtpu's default host has 4 chips
  # compile-only devices never open a chip, so several compiles (or a test beside a command) may share libtpu
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    return list(get_topology_desc(topology_name=name, platform=platform, **extra).devices)
  except Exception as e:  # noqa: BLE001  (libtpu's errors are long C++ status strings: keep their first line)
    raise UserError(
      f"--topology {topology!r}: JAX {jax.__version__} cannot describe it here: {str(e).strip().splitlines()[0]}"
    ) from None


def hbm_gib(topology: str) -> float | None:
  return HBM_GIB.get(topology.partition(":")[0].lower())


def abstract_batch(cfg: Config, sharding) -> dict:
  """A global batch as `jax.ShapeDtypeStruct`s with the pipeline's fields, shapes and dtypes."""
  unit = np.int32 if cfg.data.tokenizer else np.uint8
  docs = Documents(
    np.zeros(cfg.data.seq_len + 1, unit), np.zeros(1, np.int64), np.array([cfg.data.seq_len + 1], np.int64), ("probe",)
  )
  example = PackedWindows(docs, cfg.data.seq_len, shuffle=False)[0]
  return {
    k: jax.ShapeDtypeStruct((cfg.train.batch_size, *v.shape), v.dtype, sharding=sharding) for k, v in example.items()
  }


@dataclasses.dataclass
class CompileReport:
  topology: str
  mesh: dict
  processes: int
  params: int
  lower_s: float
  compile_s: float
  memory: dict  # per chip: arguments, temporaries, outputs, aliased, peak (bytes)
  hbm_bytes: float | None
  flops_per_chip: float
  nominal_flops_per_chip: float
  bytes_accessed_per_chip: float  # XLA's cost analysis: bytes the compiled step reads and writes in HBM
  code_bytes: int
  collectives: dict
  custom_calls: dict  # {"kernels": {Pallas kernel: calls}, "other": {custom-call target: calls}}
  largest_param_bytes: int


def compile_step(cfg: Config, topology: str, devices: list | None = None, hlo_path: str | None = None) -> CompileReport:
  """Lowers and compiles cfg's training step for `topology` (devices given, or made with `topology_devices`);
  the compiled HLO text goes to `hlo_path` if one is given."""
  devices = devices if devices is not None else topology_devices(topology)
  mesh = make_mesh(cfg.mesh, devices)
  check_batch_size(cfg.train.batch_size, mesh)
  graphdef, tx, state, num_params = setup_state(cfg, abstract=True)
  shardings = state_shardings(state, mesh)
  state_args = jax.tree.map(put_abstract, state, shardings)
  batch_args = abstract_batch(cfg, batch_sharding(mesh))
  step = make_train_step(graphdef, tx, shardings, batch_sharding(mesh))
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    lowered = step.lower(state_args, batch_args)
  t1 = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # noqa: BLE001  (XLA's compile failures share no type; the first line says which)
    raise ConfigError(f"XLA could not compile the step for {topology}: {str(e).strip().splitlines()[0]}") from None
  t2 = time.perf_counter()
  hlo = compiled.as_text()
  if hlo_path:
    with open(hlo_path, "w") as f:
      f.write(hlo)
  mem = compiled.memory_analysis()
  memory = {
    "arguments": mem.argument_size_in_bytes,
    "temporaries": mem.temp_size_in_bytes,
    "outputs": mem.output_size_in_bytes,
    "aliased": mem.alias_size_in_bytes,
    "peak": getattr(mem, "peak_memory_in_bytes", 0)
    or (mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes),
  }
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  nominal = train_flops_per_byte(cfg.model, cfg.data.seq_len) * cfg.train.batch_size * cfg.data.seq_len / len(devices)
  hbm = hbm_gib(topology)
  largest = max(math.prod(x.shape) * 2 for x in jax.tree.leaves(state["params"]))  # as bf16, the compute dtype
  return CompileReport(
    topology=topology,
    mesh=dict(mesh.shape),
    processes=process_count(mesh),
    params=num_params,
    lower_s=t1 - t0,
    compile_s=t2 - t1,
    memory=memory,
    hbm_bytes=hbm * GIB if hbm else None,
    flops_per_chip=float(cost.get("flops", 0.0)),
    nominal_flops_per_chip=nominal,
    bytes_accessed_per_chip=float(cost.get("bytes accessed", 0.0)),
    code_bytes=int(getattr(mem, "generated_code_size_in_bytes", 0)),
    collectives=count_collectives(hlo),
    custom_calls=count_custom_calls(hlo),
    largest_param_bytes=largest,
  )


def print_report(r: CompileReport, name: str, impl: str) -> None:
  gib = lambda b: f"{b / GIB:.2f} GiB"  # noqa: E731
  mesh = " x ".join(f"{k} {v}" for k, v in r.mesh.items())
  print(f"config           : {name} (kernels.impl {impl})")
  print(f"target           : {r.topology}, {math.prod(r.mesh.values())} chips, {r.processes} processes; mesh {mesh}")
  print(f"parameters       : {r.params:,}")
  print(f"lower / compile  : {r.lower_s:.1f} s / {r.compile_s:.1f} s (on this host)")
  m = r.memory
  hbm = f" of {gib(r.hbm_bytes)} HBM ({m['peak'] / r.hbm_bytes:.0%})" if r.hbm_bytes else " (chip HBM unknown)"
  print(
    f"memory per chip  : peak {gib(m['peak'])}{hbm}; arguments {gib(m['arguments'])}, temporaries "
    f"{gib(m['temporaries'])}, outputs {gib(m['outputs'])}, aliased {gib(m['aliased'])}"
  )
  ratio = r.flops_per_chip / r.nominal_flops_per_chip if r.nominal_flops_per_chip else float("nan")
  print(
    f"FLOPs per chip   : {r.flops_per_chip / 1e12:.2f} T compiled vs {r.nominal_flops_per_chip / 1e12:.2f} T "
    f"nominal (chunklm info at the target ratios): {ratio:.2f}x"
  )
  intensity = r.flops_per_chip / r.bytes_accessed_per_chip if r.bytes_accessed_per_chip else float("nan")
  print(f"bytes per chip   : {gib(r.bytes_accessed_per_chip)} accessed (XLA cost analysis): {intensity:.0f} FLOPs/byte")
  print(f"code size        : {r.code_bytes / 2**20:.1f} MiB")
  print(f"Pallas kernels   : {_calls(r.custom_calls['kernels'], 'none')}")
  print(f"other custom-call: {_calls(r.custom_calls['other'], 'none')}")
  print(f"largest weight   : {r.largest_param_bytes / 2**20:.1f} MiB in bf16")
  for kind, c in r.collectives.items():
    via = f" ({c['as_all_reduce']} lowered through an all-reduce)" if c.get("as_all_reduce") else ""
    print(
      f"{kind:17}: {c['count']:4d} tensors, {c['bytes'] / 2**20:9.1f} MiB, largest {c['max_bytes'] / 2**20:.1f} MiB{via}"
    )
  mib = {k: f"{c['count']} / {c['max_bytes'] / 2**20:.1f}" for k, c in r.collectives.items()}
  print(
    f"| {name} | {impl} | {r.topology} | {mesh} | {gib(m['peak'])} | {r.hbm_bytes and m['peak'] / r.hbm_bytes:.0%} | "
    f"{ratio:.2f}x | {mib['all-gather']} | {mib['reduce-scatter']} | {mib['all-reduce']} | {r.compile_s:.0f} s |"
  )


def _calls(counts: dict[str, int], none: str) -> str:
  """'12 calls: a 2, b 10' (sorted by name), or `none`."""
  if not counts:
    return none
  return f"{sum(counts.values())} calls: " + ", ".join(f"{k} {n}" for k, n in counts.items())


def bench_compile(config: str, topology: str, overrides: list[str], hlo_path: str | None = None) -> CompileReport:
  devices = topology_devices(topology)  # before any work: a missing extra or a bad name is one line
  cfg = with_corpus_cap(load_config(config, overrides))  # documents per window as training sets them
  print(f"compiling {config} for {topology} ({len(devices)} chips) on this host; large configs take minutes")
  report = compile_step(cfg, topology, devices, hlo_path)
  print_report(report, config, cfg.kernels.impl)
  return report
