"""scripts/make_genomic_tasks.py: ORFs on both strands against a brute-force scan, the labels of planted regions (a
long ORF on each strand, a stop-riddled stretch, GC-rich and AT-rich stretches, a tandem repeat), disjoint train and
test regions, determinism by seed, files `chunklm classify` reads, and one-line errors with exit code 2."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chunklm.classify.records import class_list, read_records

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_genomic_tasks.py"
STOPS = ("TAA", "TAG", "TGA")
SENSE = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in STOPS]


def _load():
  spec = importlib.util.spec_from_file_location("make_genomic_tasks", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


genomic = _load()


def revcomp(s: str) -> str:
  return s.translate(str.maketrans("ACGT", "TGCA"))[::-1]


def brute_orfs(seq: str, min_codons: int) -> set[tuple[int, int]]:
  """Every ATG walked codon by codon to its stop; per stop the earliest ATG is the ORF; forward coordinates."""
  n, found = len(seq), set()
  for forward, s in ((True, seq), (False, revcomp(seq))):
    earliest: dict[int, int] = {}
    for i in range(n - 2):
      if s[i : i + 3] != "ATG":
        continue
      j = i
      while j + 3 <= n and s[j : j + 3] not in STOPS:
        j += 3
      if j + 3 <= n:
        earliest.setdefault(j, i)  # i rises, so the first ATG seen for a stop is its earliest
    for j, i in earliest.items():
      if (j - i) // 3 >= min_codons:
        found.add((i, j + 3) if forward else (n - j - 3, n - i))
  return found


def random_dna(rng: random.Random, n: int, gc: float = 0.5) -> str:
  return "".join(rng.choice("GC" if rng.random() < gc else "AT") for _ in range(n))


def planted_orf(rng: random.Random, codons: int) -> str:
  """A stop, then ATG + codons - 1 sense codons + TAA: the ORF starts 3 bases in, whatever precedes it."""
  return "TAA" + "ATG" + "".join(rng.choice(SENSE) for _ in range(codons - 1)) + "TAA"


def genome(rng: random.Random) -> tuple[str, dict[str, list[tuple[int, int]]]]:
  """Random DNA with planted blocks (each twice, so both halves hold one); the blocks' [start, end) by kind."""
  blocks = [
    ("random", lambda: random_dna(rng, 900)),
    ("orf", lambda: planted_orf(rng, 150)),
    ("random", lambda: random_dna(rng, 600)),
    ("orf", lambda: revcomp(planted_orf(rng, 150))),
    ("stops", lambda: "TAAT" * 120),  # a stop within 12 bases in every frame of both strands, no ATG
    ("random", lambda: random_dna(rng, 600)),
    ("gc_rich", lambda: random_dna(rng, 600, gc=0.95)),
    ("random", lambda: random_dna(rng, 600)),
    ("at_rich", lambda: random_dna(rng, 600, gc=0.05)),
    ("random", lambda: random_dna(rng, 600)),
    ("tandem", lambda: "ACCGTTAGCA" * 60),
  ]
  parts, where, at = [], {}, 0
  for _ in range(2):
    for kind, make in blocks:
      piece = make()
      where.setdefault(kind, []).append((at, at + len(piece)))
      parts.append(piece)
      at += len(piece)
  return "".join(parts), where


def write_fasta(path: Path, seeds=(0, 1)) -> dict[str, tuple[str, dict]]:
  records = {f"chr{s}": genome(random.Random(s)) for s in seeds}
  path.write_text(
    "".join(
      f">{name} synthetic\n" + "\n".join(seq[i : i + 70] for i in range(0, len(seq), 70)) + "\n"
      for name, (seq, _) in records.items()
    )
  )
  return records


SMALL = ["--read-len", "60", "--test-fraction", "0.5", "--max-per-class", "40", "--max-test-per-class", "40"]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
  try:
    genomic.main([str(a) for a in argv])
    code = 0
  except SystemExit as e:
    code = e.code
  out, err = capsys.readouterr()
  return code, out, err


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_orfs_on_both_strands_match_a_brute_force_scan(seed):
  rng = random.Random(seed)
  seq = random_dna(rng, 700) + planted_orf(rng, 40) + random_dna(rng, 500) + revcomp(planted_orf(rng, 40))
  seq += random_dna(rng, 300 + seed)  # every length modulo 3
  for min_codons in (5, 30):
    found = genomic.orfs(seq.encode(), min_codons)
    assert set(map(tuple, found[:, :2].tolist())) == brute_orfs(seq, min_codons)
    assert (found[:, 1] - found[:, 0] == 3 * found[:, 2] + 3).all() and (found[:, 2] >= min_codons).all()
  spans = set(map(tuple, genomic.orfs(seq.encode(), 35)[:, :2].tolist()))
  assert (703, 703 + 123) in spans  # the planted forward ORF: 40 codons and the stop
  end = 700 + 126 + 500 + 126
  assert (end - 126, end - 3) in spans  # the planted reverse ORF, read on the other strand
  assert genomic.orfs(b"ATGAA", 1).shape == (0, 3)


def test_repeat_cover_counts_bases_in_kmers_seen_twice():
  rng = random.Random(3)
  windows = ["ACCGTTAGCA" * 6, random_dna(rng, 60), "A" * 60, "GATTACAGGC" + random_dna(rng, 40) + "GATTACAGGC"]
  for k in (3, 8):
    codes = np.stack([genomic.CODES[np.frombuffer(w.encode(), np.uint8)] for w in windows])
    got = genomic.repeat_cover(codes, k)
    for w, cover in zip(windows, got):
      kmers = [w[i : i + k] for i in range(len(w) - k + 1)]
      covered = {i + j for i, m in enumerate(kmers) if kmers.count(m) > 1 for j in range(k)}
      assert cover == pytest.approx(len(covered) / len(w))
  assert got[0] == 1.0 and got[2] == 1.0 and got[3] >= 20 / 60


def test_gc_classes_at_the_training_tertiles_and_none_at_a_tie(tmp_path):
  gc = np.array([0.2, 0.4, 0.5, 0.6, 0.8])
  assert genomic.gc_labels(gc, 0.4, 0.6).tolist() == [0, -1, 1, -1, 2]
  write_fasta(tmp_path / "g.fa")
  settings = genomic.Settings(read_len=60, test_fraction=0.5)
  genomes = genomic.read_genomes([tmp_path / "g.fa"], settings.test_fraction)
  thresholds = genomic.label_windows(genomes, settings)
  train_gc = np.concatenate([g.gc[0] for g in genomes])
  assert [thresholds["low_below"], thresholds["high_above"]] == pytest.approx(np.quantile(train_gc, [1 / 3, 2 / 3]))
  for g in genomes:
    for split in (0, 1):  # the test split is cut at the training thresholds too
      assert (g.labels["dna_gc"][split] == genomic.gc_labels(g.gc[split], *thresholds.values())).all()


def test_labels_of_planted_regions(tmp_path):
  records = write_fasta(tmp_path / "g.fa")
  settings = genomic.Settings(read_len=60, test_fraction=0.5)
  genomes = genomic.read_genomes([tmp_path / "g.fa"], settings.test_fraction)
  thresholds = genomic.label_windows(genomes, settings)
  assert 0.1 < thresholds["low_below"] < thresholds["high_above"] < 0.9
  expected = {
    "orf": ("dna_coding", "coding"),
    "gc_rich": ("dna_gc", "high"),
    "at_rich": ("dna_gc", "low"),
    "tandem": ("dna_repeat", "repeat"),
  }
  for g in genomes:
    seq, where = records[g.name]
    for split in (0, 1):
      starts = g.starts[split]
      labels = {t: [genomic.TASKS[t][c] if c >= 0 else None for c in g.labels[t][split]] for t in genomic.TASKS}
      for kind, (task, label) in expected.items():
        pad = 3 if kind == "orf" else 0  # the stop planted before the ORF (after it on the reverse strand)
        inside = [i for i, s in enumerate(starts) for a, b in where[kind] if a + pad <= s and s + 60 <= b - pad]
        assert inside and all(labels[task][i] == label for i in inside), (g.name, split, kind)
      margin = [i for i, s in enumerate(starts) for a, b in where["stops"] if a + 12 <= s and s + 60 <= b - 12]
      assert margin and all(labels["dna_coding"][i] == "noncoding" for i in margin)
      # every window's coding label against the brute-force ORFs of the whole record
      long_orfs, short_orfs = brute_orfs(seq, 100), brute_orfs(seq, 50)
      for i, s in enumerate(starts):
        want = (
          "coding"
          if any(a <= s and s + 60 <= b for a, b in long_orfs)
          else "noncoding"
          if not any(a < s + 60 and s < b for a, b in short_orfs)
          else None
        )
        assert labels["dna_coding"][i] == want


def test_files_disjoint_regions_balanced_and_readable(tmp_path, capsys):
  records = write_fasta(tmp_path / "g.fa")
  code, out, err = run(["--dna", tmp_path / "g.fa", "--out", tmp_path / "t", *SMALL], capsys)
  assert code == 0, err
  assert "dna_coding: train coding" in out
  manifest = json.loads((tmp_path / "t" / "MANIFEST.json").read_text())
  assert list(manifest["inputs"].values()) == [genomic.sha256(tmp_path / "g.fa")]
  cuts = {r["name"]: r["cut"] for r in manifest["records"]}
  assert cuts == {name: len(seq) // 2 for name, (seq, _) in records.items()}
  for task, classes in genomic.TASKS.items():
    info = manifest["tasks"][task]
    assert info["classes"] == list(classes) and info["rule"]
    spans = {}
    for split in ("train", "test"):
      path = tmp_path / "t" / f"{task}_{split}.jsonl"
      rows = [json.loads(line) for line in path.read_text().splitlines()]
      counts = info["counts"][split]
      assert len(set(counts.values())) == 1 and 0 < counts[classes[0]] <= 40  # balanced, capped
      got = read_records(path)  # chunklm's own reader
      assert class_list(got) == sorted(classes)
      assert {c: sum(r.label == c for r in got) for c in classes} == counts
      for row, record in zip(rows, got):
        seq, cut = records[row["record"]][0], cuts[row["record"]]
        s = row["start"]
        assert record.data == seq[s : s + 60].encode() and len(record.data) == 60
        assert (s + 60 <= cut) if split == "train" else (s >= cut)  # no window crosses the cut
        assert (s - (0 if split == "train" else cut)) % 60 == 0  # on the tiling: no two windows overlap
        spans.setdefault(split, set()).update((row["record"], b) for b in range(s, s + 60))
      if genomic.PER_RECORD[task]:  # as many of each class from every record
        per_record = {(r["record"], r["label"]) for r in rows}
        assert all(
          sum(r["record"] == n and r["label"] == c for r in rows)
          == sum(r["record"] == n and r["label"] == classes[0] for r in rows)
          for n, c in per_record
        )
    assert not spans["train"] & spans["test"]


def test_quotas_are_proportional_and_capped():
  assert genomic.quotas([10, 20, 30], 100) == [10, 20, 30]
  assert genomic.quotas([10, 20, 30], 6) == [1, 2, 3]
  assert genomic.quotas([1, 1, 1], 2) == [1, 1, 0] and sum(genomic.quotas([7, 5, 3], 10)) == 10


def test_same_seed_same_files_other_seed_other_sample(tmp_path, capsys):
  write_fasta(tmp_path / "g.fa")
  for out, seed in (("a", 0), ("b", 0), ("c", 1)):
    assert run(["--dna", tmp_path / "g.fa", "--out", tmp_path / out, *SMALL, "--seed", seed], capsys)[0] == 0
  names = sorted(p.name for p in (tmp_path / "a").iterdir())
  assert len(names) == 7
  same = lambda x, y, name: (tmp_path / x / name).read_bytes() == (tmp_path / y / name).read_bytes()
  assert all(same("a", "b", n) for n in names if n != "MANIFEST.json")
  assert not all(same("a", "c", n) for n in names if n.endswith(".jsonl"))


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
  write_fasta(tmp_path / "g.fa", seeds=(0,))
  (tmp_path / "empty.fa").write_text("")
  (tmp_path / "bare.fa").write_text(">chr1\n\n")
  (tmp_path / "short.fa").write_text(">chr1\nACGTACGTAC\n")
  (tmp_path / "twice.fa").write_text(">chr1 a\nACGT\n>chr1 b\nACGT\n")
  dna = ["--dna", tmp_path / "g.fa", "--out", tmp_path / "o"]
  cases = [
    (["--dna", tmp_path / "missing.fa", "--out", tmp_path / "o"], "missing.fa: no such file"),
    (["--dna", tmp_path / "empty.fa", "--out", tmp_path / "o"], "empty.fa: no FASTA records"),
    (["--dna", tmp_path / "bare.fa", "--out", tmp_path / "o"], "record 'chr1' has no sequence"),
    (["--dna", tmp_path / "short.fa", "--out", tmp_path / "o"], "no training window of 200"),
    (["--dna", tmp_path / "twice.fa", "--out", tmp_path / "o"], "two records are named 'chr1'"),
    ([*dna, "--test-fraction", "1.5"], "--test-fraction 1.5: must be between 0 and 1"),
    ([*dna, "--read-len", "0"], "--read-len 0: must be at least 1"),
    ([*dna, "--short-orf", "120"], "--min-orf 100 is below --short-orf 120"),
    ([*dna, "--unique-max", "0.5"], "need 0 < unique-max <= repeat-min <= 1"),
    ([*dna, "--repeat-k", "300"], "--repeat-k 300"),
    ([*dna, "--max-test-per-class", "0"], "--max-test-per-class 0"),
    ([*dna, "--read-len", "60", "--min-orf", "400"], "dna_coding: no train windows for some class"),
  ]
  for argv, message in cases:
    code, out, err = run(argv, capsys)
    assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
  done = subprocess.run(
    [sys.executable, str(SCRIPT), "--dna", str(tmp_path / "missing.fa"), "--out", str(tmp_path)],
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert done.returncode == 2 and done.stderr == f"make_genomic_tasks: error: {tmp_path / 'missing.fa'}: no such file\n"
  helped = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
  assert helped.returncode == 0 and "--min-orf" in helped.stdout and "repeat cover" in helped.stdout
