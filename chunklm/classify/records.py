"""Labelled records for `chunklm classify`: JSONL lines {"text": ..., "label": ...} (plain or .gz), or FASTA whose headers carry
the label (the first group of a regular expression, e.g. `species=(\\w+)`). Text is classified as UTF-8 bytes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from chunklm.config import Refused, utf8
from chunklm.data.sources import as_path, jsonl_objects
from chunklm.errors import UserError
from chunklm.storage import files
from chunklm.storage.files import AnyPath


@dataclass(frozen=True)
class Record:
  data: bytes
  label: str | None  # None for unlabelled input to `classify predict`


def read_records(path: str | Path, label_regex: str | None = None, labelled: bool = True) -> list[Record]:
  """The records of a .jsonl file, or of a FASTA file (.fa, .fasta, .fna) with `label_regex` on the headers.
  Every problem is a one-line UserError naming the file and the line."""
  where = as_path(path, "--data")
  if not where.is_file():
    raise UserError(f"{where}: no such file")
  if where.suffix.lower() in (".fa", ".fasta", ".fna"):
    records = _read_fasta(where, label_regex, labelled)
  else:
    records = _read_jsonl(where, labelled)
  if not records:
    raise UserError(f"{where}: no records")
  return records


def _read_jsonl(path: AnyPath, labelled: bool) -> list[Record]:
  """The records of a JSONL file (data.sources.jsonl_objects: invalid JSON, non-UTF-8 lines and deep nesting are
  refused there); a text or label that is missing, of another type, or not UTF-8 (a lone surrogate) is one line."""
  records = []
  for n, obj in jsonl_objects(path):
    text, label = obj.get("text"), obj.get("label")
    if not isinstance(text, str):
      raise UserError(f'{path}:{n}: each line needs a string field "text"')
    if (labelled and label is None) or (label is not None and not isinstance(label, (str, int, float))):
      raise UserError(f'{path}:{n}: each line needs a field "label" (a string or number)')
    try:
      data = utf8(text, 'field "text"')
      name = None if label is None else utf8(str(label), 'field "label"').decode("utf-8")
    except Refused as e:
      raise UserError(f"{path}:{n}: {e}") from None
    records.append(Record(data, name))
  return records


def _read_fasta(path: AnyPath, label_regex: str | None, labelled: bool) -> list[Record]:
  if labelled and not label_regex:
    raise UserError(f"{path}: FASTA records need --label-regex to read each label from its header")
  try:
    pattern = re.compile(label_regex) if label_regex else None
  except re.error as e:
    raise UserError(f"--label-regex {label_regex!r}: {e}") from None
  if pattern is not None and pattern.groups < 1:
    raise UserError(f"--label-regex {label_regex!r} needs one group, e.g. 'species=(\\w+)'")
  records: list[Record] = []
  parts: list[bytes] = []
  header: str | None = None
  line_no = 0

  def flush():
    if header is None:
      return
    label = None
    if pattern is not None:
      m = pattern.search(header)
      if m is None and labelled:
        raise UserError(f"{path}:{line_no}: --label-regex {label_regex!r} does not match the header {header!r}")
      label = m.group(1) if m else None
    records.append(Record(b"".join(parts), label))

  with files.open_binary(path) as f:
    for n, raw in enumerate(f, 1):
      line = raw.strip()
      if line.startswith(b">"):
        flush()
        header, parts, line_no = line[1:].decode("utf-8", "replace"), [], n
      elif line:
        if header is None:
          raise UserError(f"{path}:{n}: sequence before the first '>' header")
        parts.append(line)
  flush()
  return records


def class_list(records: list[Record]) -> list[str]:
  """The sorted labels; fewer than two is an error (nothing to tell apart)."""
  classes = sorted({r.label for r in records if r.label is not None})
  if len(classes) < 2:
    raise UserError(f"need at least 2 classes to classify, found {len(classes)}: {classes}")
  return classes
