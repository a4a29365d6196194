"""`chunklm data prepare`: sources into ArrayRecord shards (`chunklm.data.prepare.prepare`)."""

from __future__ import annotations

from chunklm.cli.options import config_overrides
from chunklm.config import load_config
from chunklm.data.prepare import prepare as prepare_data
from chunklm.errors import UserError


def prepare(args) -> int:
  overrides = config_overrides(args)
  if args.jsonl_field is not None:
    overrides.append(f"data.jsonl_field={args.jsonl_field}")
  other = [o for o in overrides if not o.startswith("data.")]
  if other:
    raise UserError(f"data prepare: --set takes data.* settings only, got {other[0]!r}")
  cfg = load_config(None, overrides).data
  res = prepare_data(cfg, args.out, shards=args.shards, workers=args.workers, show_progress=not args.no_progress)
  print(
    f"prepared {res.out}: {res.documents:,} documents, {res.bytes / 1e6:,.1f} MB of text in {res.shards} shards "
    f"in {res.seconds:.1f} s ({res.mb_per_s:.1f} MB/s)"
  )
  return 0
