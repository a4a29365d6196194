"""`chunklm eval`: bits per byte of a run on some data (`chunklm.eval.run_eval.eval_run`), printed and as JSON."""

from __future__ import annotations

from chunklm.cli.output import write_json
from chunklm.errors import UserError
from chunklm.eval.run_eval import RunEval, eval_run


def run(args) -> int:
  if args.max_bytes < 0 or (args.batch_size is not None and args.batch_size <= 0):
    raise UserError("--max-bytes must be >= 0 and --batch-size > 0")
  overrides = tuple(args.overrides)
  ev = eval_run(
    args.workdir,
    overrides,
    tuple(args.data) + tuple(args.valid_data),
    max_bytes=args.max_bytes,
    batch_size=args.batch_size,
    progress=not args.no_progress,
  )
  print_eval(ev, overrides)
  write_json(
    args.json,
    {"workdir": str(args.workdir), "step": ev.run.step, "data": ev.what, "overrides": list(overrides), **ev.result},
  )
  return 0


def print_eval(ev: RunEval, overrides: tuple[str, ...]) -> None:
  res = ev.result
  changed = f" with {' '.join(overrides)}" if overrides else ""
  per_base = " (= bits per base: DNA, one byte per base)" if "bits_per_base" in res else ""
  print(
    f"{ev.run.workdir} (step {ev.run.step}){changed} on {ev.what}: {res['bpb']:.4f} bits per byte{per_base} "
    f"over {int(res['bytes']):,} bytes"
  )
  for key in sorted(k for k in res if k.startswith("bytes_per_chunk")):
    print(f"{key}: {res[key]:.2f}")
