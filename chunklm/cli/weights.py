"""`chunklm convert from-hnet | to-hnet`, `export` and `import`: weights in and out (`chunklm.interop`)."""

from __future__ import annotations

import json

from chunklm.config import load_config
from chunklm.errors import UserError
from chunklm.interop.convert import from_hnet, to_hnet
from chunklm.interop.weights import export_weights, import_weights
from chunklm.run.trained import read_config


def from_official(args) -> int:
  bad = [o for o in args.overrides if o.split("=", 1)[0].startswith("model.")]
  if bad:
    raise UserError(
      f"convert from-hnet: --set {bad[0]}: the model comes from the official config; change "
      "model settings when fine-tuning (train --init-from)"
    )
  out = from_hnet(args.checkpoint, args.config, args.out, load_config(None, args.overrides))
  cfg = read_config(out)
  layout = json.dumps(cfg.model.layout).replace('"', "'")  # tuples as the lists of the config file
  print(
    f"wrote {out}: {cfg.model.num_stages}-stage H-Net, layout {layout}, widths "
    f"{list(cfg.model.d_model)} (model.compat official); try: chunklm eval --workdir {out}"
  )
  return 0


def to_official(args) -> int:
  pt, js = to_hnet(args.workdir, args.out, args.dtype)
  print(f"wrote {pt} and {js}")
  return 0


def export(args) -> int:
  tensors, step = export_weights(args.workdir, args.out)
  print(f"wrote {args.out}: {tensors} tensors of step {step}, config in the metadata")
  return 0


def import_run(args) -> int:
  out = import_weights(args.weights, args.out)
  print(f"wrote {out}; fine-tune it with: chunklm train --init-from {out} --config {out}/config.yaml --workdir NEW_DIR")
  return 0
