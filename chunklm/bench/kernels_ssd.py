"""The SSD op in `chunklm bench kernels`: the Mamba2 scan of one layer, forward and forward+backward, per impl.

Shapes are B x L x H x P x N x Q (batch, positions, heads, head channels, state, chunk); the named sets are the Mamba2
layers of hnet_1stage_S (d_inner 1024: 16 heads, N 64, Q 128, 2048-byte windows) and hnet_1stage_L (32 heads,
N 128, Q 256, 8192 bytes) at a per-device batch, and a CPU-sized check. Documents of ~1000 positions (a boundary
every 997) so resets happen inside and across chunks. FLOPs are the chunked algorithm's at the step each impl takes
(`ssd_layout.flops`: C B^T and the masked weighted sum per chunk, the state in and out; forward+backward about 4x
forward; the XLA form steps by the shape's Q, the kernels by their `ssd_chunk` tile, shown as "Q"); bytes are what the
op must move at least (x, dt, B, C read and y written; the backward reads them again with dy and writes their
cotangents). "% peak" is achieved FLOP/s over the chip's dense bfloat16 matmul peak: the kernels multiply in
float32, so that is an upper bound they cannot reach; it says how far the op is from being compute-bound.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from chunklm.bench.timing import median_time
from chunklm.errors import UserError
from chunklm.kernels.api import resolve
from chunklm.kernels.ssd import kernel_chunk, ssd
from chunklm.kernels.ssd_layout import Dims, flops

SHAPES = {  # (B, L, H, P, N, Q)
  "full": ((8, 2048, 16, 64, 64, 128), (2, 8192, 32, 64, 128, 256)),
  "small": ((2, 128, 2, 16, 16, 32),),
}
DOC_LENGTH = 997
# Dense bfloat16 matmul peak in TFLOP/s by device_kind (substrings, lower case); first match wins.
PEAK_TFLOPS = (
  (("h100", "pcie"), 756.0),
  (("h100",), 989.0),
  (("h200",), 989.0),
  (("a100",), 312.0),
  (("v5 lite",), 197.0),
  (("v5e",), 197.0),
  (("v5p",), 459.0),
  (("tpu v5",), 459.0),
  (("v4",), 275.0),
)


def peak_tflops(device_kind: str) -> float | None:
  kind = device_kind.lower()
  return next((tf for keys, tf in PEAK_TFLOPS if all(k in kind for k in keys)), None)


def parse_shapes(value: str) -> tuple[tuple[int, ...], ...]:
  """A named set, or a comma-separated list of BxLxHxPxNxQ (e.g. `8x2048x16x64x64x128`)."""
  if value in SHAPES:
    return SHAPES[value]
  shapes = []
  for item in (v.strip() for v in value.split(",") if v.strip()):
    dims = item.lower().split("x")
    if len(dims) != 6 or not all(d.isdigit() and int(d) > 0 for d in dims):
      raise UserError(
        f"bench kernels: --ssd-shapes {item!r} is not BxLxHxPxNxQ with positive integers "
        f"(e.g. 8x2048x16x64x64x128); or one of {', '.join(SHAPES)}"
      )
    shapes.append(tuple(int(d) for d in dims))
  if not shapes:
    raise UserError(f"bench kernels: --ssd-shapes is empty; give one of {', '.join(SHAPES)} or BxLxHxPxNxQ")
  return tuple(shapes)


def make_inputs(shape: tuple[int, ...], dtype: str, seed: int = 0) -> tuple[jax.Array, ...]:
  """(x, dt, a, b, c, d, doc) for one SSD call: dt and A in Mamba2's initial ranges, documents of DOC_LENGTH."""
  b, length, h, p, n, _ = shape
  rng = np.random.default_rng(seed)
  normal = lambda *s: jnp.asarray(rng.normal(size=s), dtype)  # noqa: E731
  dt = jnp.asarray(rng.uniform(1e-3, 0.1, size=(b, length, h)), dtype)
  a = -jnp.asarray(rng.uniform(1.0, 16.0, size=(h,)), jnp.float32)
  doc = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32) // DOC_LENGTH, (b, length))
  return normal(b, length, h, p), dt, a, normal(b, length, n), normal(b, length, n), jnp.ones((h,)), doc


def flops_and_bytes(shape: tuple[int, ...], itemsize: int, backward: bool, chunk: int) -> tuple[float, float]:
  """(FLOPs, bytes) of one call stepping `chunk` positions at a time (the kernels' own step, the XLA form's Q)."""
  b, length, h, p, n, _ = shape
  fwd = flops(Dims(b, length, h, p, n, chunk, 1), backward=False)
  moved = b * length * (2 * h * p + h + 2 * n) * itemsize  # x, dt, B, C in; y out
  return (4 * fwd if backward else fwd), (3 * moved if backward else moved)


def bench_ssd(shapes, impls, dtypes, repeats: int, warmup: int, peak_gbps: float | None, peak_tf: float | None):
  """Rows of the SSD op per shape, dtype, pass and impl (the first impl, xla, is every ratio's baseline)."""
  rows = []
  for shape in shapes:
    for dtype in dtypes:
      x, dt, a, b, c, d, doc = make_inputs(shape, dtype)
      for backward in (False, True):
        base = None
        for impl in impls:

          def f(x, dt, a, b, c, d, impl=impl):
            return ssd(x, dt, a, b, c, d, doc, shape[5], impl=impl)

          if backward:
            fn = jax.jit(lambda *v, f=f: jax.vjp(f, *v)[1](jnp.ones(v[0].shape, v[0].dtype)))
          else:
            fn = jax.jit(f)
          seconds = median_time(fn, (x, dt, a, b, c, d), repeats, warmup)
          base = seconds if impl == "xla" else base
          backend = None if impl in ("xla", "auto") else resolve(impl)
          chunk = shape[5] if backend is None else kernel_chunk(backend, shape[5])
          done, moved = flops_and_bytes(shape, jnp.dtype(dtype).itemsize, backward, chunk)
          row = {
            "op": "ssd",
            "shape": "x".join(map(str, shape)),
            "dtype": dtype,
            "impl": impl,
            "pass": "fwd+bwd" if backward else "fwd",
            "ms": seconds * 1e3,
            "chunk": chunk,
            "gflop": done / 1e9,
            "mb": moved / 1e6,
            "gbps": moved / seconds / 1e9,
            "tflops": done / seconds / 1e12,
            "peak_frac": done / seconds / 1e12 / peak_tf if peak_tf else None,
            "hbm_frac": moved / seconds / 1e9 / peak_gbps if peak_gbps else None,
            "vs_xla": base / seconds if base else None,
          }
          rows.append(row)
          print_row(row)
  return rows


HEADER = (
  f"{'op':4s} {'BxLxHxPxNxQ':24s} {'dtype':9s} {'impl':9s} {'pass':8s} {'Q':>4s} {'ms':>10s} {'GFLOP':>8s} {'MB':>8s} "
  f"{'TFLOP/s':>8s} {'% peak':>7s} {'GB/s':>8s} {'vs XLA':>8s}"
)


def print_row(r: dict) -> None:
  peak = f"{100 * r['peak_frac']:6.1f}%" if r["peak_frac"] is not None else "    n/a"
  ratio = f"{r['vs_xla']:7.3g}x" if r["vs_xla"] is not None else "     n/a"
  print(
    f"{r['op']:4s} {r['shape']:24s} {r['dtype']:9s} {r['impl']:9s} {r['pass']:8s} {r['chunk']:4d} {r['ms']:10.3f} "
    f"{r['gflop']:8.3g} {r['mb']:8.1f} {r['tflops']:8.3f} {peak} {r['gbps']:8.1f} {ratio}",
    flush=True,
  )
