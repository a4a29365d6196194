"""The flags of the weights-in-and-out commands: `convert` (official H-Net checkpoints), `export` and
`import` (safetensors)."""

from __future__ import annotations


def add(sub) -> None:
  """Adds convert, export and import to the subcommand action `sub` of the chunklm parser."""
  p = sub.add_parser(
    "convert",
    help="official H-Net checkpoints (PyTorch) to a chunklm run, and back",
    description="Convert the official H-Net code's weights (a .pt state dict and its config JSON, "
    "e.g. the released hnet_2stage_XL) into a chunklm run directory that eval, "
    "generate, boundaries, robustness, classify and train --init-from accept, and a "
    "chunklm H-Net run back. The run computes as the official code does "
    "(model.compat: official). Needs torch: pip install 'chunklm[torch]'; .pt files "
    "are read with weights_only=True (tensors only, never arbitrary pickles).",
  )
  vsub = p.add_subparsers(dest="convert", required=True, metavar="WAY")
  _add_from_hnet(vsub)
  _add_to_hnet(vsub)
  _add_export(sub)
  _add_import(sub)


def _add_from_hnet(vsub) -> None:
  v = vsub.add_parser(
    "from-hnet",
    help="official .pt + config.json -> a chunklm run directory",
    description="Write a chunklm run directory (config.yaml, one parameters-only checkpoint, "
    "origin.json) from an official H-Net checkpoint. Data, training and evaluation "
    "settings are the defaults (change them with --set, or when fine-tuning).",
  )
  v.set_defaults(body="convert from-hnet")
  v.add_argument("--checkpoint", required=True, metavar="PT", help="the official state dict (.pt)")
  v.add_argument("--config", required=True, metavar="JSON", help="its official config JSON")
  v.add_argument("--out", required=True, metavar="DIR", help="the run directory to write (new or empty)")
  v.add_argument(
    "--set",
    dest="overrides",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override a non-model setting of the run's config, e.g. data.path=corpus/ (repeatable)",
  )


def _add_to_hnet(vsub) -> None:
  v = vsub.add_parser(
    "to-hnet",
    help="a chunklm H-Net run -> official model.pt + config.json",
    description="Write model.pt (a state dict with the official names) and config.json for the "
    "official H-Net code from a chunklm H-Net run (cosine router, select pooling). "
    "A run without model.compat: official gets a zero residual bias.",
  )
  v.set_defaults(body="convert to-hnet")
  v.add_argument("--workdir", required=True, help="the chunklm run (its newest checkpoint)")
  v.add_argument("--out", required=True, metavar="DIR", help="directory for model.pt and config.json (new or empty)")
  v.add_argument(
    "--dtype",
    default="float32",
    choices=("float32", "bfloat16"),
    help="tensor dtype in model.pt (default: %(default)s)",
  )


def _add_export(sub) -> None:
  p = sub.add_parser(
    "export",
    help="a run's parameters as one safetensors file (config inside, no pickles)",
    description="Write the newest checkpoint's parameters of a run as a safetensors file, with "
    "the resolved config, step and (token models) tokenizer as metadata; "
    "`chunklm import` turns it back into a run directory.",
  )
  p.set_defaults(body="export")
  p.add_argument("--workdir", required=True, help="the run to export")
  p.add_argument("--out", required=True, metavar="FILE", help="the file to write, e.g. model.safetensors")
  p.add_argument("--format", default="safetensors", choices=("safetensors",), help="default: %(default)s")


def _add_import(sub) -> None:
  p = sub.add_parser(
    "import",
    help="a safetensors file from `chunklm export` -> a run directory",
    description="Write a run directory (config.yaml, one parameters-only checkpoint, origin.json) "
    "from a file written by `chunklm export`; every command that reads a trained run "
    "accepts it, and `chunklm train --init-from` fine-tunes it.",
  )
  p.set_defaults(body="import")
  p.add_argument("--weights", required=True, metavar="FILE", help="the safetensors file")
  p.add_argument("--out", required=True, metavar="DIR", help="the run directory to write (new or empty)")
