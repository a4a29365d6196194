"""`chunklm train`: check the flags, start the processes of a multi-host run, train, print the summary."""

from __future__ import annotations

from pathlib import Path

import jax

from chunklm import logs
from chunklm.cli.options import config_overrides
from chunklm.config import load_config
from chunklm.errors import UserError
from chunklm.eval.summary import sample_and_picture, show_bytes
from chunklm.run.workdir import RunDir
from chunklm.storage.paths import location
from chunklm.train.signals import EXIT_CODE
from chunklm.train.trainer import TrainResult, train


def run(args) -> int:
  if args.stop_after is not None and args.stop_after <= 0:
    raise UserError("--stop-after must be positive")
  if args.distributed:
    _init_distributed(args.coordinator, args.num_processes, args.process_id)
  elif args.coordinator or args.num_processes is not None or args.process_id is not None:
    raise UserError("--coordinator, --num-processes and --process-id need --distributed")
  cfg = load_config(args.config, config_overrides(args))
  workdir = location(args.workdir or Path("runs") / Path(args.config).stem, "--workdir")
  result = train(
    cfg, workdir, stop_after=args.stop_after, progress=not args.no_progress, allow_data_change=args.allow_data_change
  )
  print_summary(result, main_process=jax.process_index() == 0)
  return EXIT_CODE if result.signalled else 0


def _init_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
  """jax.distributed.initialize(), with its failures turned into one clear line; then every process says which it
  is (the log lines after it come from process 0 only, tagged)."""
  if num_processes is not None and num_processes <= 0:
    raise UserError("--num-processes must be positive")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise UserError(f"--process-id must be in [0, {num_processes}), got {process_id}")
  try:
    jax.distributed.initialize(coordinator, num_processes, process_id)
  except (ValueError, TypeError, RuntimeError) as e:
    raise UserError(
      f"--distributed: jax.distributed.initialize() failed ({e}); outside TPU pods, SLURM and Open "
      "MPI pass --coordinator HOST:PORT --num-processes N --process-id I"
    ) from None
  logs.set_process(jax.process_index(), jax.process_count())
  logs.LOGGER.info(
    f"distributed: process {jax.process_index()} of {jax.process_count()}, "
    f"{jax.local_device_count()} local / {jax.device_count()} global devices",
    extra=logs.ALL_PROCESSES,
  )


def print_summary(result: TrainResult, main_process: bool = True) -> None:
  """After `chunklm train`: final BPB next to the order-0 entropy, bytes per chunk against the targets, the chunk
  boundaries on a valid snippet, a sample, and where the outputs are. Every process computes the sample (the
  parameters may be spread over all of them); the main process prints."""
  run, cfg, wd = result.run, result.run.cfg, RunDir(result.workdir)
  if not result.finished:
    if main_process:
      print(
        f"\nstopped at step {result.step} of {cfg.train.steps}; checkpoint in {wd.checkpoints}; "
        "re-run the same command to continue"
      )
    return
  sample, pic, why_not = sample_and_picture(run, result.valid_docs)
  if not main_process:
    return
  v = result.valid
  print(f"\n== {wd.name}: {result.num_params:,} parameters, {result.step} steps ==")
  print(f"valid bits per byte   : {v['bpb']:.4f}  ({int(v['bytes']):,} bytes)")
  print(f"order-0 byte entropy  : {result.order0_entropy:.4f}  (bits per byte of a unigram byte model of valid)")
  target = 1.0
  for s in range(cfg.model.num_stages):
    target *= cfg.model.target_ratio[s]
    print(f"bytes per chunk, stage {s}: {v[f'bytes_per_chunk_s{s}']:.2f}  (target {target:g})")
  if pic:
    print(f"boundaries            : {pic}")
  if why_not:
    print(f"no sample: {why_not}")
  if sample:
    print("sample:\n" + "-" * 60 + "\n" + show_bytes(sample) + "\n" + "-" * 60)
  print(f"metrics    : {wd.metrics} (TensorBoard: {wd.tensorboard})")
  print(f"loss plot  : {wd.loss_plot}")
  print(f"checkpoint : {wd.checkpoints}")
