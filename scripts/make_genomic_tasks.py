"""Build genomic classification tasks for `chunklm classify` offline, from the genomes of FASTA files (no downloads,
no annotation files): labels are derived from the sequence itself, deterministically.

  python scripts/make_genomic_tasks.py --dna genomes.fa --out runs/genomic_tasks

writes OUT/dna_coding_{train,test}.jsonl, OUT/dna_gc_{train,test}.jsonl, OUT/dna_repeat_{train,test}.jsonl and
OUT/MANIFEST.json (the inputs' sha256, the settings, the rules, the thresholds and the per-class counts per split).
Give it an --out of its own: scripts/make_classify_tasks.py (the species task) writes a MANIFEST.json too.

Windows. Every record (genome) is cut at (1 - --test-fraction) of its length: training windows tile the part before
the cut, test windows the part after it, each tiling starting at its part's first base with a stride of --read-len,
so windows do not overlap, no window crosses the cut and the two splits share no base. A window with a base other
than A, C, G, T (after upper-casing) is not used. The three tasks label the same windows:

  dna_coding (coding / noncoding): open reading frames (ORFs) are found on the whole record in all six frames (both
      strands): an ORF runs from an ATG to the next in-frame stop (TAA, TAG, TGA), from the first ATG after the
      previous in-frame stop, so nested ATGs give no extra ORF; its length counts the codons from the ATG up to the
      stop, the stop not counted, and its span includes the stop. A window is `coding` if it lies inside one ORF of
      at least --min-orf codons (default 100, 300 bases: in uniformly random sequence an ORF from an ATG reaches 100
      codons with probability (61/64)^100, under 1 %, while most bacterial genes are longer), `noncoding` if it
      overlaps no ORF of at least --short-orf codons (default 50: about 9 % of random ORFs reach it, proteins that
      short are rare, and 50 leaves enough noncoding windows in compact bacterial
      genomes, where some 88 % of the bases are coding); windows in between are not used. Genes that start at GTG or
      TTG are found from their first in-frame ATG, so their first codons can look noncoding; the chromosomes'
      circularity is ignored (no ORF wraps around). Classes are balanced within each record, so that a genome's base
      composition does not give the class away.
  dna_gc (low / medium / high): the GC fraction of the window, against the tertiles of the GC fractions of all the
      training windows (every record pooled); windows exactly at a tertile are not used. Test windows use the
      training thresholds. A sanity task (decidable by counting), balanced over the pooled records.
  dna_repeat (repeat / unique): a window's repeat cover is the fraction of its bases that lie in a k-mer
      (--repeat-k, default 8) occurring at least twice in the window (direct repeats, tandem or not). `repeat` if the
      cover is at least --repeat-min (default 0.2: 40 of 200 bases, e.g. a 20-base sequence twice), `unique` if below
      --unique-max (default 0.1: two chance copies of one 8-mer cover 16 bases, 0.08); in between not used. Distinct
      k-mer counts (k = 3, 4) were not used: in these genomes they mostly measure AT-richness (the GC task again),
      and tandem repeats of period 1-6 and 15 or more bases occur in only about 170 of 52,000 windows. A sanity task,
      balanced within each record.

Balancing: each class gets the same number of windows per split, at most --max-per-class (training) or
--max-test-per-class (test); a task balanced within records takes min over classes of each record's windows,
scaled down proportionally to the cap. Sampling is seeded with --seed (one stream per task and split), as is the
order of the lines. Each line is {"text", "label", "record", "start"}: the record's first header word and the
window's 0-based start, so the split can be checked; `chunklm classify` reads text and label.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # the sibling script's helpers, whether this file is run or imported from elsewhere
  sys.path.insert(0, HERE)
from make_classify_tasks import fasta_records, sha256, write_jsonl  # noqa: E402

TASKS = {
  "dna_coding": ("coding", "noncoding"),
  "dna_gc": ("low", "medium", "high"),
  "dna_repeat": ("repeat", "unique"),
}
PER_RECORD = {"dna_coding": True, "dna_gc": False, "dna_repeat": True}  # classes balanced within each record
CODES = np.full(256, 4, np.uint8)  # A C G T -> 0 1 2 3, anything else 4
CODES[list(b"ACGT")] = np.arange(4, dtype=np.uint8)
COMPLEMENT = bytes.maketrans(b"ACGT", b"TGCA")


class TaskError(ValueError):
  """A problem with the inputs or settings, told in one line (exit code 2)."""


@dataclass(frozen=True)
class Settings:
  read_len: int = 200  # bases per window
  test_fraction: float = 0.2  # the tail of each record that test windows come from
  min_orf: int = 100  # codons: a coding window lies inside an ORF at least this long
  short_orf: int = 50  # codons: a noncoding window overlaps no ORF at least this long
  repeat_k: int = 8  # the k of the repeat cover
  repeat_min: float = 0.2  # repeat cover at or above this: `repeat`
  unique_max: float = 0.1  # repeat cover below this: `unique`
  max_per_class: int = 1000  # training windows per class, at most
  max_test_per_class: int = 300  # test windows per class, at most
  seed: int = 0

  def __post_init__(self):
    problems = [
      (self.read_len < 1, f"--read-len {self.read_len}: must be at least 1"),
      (not 0 < self.test_fraction < 1, f"--test-fraction {self.test_fraction}: must be between 0 and 1"),
      (self.short_orf < 1, f"--short-orf {self.short_orf}: must be at least 1 codon"),
      (self.min_orf < self.short_orf, f"--min-orf {self.min_orf} is below --short-orf {self.short_orf}"),
      (not 1 <= self.repeat_k <= 31, f"--repeat-k {self.repeat_k}: must be from 1 to 31"),
      (self.repeat_k > self.read_len, f"--repeat-k {self.repeat_k} is longer than --read-len {self.read_len}"),
      (
        not 0 < self.unique_max <= self.repeat_min <= 1,
        f"--unique-max {self.unique_max} and --repeat-min {self.repeat_min}: need 0 < unique-max <= repeat-min <= 1",
      ),
      (self.max_per_class < 1, f"--max-per-class {self.max_per_class}: must be at least 1"),
      (self.max_test_per_class < 1, f"--max-test-per-class {self.max_test_per_class}: must be at least 1"),
    ]
    for bad, message in problems:
      if bad:
        raise TaskError(message)


@dataclass
class Genome:
  """One record's windows and their features; index 0 is the training split, 1 the test split."""

  name: str
  seq: bytes
  cut: int
  starts: list[np.ndarray] = field(default_factory=list)  # [split] (W,) window starts
  labels: dict[str, list[np.ndarray]] = field(default_factory=dict)  # task -> [split] (W,) class index, -1 unused
  gc: list[np.ndarray] = field(default_factory=list)  # [split] (W,) GC fraction


def read_genomes(paths: list[Path], test_fraction: float) -> list[Genome]:
  genomes = []
  for path in paths:
    if not path.is_file():
      raise TaskError(f"{path}: no such file")
    records = fasta_records(path)
    if not records:
      raise TaskError(f"{path}: no FASTA records (no line starts with '>')")
    for header, seq in records:
      if not seq:
        raise TaskError(f"{path}: record {header!r} has no sequence")
      name = header.split()[0] if header.split() else f"record{len(genomes) + 1}"
      if any(g.name == name for g in genomes):
        raise TaskError(f"{path}: two records are named {name!r} (the first word of the header names a record)")
      genomes.append(Genome(name, seq.upper(), int(len(seq) * (1 - test_fraction))))
  return genomes


def orfs(seq: bytes, min_codons: int) -> np.ndarray:
  """(N, 3) int64 rows (start, end, codons) of the ORFs of at least `min_codons` codons on both strands of `seq`, in
  forward coordinates: bases [start, end) hold the ATG ... stop (end - start = 3 * codons + 3), in any order."""
  n = len(seq)
  forward = _strand_orfs(seq, min_codons)
  reverse = _strand_orfs(seq.translate(COMPLEMENT)[::-1], min_codons)
  reverse[:, :2] = n - reverse[:, 1::-1]
  return np.concatenate([forward, reverse])


def _strand_orfs(seq: bytes, min_codons: int) -> np.ndarray:
  if len(seq) < 6:
    return np.zeros((0, 3), np.int64)
  b = np.frombuffer(seq, np.uint8)
  c0, c1, c2 = b[:-2], b[1:-1], b[2:]
  T, A, G = ord("T"), ord("A"), ord("G")
  is_stop = (c0 == T) & (((c1 == A) & ((c2 == A) | (c2 == G))) | ((c1 == G) & (c2 == A)))
  is_atg = (c0 == A) & (c1 == T) & (c2 == G)
  positions = np.arange(len(b) - 2)
  found = []
  for frame in range(3):
    stops, atgs = positions[frame::3][is_stop[frame::3]], positions[frame::3][is_atg[frame::3]]
    if not len(stops) or not len(atgs):
      continue
    after = np.concatenate([[frame], stops[:-1] + 3])  # where each stop's ORF may start: after the previous stop
    first = np.searchsorted(atgs, after)  # the first ATG from there
    start = atgs[np.minimum(first, len(atgs) - 1)]
    codons = (stops - start) // 3
    keep = (first < len(atgs)) & (start < stops) & (codons >= min_codons)
    found.append(np.stack([start[keep], stops[keep] + 3, codons[keep]], 1))
  return np.concatenate(found) if found else np.zeros((0, 3), np.int64)


def coding_labels(seq: bytes, starts: np.ndarray, read_len: int, min_orf: int, short_orf: int) -> np.ndarray:
  """(W,) 0 (coding: inside one ORF of >= min_orf codons), 1 (noncoding: overlaps no ORF of >= short_orf codons)
  or -1 for the windows [starts, starts + read_len) of `seq`."""
  found = orfs(seq, short_orf)
  ends = starts + read_len
  inside = np.zeros(len(starts), bool)
  long_orfs = found[found[:, 2] >= min_orf]
  if len(long_orfs):
    long_orfs = long_orfs[np.argsort(long_orfs[:, 0], kind="stable")]
    reach = np.maximum.accumulate(long_orfs[:, 1])  # the furthest end of the ORFs starting at or before each
    last = np.searchsorted(long_orfs[:, 0], starts, side="right") - 1
    inside = (last >= 0) & (reach[np.maximum(last, 0)] >= ends)
  depth = np.zeros(len(seq) + 1, np.int64)  # bases covered by any ORF of >= short_orf codons
  np.add.at(depth, found[:, 0], 1)
  np.add.at(depth, found[:, 1], -1)
  covered = np.concatenate([[0], np.cumsum(np.cumsum(depth)[:-1] > 0)])
  clear = covered[ends] == covered[starts]
  return np.where(inside, 0, np.where(clear, 1, -1))


def window_codes(seq: bytes, starts: np.ndarray, read_len: int) -> np.ndarray:
  """(W, read_len) uint8 base codes (A C G T -> 0..3, else 4) of the windows at `starts`."""
  codes = CODES[np.frombuffer(seq, np.uint8)]
  return codes[starts[:, None] + np.arange(read_len)[None, :]]


def repeat_cover(codes_WxL: np.ndarray, k: int) -> np.ndarray:
  """(W,) the fraction of each window's bases inside a k-mer that occurs at least twice in that window."""
  W, L = codes_WxL.shape
  n = L - k + 1
  kmers_WxN = np.zeros((W, n), np.int64)
  for j in range(k):
    kmers_WxN = kmers_WxN * 4 + codes_WxL[:, j : j + n]
  order_WxN = np.argsort(kmers_WxN, axis=1, kind="stable")
  sorted_WxN = np.take_along_axis(kmers_WxN, order_WxN, axis=1)
  same = sorted_WxN[:, 1:] == sorted_WxN[:, :-1]
  repeated_sorted = np.zeros((W, n), bool)
  repeated_sorted[:, 1:] |= same
  repeated_sorted[:, :-1] |= same
  repeated_WxN = np.zeros((W, n), bool)
  np.put_along_axis(repeated_WxN, order_WxN, repeated_sorted, axis=1)
  covered_WxL = np.zeros((W, L), bool)
  for j in range(k):
    covered_WxL[:, j : j + n] |= repeated_WxN
  return covered_WxL.mean(axis=1)


def label_windows(genomes: list[Genome], s: Settings) -> dict[str, float]:
  """Fill each genome's windows and labels; returns the GC thresholds (the training windows' tertiles)."""
  for g in genomes:
    L = s.read_len
    tiles = [np.arange(0, g.cut - L + 1, L), np.arange(g.cut, len(g.seq) - L + 1, L)]
    codes = [window_codes(g.seq, t, L) for t in tiles]
    acgt = [(c < 4).all(axis=1) for c in codes]
    g.starts = [t[ok] for t, ok in zip(tiles, acgt)]
    codes = [c[ok] for c, ok in zip(codes, acgt)]
    g.gc = [((c == 1) | (c == 2)).mean(axis=1) if len(c) else np.zeros(0) for c in codes]
    g.labels["dna_coding"] = [coding_labels(g.seq, t, L, s.min_orf, s.short_orf) for t in g.starts]
    cover = [
      np.concatenate([repeat_cover(c[i : i + 4096], s.repeat_k) for i in range(0, len(c), 4096)])
      if len(c)
      else np.zeros(0)
      for c in codes
    ]
    g.labels["dna_repeat"] = [np.where(r >= s.repeat_min, 0, np.where(r < s.unique_max, 1, -1)) for r in cover]
  train_gc = np.concatenate([g.gc[0] for g in genomes])
  if not len(train_gc):
    raise TaskError(f"no training window of {s.read_len} A/C/G/T bases in any record: lower --read-len")
  low, high = (float(x) for x in np.quantile(train_gc, [1 / 3, 2 / 3]))
  for g in genomes:
    g.labels["dna_gc"] = [gc_labels(gc, low, high) for gc in g.gc]
  return {"low_below": low, "high_above": high}


def gc_labels(gc: np.ndarray, low: float, high: float) -> np.ndarray:
  """(W,) 0 (GC fraction below `low`), 1 (between), 2 (above `high`) or -1 (exactly at a threshold)."""
  return np.select([gc < low, (gc > low) & (gc < high), gc > high], [0, 1, 2], -1)


def quotas(available: list[int], cap: int) -> list[int]:
  """Per-group counts summing to min(sum(available), cap), proportional to `available` (largest remainders)."""
  total = sum(available)
  if total <= cap:
    return list(available)
  exact = [a * cap / total for a in available]
  out = [int(x) for x in exact]
  for i in sorted(range(len(available)), key=lambda i: out[i] - exact[i])[: cap - sum(out)]:
    out[i] += 1
  return out


def sample_task(genomes: list[Genome], task: str, split: int, read_len: int, cap: int, rng: random.Random):
  """The balanced, capped windows of one task and split: rows (bases, label, where) and per-record availability."""
  classes = TASKS[task]
  pools = [[g.starts[split][g.labels[task][split] == c].tolist() for c in range(len(classes))] for g in genomes]
  available = {g.name: dict(zip(classes, map(len, p))) for g, p in zip(genomes, pools)}
  if PER_RECORD[task]:
    per_record = quotas([min(map(len, p)) for p in pools], cap)
    picks = [[rng.sample(p[c], q) for c in range(len(classes))] for p, q in zip(pools, per_record)]
  else:  # one pool over the records: each class gets the same total, spread over records by availability
    n = min(min(sum(len(p[c]) for p in pools) for c in range(len(classes))), cap)
    picks = [[[] for _ in classes] for _ in genomes]
    for c in range(len(classes)):
      everywhere = [(r, start) for r, p in enumerate(pools) for start in p[c]]
      for r, start in rng.sample(everywhere, n):
        picks[r][c].append(start)
  rows = [
    (g.seq[start : start + read_len], classes[c], {"record": g.name, "start": start})
    for g, record_picks in zip(genomes, picks)
    for c, starts in enumerate(record_picks)
    for start in starts
  ]
  return rows, available


def build_tasks(dna: list[Path], out: Path, s: Settings) -> dict:
  """Write the three tasks' JSONL files and MANIFEST.json under `out`; returns the manifest."""
  genomes = read_genomes(dna, s.test_fraction)
  thresholds = label_windows(genomes, s)
  caps = (s.max_per_class, s.max_test_per_class)
  tasks = {}
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise TaskError(f"--out {out}: {e.strerror}") from None
  for task, classes in TASKS.items():
    counts, available, gc_mean = {}, {}, {}
    for split, split_name in enumerate(("train", "test")):
      rng = random.Random(f"{s.seed}/{task}/{split_name}")
      rows, available[split_name] = sample_task(genomes, task, split, s.read_len, caps[split], rng)
      counts[split_name] = {c: sum(row[1] == c for row in rows) for c in classes}
      if not rows:
        totals = {c: sum(a[c] for a in available[split_name].values()) for c in classes}
        raise TaskError(
          f"{task}: no {split_name} windows for some class (available: {totals}"
          f"{', balanced within each record' if PER_RECORD[task] else ''}); change --read-len or the thresholds"
        )
      gc_mean[split_name] = {
        c: round(float(np.mean([gc_of(row[0]) for row in rows if row[1] == c])), 4) for c in classes
      }
      write_jsonl(out / f"{task}_{split_name}.jsonl", rows, rng)
    tasks[task] = {
      "classes": list(classes),
      "rule": RULES[task].format(s=s, **thresholds),
      "balanced": "within each record" if PER_RECORD[task] else "over all records pooled",
      "counts": counts,
      "available": available,
      "gc_mean": gc_mean,
    }
  tasks["dna_gc"]["thresholds"] = thresholds
  manifest = {
    "inputs": {str(p): sha256(p) for p in dna},
    "python": sys.version.split()[0],
    "numpy": np.__version__,
    "records": [{"name": g.name, "length": len(g.seq), "cut": g.cut} for g in genomes],
    "settings": vars(s) | {"dna": [str(p) for p in dna], "out": str(out)},
    "windows": "tiles of read_len bases from each part's first base (train [0, cut), test [cut, length)); "
    "only A/C/G/T windows",
    "tasks": tasks,
  }
  (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
  return manifest


def gc_of(bases: bytes) -> float:
  return (bases.count(b"G") + bases.count(b"C")) / len(bases)


RULES = {
  "dna_coding": "ORF = ATG to the next in-frame stop (TAA/TAG/TGA), first ATG after the previous stop, 6 frames, "
  "found on the whole record; coding: window inside one ORF of >= {s.min_orf} codons; noncoding: window overlaps no "
  "ORF of >= {s.short_orf} codons",
  "dna_gc": "GC fraction of the window: low < {low_below:.4f} < medium < {high_above:.4f} < high (the training "
  "windows' tertiles; windows at a threshold unused)",
  "dna_repeat": "repeat cover = fraction of the window's bases inside a {s.repeat_k}-mer occurring >= 2 times in the "
  "window; repeat: cover >= {s.repeat_min}; unique: cover < {s.unique_max}",
}


def main(argv: list[str] | None = None) -> None:
  d = Settings()
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument(
    "--dna",
    type=Path,
    nargs="+",
    required=True,
    metavar="FASTA",
    help="FASTA files, one genome or chromosome per record",
  )
  p.add_argument("--out", type=Path, required=True, help="folder for the JSONL files and MANIFEST.json")
  p.add_argument("--read-len", type=int, default=d.read_len, help="bases per window (default: %(default)s)")
  p.add_argument(
    "--test-fraction",
    type=float,
    default=d.test_fraction,
    help="the tail of each record that test windows come from (default: %(default)s)",
  )
  p.add_argument(
    "--min-orf",
    type=int,
    default=d.min_orf,
    help="codons: a coding window lies inside an ORF at least this long (default: %(default)s)",
  )
  p.add_argument(
    "--short-orf",
    type=int,
    default=d.short_orf,
    help="codons: a noncoding window overlaps no ORF at least this long (default: %(default)s)",
  )
  p.add_argument("--repeat-k", type=int, default=d.repeat_k, help="k of the repeat cover (default: %(default)s)")
  p.add_argument(
    "--repeat-min",
    type=float,
    default=d.repeat_min,
    help="repeat cover at or above this: repeat (default: %(default)s)",
  )
  p.add_argument(
    "--unique-max", type=float, default=d.unique_max, help="repeat cover below this: unique (default: %(default)s)"
  )
  p.add_argument(
    "--max-per-class",
    type=int,
    default=d.max_per_class,
    help="training windows per class, at most (default: %(default)s)",
  )
  p.add_argument(
    "--max-test-per-class",
    type=int,
    default=d.max_test_per_class,
    help="test windows per class, at most (default: %(default)s)",
  )
  p.add_argument("--seed", type=int, default=d.seed, help="sampling and line order (default: %(default)s)")
  a = p.parse_args(argv)
  try:
    settings = Settings(**{k: v for k, v in vars(a).items() if k not in ("dna", "out")})
    manifest = build_tasks(a.dna, a.out, settings)
  except TaskError as e:
    print(f"make_genomic_tasks: error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
  for task, info in manifest["tasks"].items():
    print(
      f"{task}: "
      + "; ".join(
        f"{split} " + ", ".join(f"{c} {n}" for c, n in counts.items()) for split, counts in info["counts"].items()
      )
    )
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
