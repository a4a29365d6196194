"""DNA data: complement table, cleaning (case, IUPAC, N runs) and reverse-complement augmentation in the windows."""

import numpy as np
import pytest

from chunklm.config import DnaConfig, load_config
from chunklm.data.corpus import build, load_documents
from chunklm.data.dna import clean, reverse_complement
from chunklm.data.pipeline import BOS, PackedWindows
from chunklm.errors import ConfigError


def arr(s: bytes) -> np.ndarray:
  return np.frombuffer(s, np.uint8)


def test_reverse_complement_is_its_own_inverse_and_keeps_case():
  seq = arr(b"ACGTacgtNnRYKMBVDHSWrykmbvdhsw-.\n")
  rc = reverse_complement(seq)
  np.testing.assert_array_equal(reverse_complement(rc), seq)
  assert bytes(reverse_complement(arr(b"AACGTTg"))) == b"cAACGTT"
  assert bytes(reverse_complement(arr(b"RYKMBVDHSWN"))) == b"NWSDHBVKMRY"  # IUPAC: each code's complement
  assert all(chr(a).isupper() == chr(b).isupper() for a, b in zip(seq, rc[::-1]) if chr(a).isalpha())


@pytest.mark.parametrize(
  "setting, expected",
  [
    (dict(case="upper"), [("r", b"ACGTNNNNACRT")]),
    (dict(case="lower"), [("r", b"acgtnnnnacrt")]),
    (dict(iupac="n"), [("r", b"ACgtNNNNAcNt")]),
    (dict(n_runs="drop", n_run_min=2), [("r", b"ACgtAcRt")]),
    (dict(n_runs="split", n_run_min=4), [("r:1", b"ACgt"), ("r:2", b"AcRt")]),
    (dict(n_runs="split", n_run_min=5), [("r", b"ACgtNNNNAcRt")]),  # the run is shorter than n_run_min
  ],
)
def test_cleaning(setting, expected):
  assert list(clean(iter([("r", b"ACgtNNNNAcRt")]), DnaConfig(**setting))) == expected


def test_bad_dna_settings_are_one_line():
  with pytest.raises(ConfigError, match=r"data\.dna\.n_runs: 'cut' is not one of keep, drop, split"):
    load_config(None, ["data.dna.n_runs=cut"])
  with pytest.raises(ConfigError, match=r"data\.dna\.reverse_complement: a probability"):
    load_config(None, ["data.dna.reverse_complement=2"])


def test_fasta_records_split_at_n_runs_when_read(tmp_path):
  fa = tmp_path / "g.fa"
  fa.write_text(">chr1 test\nACGTNNNNNN\nNNTTGG\n>chr2\nacgtac\n")
  cfg = load_config(None, ["data.dna.n_runs=split", "data.dna.n_run_min=3", "data.dna.case=upper"]).data
  docs = load_documents((str(fa),), cfg)
  assert [docs.doc(i) for i in range(len(docs))] == [b"ACGT", b"TTGG", b"ACGTAC"]
  assert docs.names == ("g.fa:chr1:1", "g.fa:chr1:2", "g.fa:chr2")


def _segments(example):
  """{(segment id): bytes} of an example's inputs (BOS dropped)."""
  out = {}
  for s in np.unique(example["segment_ids"][example["segment_ids"] > 0]):
    ids = example["ids"][example["segment_ids"] == s]
    out[int(s)] = bytes(ids[ids != BOS].astype(np.uint8))
  return out


def test_windows_read_whole_documents_reverse_complemented():
  rng = np.random.default_rng(0)
  seqs = [rng.choice(arr(b"ACGTacgt"), size=n).tobytes() for n in (37, 5, 90, 21, 64)]
  docs = build(iter((f"d{i}", s) for i, s in enumerate(seqs)))
  plain = PackedWindows(docs, 16, seed=3)
  flipped = PackedWindows(docs, 16, seed=3, reverse_complement=1.0)
  assert len(plain) == len(flipped)
  rcs = [bytes(reverse_complement(arr(s))) for s in seqs]
  for k in range(len(plain)):
    a, b = plain[k], flipped[k]
    np.testing.assert_array_equal(a["segment_ids"], b["segment_ids"])  # same layout, other bytes
    np.testing.assert_array_equal(a["positions"], b["positions"])
    for s, text in _segments(b).items():  # each piece is the piece of the reverse complement at that position
      pos = int(b["positions"][b["segment_ids"] == s][0])
      start = max(pos - 1, 0)
      assert any(rc[start : start + len(text)] == text for rc in rcs), (k, s, text)
  half = PackedWindows(docs, 16, seed=3, reverse_complement=0.5)
  again = PackedWindows(docs, 16, seed=3, reverse_complement=0.5)
  for k in range(len(half)):  # drawn per document and epoch: reproducible, so resumable
    np.testing.assert_array_equal(half[k]["ids"], again[k]["ids"])
  flips = half._epoch(0)[-1]
  assert 0 < flips.sum() < len(seqs) or len(seqs) < 4


def test_boundary_rate_after_each_kmer():
  from chunklm.data.dna import looks_like_dna
  from chunklm.eval.boundaries import ByteRouting
  from chunklm.eval.kmer_boundaries import kmer_markdown, kmer_rates

  data = b"ACGTACGTacgtNACGT"
  starts = np.zeros(len(data), bool)
  starts[[4, 8, 12]] = True  # after each "GT"/"gt" (position 12 is N: after "gt" too)
  routed = [(data, ByteRouting([starts], [np.zeros(len(data))]))]
  for k in (1, 2, 3):  # against a plain loop
    expected = {}
    for i in range(k, len(data)):
      kmer = data[i - k : i].upper().decode()
      if set(kmer) <= set("ACGT"):
        seen, hit = expected.get(kmer, (0, 0))
        expected[kmer] = (seen + 1, hit + int(starts[i]))
    got = {m: (n, round(rate * n)) for m, (rate, n) in kmer_rates(routed, 0, k).items() if n}
    assert got == expected
  assert kmer_rates(routed, 0, 2)["GT"] == (1.0, 3)
  assert "stage 0, after each 2-mer: AC 0.000" in kmer_markdown(routed, 1)
  assert looks_like_dna(arr(data)) and not looks_like_dna(arr(b"def main(): pass"))


def test_eval_on_dna_says_bits_per_base(tmp_path, capsys):
  import json
  import random

  from chunklm.cli import main
  from chunklm.train import trainer
  from conftest import tiny_config

  rng = random.Random(0)
  fasta = tmp_path / "g.fa"
  fasta.write_text("".join(f">r{i}\n{''.join(rng.choice('ACGT') for _ in range(300))}\n" for i in range(8)))
  (tmp_path / "t.txt").write_text("def f(x):\n    return x\n" * 20)
  run = tmp_path / "run"
  trainer.train(
    tiny_config("train.steps=2", "train.checkpoint_every=2", data=fasta), run, progress=False, log=lambda *a, **k: None
  )
  capsys.readouterr()
  assert (
    main(["eval", "--workdir", str(run), "--data", str(fasta), "--json", str(tmp_path / "d.json"), "--no-progress"])
    == 0
  )
  assert "bits per byte (= bits per base: DNA, one byte per base)" in capsys.readouterr().out
  res = json.loads((tmp_path / "d.json").read_text())
  assert res["bits_per_base"] == res["bpb"]
  assert main(["eval", "--workdir", str(run), "--data", str(tmp_path / "t.txt"), "--no-progress"]) == 0
  assert "bits per base" not in capsys.readouterr().out
