"""Build the two downstream classification tasks of `chunklm classify` as JSONL files, deterministically.

  (a) DNA species of origin: reads of --read-len bases from each genome of a multi-record FASTA (one class per
      record); training reads from the first (1 - --test-fraction) of each genome, test reads from the rest, so
      the two sets come from disjoint regions (no base is shared).
  (b) Code language: --snippet-bytes windows of C, JavaScript and Python, split by file: C and JavaScript from a
      training and a held-out concatenation of sources (C first, then one JavaScript library that starts at the
      line --js-marker matches), Python from this interpreter's standard library (files hashed into train/test).

  python scripts/make_classify_tasks.py --dna genomes.fa --code-train code/train.txt --code-valid code/valid.txt \\
      --out tasks/

writes tasks/dna_species_{train,test}.jsonl, tasks/code_lang_{train,test}.jsonl and tasks/MANIFEST.json (the
inputs' sha256, the settings and the counts). Non-overlapping windows, sampled with --seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import sysconfig
from pathlib import Path


def sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def fasta_records(path: Path) -> list[tuple[str, bytes]]:
  records, header, parts = [], None, []
  for line in path.read_bytes().splitlines():
    if line.startswith(b">"):
      if header is not None:
        records.append((header, b"".join(parts)))
      header, parts = line[1:].decode("utf-8", "replace").strip(), []
    elif line.strip():
      parts.append(line.strip())
  if header is not None:
    records.append((header, b"".join(parts)))
  return records


def species_label(header: str) -> str:
  """'Staphylococcus aureus subsp. ...' -> 'S.aureus'; a header with no binomial name keeps its first word."""
  m = re.search(r"\b([A-Z][a-z]+) ([a-z]+)\b", header)
  return f"{m.group(1)[0]}.{m.group(2)}" if m else header.split()[0]


def windows(data: bytes, size: int) -> list[bytes]:
  return [data[i:i + size] for i in range(0, len(data) - size + 1, size)]


def sample(items: list, n: int, rng: random.Random, what: str) -> list:
  if len(items) < n:
    sys.exit(f"{what}: only {len(items)} windows, {n} asked for; lower the count")
  return rng.sample(items, n)


def dna_task(path: Path, labels: list[str] | None, read_len: int, test_fraction: float, n_train: int, n_test: int,
             rng: random.Random):
  records = fasta_records(path)
  labels = labels or [species_label(h) for h, _ in records]
  if len(labels) != len(records) or len(set(labels)) != len(labels):
    sys.exit(f"--dna-labels: need {len(records)} distinct labels, one per record of {path}, got {labels}")
  train, test = [], []
  for label, (_, seq) in zip(labels, records):
    cut = int(len(seq) * (1 - test_fraction))
    train += [(r, label) for r in sample(windows(seq[:cut], read_len), n_train, rng, f"{label} train region")]
    test += [(r, label) for r in sample(windows(seq[cut:], read_len), n_test, rng, f"{label} test region")]
  return train, test, labels


def split_c_js(path: Path, marker: str) -> tuple[bytes, bytes]:
  """(C part, JavaScript part): JavaScript starts at the comment opener just above the line `marker` matches."""
  lines = path.read_bytes().splitlines(keepends=True)
  pattern = re.compile(marker.encode())
  at = next((i for i, line in enumerate(lines) if pattern.search(line)), None)
  if at is None:
    sys.exit(f"{path}: no line matches --js-marker {marker!r}")
  while at > 0 and not lines[at].lstrip().startswith(b"/*"):
    at -= 1
  return b"".join(lines[:at]), b"".join(lines[at:])


def python_files() -> tuple[list[Path], list[Path]]:
  """The standard library's .py files (no tests, no site-packages), split by a hash of the relative path."""
  root = Path(sysconfig.get_paths()["stdlib"])
  files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts
                 and "tests" not in p.parts and "idlelib" not in p.parts)
  test = [p for p in files if int(hashlib.sha256(str(p.relative_to(root)).encode()).hexdigest(), 16) % 5 == 0]
  train = [p for p in files if p not in set(test)]
  return train, test


def code_task(train_txt: Path, valid_txt: Path, marker: str, size: int, n_train: int, n_test: int,
              rng: random.Random):
  c_train, js_train = split_c_js(train_txt, marker)
  c_test, js_test = split_c_js(valid_txt, marker)
  py_train, py_test = python_files()

  def py_windows(files):
    return [w for f in files for w in windows(f.read_bytes(), size)]

  pools = {"C": (windows(c_train, size), windows(c_test, size)),
           "JavaScript": (windows(js_train, size), windows(js_test, size)),
           "Python": (py_windows(py_train), py_windows(py_test))}
  train, test = [], []
  for label, (tr, te) in pools.items():
    train += [(w, label) for w in sample(tr, n_train, rng, f"{label} train")]
    test += [(w, label) for w in sample(te, n_test, rng, f"{label} test")]
  return train, test, {"python_files": [len(py_train), len(py_test)]}


def write_jsonl(path: Path, rows: list[tuple[bytes, str]] | list[tuple[bytes, str, dict]], rng: random.Random) -> None:
  """One {"text", "label"} line per row, in an order shuffled by `rng`; a row's third item (a dict, optional: where
  the text came from, say) adds fields after those two, which `chunklm classify` does not read."""
  rows = list(rows)
  rng.shuffle(rows)
  with path.open("w", encoding="utf-8") as f:
    for data, label, *where in rows:
      record = {"text": data.decode("utf-8", "replace"), "label": label, **(where[0] if where else {})}
      f.write(json.dumps(record) + "\n")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dna", type=Path, required=True, help="multi-record FASTA: one genome (class) per record")
  p.add_argument("--dna-labels", default=None, help="comma-separated class names in record order (default: from "
                                                    "the headers' species names)")
  p.add_argument("--code-train", type=Path, required=True, help="concatenated C then JavaScript sources (training)")
  p.add_argument("--code-valid", type=Path, required=True, help="the same for the held-out files")
  p.add_argument("--js-marker", default=r"^ \* (@license\s*$|jQuery JavaScript Library)",
                 help="regex of a line in the first JavaScript file's header comment (default: %(default)s)")
  p.add_argument("--read-len", type=int, default=200)
  p.add_argument("--test-fraction", type=float, default=0.2)
  p.add_argument("--snippet-bytes", type=int, default=512)
  p.add_argument("--train-per-class", type=int, default=1000)
  p.add_argument("--test-per-class", type=int, default=300)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", type=Path, required=True)
  a = p.parse_args()
  rng = random.Random(a.seed)
  a.out.mkdir(parents=True, exist_ok=True)
  labels = a.dna_labels.split(",") if a.dna_labels else None
  dna_train, dna_test, dna_labels = dna_task(a.dna, labels, a.read_len, a.test_fraction, a.train_per_class,
                                             a.test_per_class, rng)
  code_train, code_test, extra = code_task(a.code_train, a.code_valid, a.js_marker, a.snippet_bytes,
                                           a.train_per_class, a.test_per_class, rng)
  for name, rows in (("dna_species_train", dna_train), ("dna_species_test", dna_test),
                     ("code_lang_train", code_train), ("code_lang_test", code_test)):
    write_jsonl(a.out / f"{name}.jsonl", rows, rng)
  manifest = {"inputs": {str(x): sha256(x) for x in (a.dna, a.code_train, a.code_valid)},
              "python": sys.version.split()[0], "dna_labels": dna_labels, **extra,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
              "counts": {"dna_species": [len(dna_train), len(dna_test)], "code_lang": [len(code_train), len(code_test)]}}
  (a.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
  print(f"wrote {a.out}: DNA {len(dna_train)}/{len(dna_test)} reads ({', '.join(dna_labels)}), code "
        f"{len(code_train)}/{len(code_test)} snippets (C, JavaScript, Python)")


if __name__ == "__main__":
  main()
