"""`chunklm bench kernels`: every chunk op, forward and forward+backward, per impl: median time, achieved GB/s, the
fraction of the device's peak memory bandwidth and the speed-up over the XLA reference; the Mamba2 SSD scan the same
way with FLOP/s (`kernels_ssd.py`); then a whole H-Net training step per impl.

Inputs: boundaries drawn with probability 1/5 (mean chunk length 5), the first position of every row a boundary,
M = ceil(1.5 L / 5) chunk slots (the model's default capacity factor). GB/s counts the bytes an op must move at least
(rows read and written once, plus indices): downsample reads and writes M rows, upsample reads M and writes L, the
segment sum reads L and writes M, the EMA scan reads and writes M (its backward reads 4 and writes 1 row per chunk).
"""

from __future__ import annotations

import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from chunklm.bench import kernels_ssd
from chunklm.bench.timing import median_time, real_batches, time_train_steps, with_corpus_cap
from chunklm.config import load_config
from chunklm.errors import UserError
from chunklm.kernels import api
from chunklm.train.trainer import setup_state

OPS = ("downsample", "upsample", "segment_pool", "ema_scan")
ALL_OPS = (*OPS, "ssd")
DTYPES = ("float32", "bfloat16")
SHAPES = {  # (B, L, D)
  "full": tuple((b, length, d) for b in (8, 32) for length in (4096, 8192) for d in (512, 1024, 2048)),
  "small": ((2, 256, 64),),
}
MEAN_CHUNK, CAPACITY_FACTOR = 5.0, 1.5
# Peak HBM bandwidth in GB/s by device_kind: (substrings that must all appear, lower case) -> GB/s; first match wins.
PEAK_GBPS = (
  (("h100", "pcie"), 2000.0),
  (("h100",), 3350.0),
  (("h200",), 4800.0),
  (("a100", "80gb"), 2000.0),
  (("v5 lite",), 820.0),
  (("v5e",), 820.0),
  (("v5p",), 2760.0),
  (("tpu v5",), 2760.0),
  (("v4",), 1200.0),
)


def peak_gbps(device_kind: str) -> float | None:
  kind = device_kind.lower()
  return next((gbps for keys, gbps in PEAK_GBPS if all(k in kind for k in keys)), None)


def default_impls() -> tuple[str, ...]:
  return ("xla", "pallas") if jax.default_backend() in ("gpu", "tpu") else ("xla", "interpret")


def make_inputs(b: int, length: int, d: int, dtype: str, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  capacity = math.ceil(CAPACITY_FACTOR * length / MEAN_CHUNK)
  keep = rng.uniform(size=(b, length)) < 1.0 / MEAN_CHUNK
  keep[:, 0] = True
  keep_BxL = jnp.asarray(keep)
  return {
    "capacity": capacity,
    "keep": keep_BxL,
    "idx": api.chunk_index(keep_BxL, capacity),
    "x": jnp.asarray(rng.normal(size=(b, length, d)), dtype),
    "z": jnp.asarray(rng.normal(size=(b, capacity, d)), dtype),
    "p": jnp.asarray(rng.uniform(0.05, 0.95, size=(b, capacity)), jnp.float32).at[:, 0].set(1.0),
  }


def op_call(op: str, impl, inputs: dict):
  """(f(diff_args, aux) -> output, diff_args, aux): arrays are arguments, never jit constants."""
  m = inputs["capacity"]
  if op == "downsample":
    return (lambda a, aux: api.downsample(a[0], aux[0], m, impl=impl)[0]), (inputs["x"],), (inputs["keep"],)
  if op == "upsample":
    return (lambda a, aux: api.upsample(a[0], aux[0], impl=impl)), (inputs["z"],), (inputs["idx"],)
  if op == "segment_pool":
    return (lambda a, aux: api.segment_pool(a[0], aux[0], m, "sum", impl=impl)), (inputs["x"],), (inputs["idx"],)
  if op == "ema_scan":
    return (lambda a, aux: api.ema_scan(a[0], a[1], impl=impl)), (inputs["z"], inputs["p"]), ()
  raise UserError(f"unknown op {op!r}; valid: {', '.join(OPS)}")


def traffic_bytes(op: str, b: int, length: int, m: int, d: int, itemsize: int, backward: bool) -> int:
  """Bytes the op must move at least (forward, or forward + backward)."""
  rows = {
    "downsample": (2 * m, m + length),
    "upsample": (m + length, length + m),
    "segment_pool": (length + m, m + length),
    "ema_scan": (2 * m, 5 * m),
  }[op]
  index_bytes = {
    "downsample": b * length,
    "upsample": 4 * b * length,
    "segment_pool": 4 * b * length,
    "ema_scan": 4 * b * m,
  }[op]
  total = b * d * itemsize * (rows[0] + (rows[1] if backward else 0))
  return total + index_bytes * (2 if backward else 1)


def bench_ops(shapes, impls, dtypes, ops, repeats: int, warmup: int, peak: float | None) -> list[dict]:
  rows = []
  for b, length, d in shapes:
    for dtype in dtypes:
      inputs = make_inputs(b, length, d, dtype)
      m = inputs["capacity"]
      for op in ops:
        for backward in (False, True):
          base = None
          for impl in impls:
            f, diff, aux = op_call(op, impl, inputs)
            args: tuple  # (diff, aux), and the output's cotangent when timing the backward pass too
            if backward:

              def fwd_bwd(diff, aux, ct, f=f):
                out, vjp = jax.vjp(lambda *a: f(a, aux), *diff)
                return out, vjp(ct)

              ct = jnp.ones(jax.eval_shape(lambda *a: f(a, aux), *diff).shape, dtype)
              fn, args = jax.jit(fwd_bwd), (diff, aux, ct)
            else:
              fn, args = jax.jit(f), (diff, aux)
            seconds = median_time(fn, args, repeats, warmup)
            base = seconds if impl == "xla" else base
            gbps = traffic_bytes(op, b, length, m, d, jnp.dtype(dtype).itemsize, backward) / seconds / 1e9
            rows.append(
              {
                "op": op,
                "B": b,
                "L": length,
                "M": m,
                "D": d,
                "dtype": dtype,
                "impl": impl,
                "pass": "fwd+bwd" if backward else "fwd",
                "ms": seconds * 1e3,
                "gbps": gbps,
                "peak_frac": gbps / peak if peak else None,
                "vs_xla": base / seconds if base else None,
              }
            )
            _print_row(rows[-1])
  return rows


def _print_row(r: dict) -> None:
  peak = f"{100 * r['peak_frac']:5.1f} %" if r["peak_frac"] is not None else "    n/a"
  ratio = f"{r['vs_xla']:7.3g}x" if r["vs_xla"] is not None else "     n/a"
  print(
    f"{r['op']:13s} {r['B']:3d} {r['L']:6d} {r['M']:5d} {r['D']:5d} {r['dtype']:9s} {r['impl']:9s} "
    f"{r['pass']:8s} {r['ms']:10.3f} {r['gbps']:9.1f} {peak} {ratio}",
    flush=True,
  )


def bench_step(config: str, overrides: list[str], impls, steps: int, warmup: int) -> list[dict]:
  """Median training-step time of `config` with each chunk-op impl (the same batches and initial state)."""
  rows, base = [], None
  for impl in impls:
    cfg = with_corpus_cap(load_config(config, [*overrides, f"kernels.impl={impl}"]))
    if not cfg.model.num_stages:
      raise UserError(f"bench kernels: --step-config {config} is not an H-Net (no chunk ops to compare)")
    graphdef, tx, state, _ = setup_state(cfg)
    batches = real_batches(cfg, steps + warmup + 1)
    compile_s, times, _ = time_train_steps(graphdef, tx, state, batches, warmup)
    seconds = statistics.median(times)
    base = seconds if impl == "xla" else base
    window_bytes = cfg.train.batch_size * cfg.data.seq_len
    rows.append(
      {
        "config": config,
        "impl": impl,
        "compile_s": compile_s,
        "step_ms": seconds * 1e3,
        "bytes_per_s": window_bytes / seconds,
        "vs_xla": base / seconds if base else None,
      }
    )
    r = rows[-1]
    ratio = f"{r['vs_xla']:.3g}x" if r["vs_xla"] is not None else "n/a"
    print(
      f"{config:22s} {impl:9s} {compile_s:8.1f} s {r['step_ms']:10.1f} ms {r['bytes_per_s']:14,.0f} {ratio:>7s}",
      flush=True,
    )
  return rows


def parse_shapes(value: str) -> tuple[tuple[int, int, int], ...]:
  """A named set of SHAPES, or a comma-separated list of BxLxD (e.g. `8x8192x1024,32x4096x512`)."""
  if value in SHAPES:
    return SHAPES[value]
  shapes: list[tuple[int, int, int]] = []
  for item in (v.strip() for v in value.split(",") if v.strip()):
    dims = item.lower().split("x")
    if len(dims) != 3 or not all(d.isdigit() and int(d) > 0 for d in dims):
      raise UserError(
        f"bench kernels: --shapes {item!r} is not BxLxD with positive integers (e.g. 8x8192x1024); "
        f"or one of {', '.join(SHAPES)}"
      )
    shapes.append((int(dims[0]), int(dims[1]), int(dims[2])))
  if not shapes:
    raise UserError(f"bench kernels: --shapes is empty; give one of {', '.join(SHAPES)} or a list of BxLxD")
  return tuple(shapes)


def _split(value: str, valid: tuple[str, ...], what: str) -> tuple[str, ...]:
  items = tuple(v.strip() for v in value.split(",") if v.strip())
  bad = [v for v in items if v not in valid]
  if bad or not items:
    raise UserError(f"bench kernels: unknown {what} {', '.join(bad) or repr(value)}; valid: {', '.join(valid)}")
  return items


def bench_kernels(
  impls: str | None = None,
  shapes: str = "full",
  dtypes: str = "float32,bfloat16",
  ops: str = ",".join(ALL_OPS),
  repeats: int = 20,
  warmup: int = 3,
  step_config: str | None = None,
  step_overrides=(),
  step_steps: int = 10,
  ssd_shapes: str = "auto",
) -> dict:
  """Runs the benchmark and prints it; `step_config` None skips the training-step part; `ssd_shapes` 'auto' follows
  `shapes` (small with small, else full)."""
  impl_list = _split(impls, api.IMPLS, "impl") if impls else default_impls()
  if "xla" not in impl_list:
    impl_list = ("xla", *impl_list)  # the baseline of every ratio
  for impl in impl_list:
    try:
      api.resolve(impl)
    except ValueError as e:
      raise UserError(f"bench kernels: {e}") from None
  shape_list = parse_shapes(shapes)
  ssd_list = kernels_ssd.parse_shapes(
    ssd_shapes if ssd_shapes != "auto" else ("small" if shapes == "small" else "full")
  )
  op_list, dtype_list = _split(ops, ALL_OPS, "op"), _split(dtypes, DTYPES, "dtype")
  if repeats < 1 or warmup < 0 or step_steps < 1:
    raise UserError("bench kernels: --repeats and --step-steps must be >= 1 and --warmup >= 0")
  dev = jax.devices()[0]
  peak = peak_gbps(dev.device_kind) if dev.platform != "cpu" else None
  peak_tf = kernels_ssd.peak_tflops(dev.device_kind) if dev.platform != "cpu" else None
  print(f"device            : {dev.device_kind} ({dev.platform}), jax {jax.__version__}")
  print(f"peak HBM bandwidth: {f'{peak / 1e3:.2f} TB/s' if peak else 'n/a'}")
  print(f"peak bf16 matmul  : {f'{peak_tf:.0f} TFLOP/s' if peak_tf else 'n/a'}")
  print(f"impls             : {', '.join(f'{i} -> {_describe(i)}' for i in impl_list)}")
  print(
    f"timing            : median of {repeats} after {warmup} warm-up calls; mean chunk length {MEAN_CHUNK:g}; "
    "vs XLA = XLA time / this time\n"
  )
  chunk_ops = tuple(op for op in op_list if op in OPS)
  rows: list[dict] = []
  if chunk_ops:
    print(
      f"{'op':13s} {'B':>3s} {'L':>6s} {'M':>5s} {'D':>5s} {'dtype':9s} {'impl':9s} {'pass':8s} {'ms':>10s} "
      f"{'GB/s':>9s} {'% peak':>7s} {'vs XLA':>8s}"
    )
    rows = bench_ops(shape_list, impl_list, dtype_list, chunk_ops, repeats, warmup, peak)
  ssd_rows = []
  if "ssd" in op_list:
    print(f"\nSSD scan (auto = {_describe('xla')} for the SSD until a device measures the kernels faster):")
    print(kernels_ssd.HEADER)
    ssd_rows = kernels_ssd.bench_ssd(ssd_list, impl_list, dtype_list, repeats, warmup, peak, peak_tf)
  out = {
    "device": dev.device_kind,
    "platform": dev.platform,
    "peak_gbps": peak,
    "peak_tflops": peak_tf,
    "ops": rows,
    "ssd": ssd_rows,
    "step": [],
  }
  if step_config:
    print(f"\ntraining step ({' '.join([step_config, *step_overrides])}), median of {step_steps}:")
    print(f"{'config':22s} {'impl':9s} {'compile':>10s} {'step':>13s} {'bytes/s':>14s} {'vs XLA':>7s}")
    out["step"] = bench_step(step_config, list(step_overrides), impl_list, step_steps, warmup=2)
  return out


def _describe(impl: str) -> str:
  backend = api.resolve(impl)
  if backend is None:
    return "XLA reference"
  family = "Mosaic TPU" if backend.kernels == "tpu" else "Triton"
  return f"{family} kernels{', interpreted' if backend.interpret else ''}"
