"""Which body runs each command: `COMMANDS[args.body](args)`, the key set by the command's flags
(`set_defaults(body=...)` in cli/flags/). The bodies check their flags, call one library function and print what a
user reads; importing them loads jax, so the CLI imports this table only once the flags have parsed."""

from __future__ import annotations

from chunklm.cli import (
  bench,
  boundaries,
  classify,
  compare,
  data,
  generate,
  info,
  lm_eval,
  mergedna,
  mrt5,
  report,
  robustness,
  tasks,
  tokenizer,
  train,
  weights,
)
from chunklm.cli import eval as eval_command

COMMANDS = {
  "train": train.run,
  "eval": eval_command.run,
  "generate": generate.run,
  "compare": compare.run,
  "boundaries": boundaries.run,
  "report": report.run,
  "robustness": robustness.run,
  "lm-eval": lm_eval.run,
  "tasks make": tasks.make,
  "tasks noisy": tasks.noisy,
  "tokenizer train": tokenizer.train,
  "data prepare": data.prepare,
  "info": info.run,
  "classify train": classify.train,
  "classify eval": classify.evaluate,
  "classify predict": classify.predict,
  "convert from-hnet": weights.from_official,
  "convert to-hnet": weights.to_official,
  "export": weights.export,
  "import": weights.import_run,
  "mrt5 train": mrt5.train,
  "mrt5 eval": mrt5.evaluate,
  "mrt5 bench": mrt5.bench,
  "mrt5 compare": mrt5.compare,
  "mergedna train": mergedna.train,
  "mergedna eval": mergedna.evaluate,
  "mergedna boundaries": mergedna.boundaries,
  "bench train": bench.train,
  "bench generate": bench.generate,
  "bench score": bench.score,
  "bench kernels": bench.kernels,
  "bench capacity": bench.capacity,
  "bench compile": bench.compile_tpu,
  "bench data": bench.data,
  "bench cap": bench.cap,
}
