"""The flags of `chunklm train`."""

from __future__ import annotations

from chunklm.cli import options


def add(sub) -> None:
  p = sub.add_parser(
    "train",
    help="train a model (resumes automatically from the workdir's checkpoint)",
    description="Train a model. Re-running the same command in a workdir with a checkpoint "
    "resumes exactly where it stopped (model, optimizer, step, RNG, data position).",
  )
  p.set_defaults(body="train")
  options.add_config(p)
  options.add_data(p)
  p.add_argument(
    "--workdir",
    default=None,
    help="run directory (checkpoints, metrics.jsonl, tb/, loss.png); default: runs/<config name>",
  )
  p.add_argument(
    "--stop-after",
    type=int,
    default=None,
    metavar="N",
    help="stop (with a checkpoint) after N more steps; the schedule still spans train.steps",
  )
  p.add_argument(
    "--init-from",
    default=None,
    metavar="RUN",
    help="start from the parameters of another run (its newest checkpoint) or of one checkpoint "
    "(RUN/checkpoints/STEP): fine-tuning; the optimizer, step and data start fresh (train.init_from)",
  )
  p.add_argument(
    "--allow-data-change",
    action="store_true",
    help="resume although the data stream changed (data.* settings, train.batch_size): the new stream "
    "starts from its beginning and metrics.jsonl records the change",
  )
  options.add_progress(p)
  g = p.add_argument_group(
    "multi-host",
    "run the same command on every host; each process feeds its share of "
    "every batch and process 0 writes logs and reports",
  )
  g.add_argument(
    "--distributed",
    action="store_true",
    help="call jax.distributed.initialize() before anything else; on TPU pods, SLURM and Open MPI it "
    "finds the coordinator itself, elsewhere give the three options below",
  )
  g.add_argument(
    "--coordinator",
    default=None,
    metavar="HOST:PORT",
    help="address of process 0 (default: $JAX_COORDINATOR_ADDRESS or auto-detected)",
  )
  g.add_argument("--num-processes", type=int, default=None, metavar="N", help="number of processes")
  g.add_argument("--process-id", type=int, default=None, metavar="I", help="this process's index in [0, N)")
