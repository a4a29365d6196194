"""The flags of `chunklm data prepare`."""

from __future__ import annotations

from chunklm.cli import options


def add(sub) -> None:
  p = sub.add_parser(
    "data",
    help="prepare training data: any supported source into ArrayRecord shards",
    description="Training data tools.",
  )
  dsub = p.add_subparsers(dest="data_command", required=True, metavar="WHAT")
  t = dsub.add_parser(
    "prepare",
    help="convert sources into ArrayRecord shards of documents plus a manifest",
    description="Read every document of --data (text, directories, JSONL, FASTA/FASTQ, their .gz, Parquet, "
    "ArrayRecord) and write them, as read (no DNA cleaning), round-robin into ArrayRecord shards "
    "DIR/documents-00000-of-0000N.array_record plus DIR/manifest.json (documents, bytes, the sha256 of every "
    "input). DIR is then a --data source like any other. Parallel over input files, constant memory; written "
    "into DIR.tmp-<pid> and renamed at the end.",
  )
  t.set_defaults(body="data prepare")
  g = options.group(t, "data")
  g.add_argument("--data", action="append", required=True, metavar="PATH", help="a source to convert (repeatable)")
  g.add_argument(
    "--jsonl-field", default=None, metavar="F", help="JSONL key / Parquet column holding the text (data.jsonl_field)"
  )
  options.add_set(
    t, "a data.* setting, e.g. --set data.exclude='[\"*.log\"]' --set data.doc_separator='\\n\\n' (repeatable)"
  )
  o = options.group(t, "output")
  o.add_argument("--out", required=True, metavar="DIR", help="where to write the shards: a new or empty directory")
  o.add_argument(
    "--shards",
    type=int,
    default=0,
    metavar="N",
    help="number of shard files (default: one per 256 MB of input on disk, at least 1)",
  )
  o.add_argument("--workers", type=int, default=0, metavar="W", help="processes (default: one per CPU)")
  options.add_progress(t)
