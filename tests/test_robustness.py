"""Perturbations (deterministic, meaningful) and the robustness suite over byte and token models."""

import pytest

from chunklm.eval.perturb import PERTURBATIONS, perturb_text

TEXT = b"The quick brown fox jumps."
# Snapshot of every perturbation of TEXT at strength 0.3, seed 0: a change here changes published figures.
EXPECTED = {
  "random_case": "thE Quick brown Fox jumps.",
  "uppercase": "THE QUICK BROWN FOX JUMPS.",
  "delete": "The quikbr x up.",
  "insert": "Thet quick ebrofwnd kfox jumpksx.",
  "swap": "Th euqikc brown ofxj umps.",
  "keyboard": "Tne wu8ck browm fix jumps.",
  "antspeak": "T H E   Q U I C K   B R O W N   F O X   J U M P S .",
  "repeat": "The quuuiiick  brrrown foxxxx jjjjuuumpss..",
}


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_perturbations_are_deterministic_and_do_what_they_say(name):
  out = perturb_text(TEXT, name, 0.3, 0)
  assert out == perturb_text(TEXT, name, 0.3, 0)
  if name in EXPECTED:
    assert out.decode() == EXPECTED[name]
  if name not in ("uppercase", "antspeak"):
    assert perturb_text(TEXT, name, 0.0, 0) == TEXT  # strength 0 leaves text alone
    assert perturb_text(TEXT * 20, name, 0.5, 1) != perturb_text(TEXT * 20, name, 0.5, 2)  # the seed matters
  noisy = perturb_text(b"ok \xff\xfe ok", name, 1.0, 0)
  assert "\ufffd".encode() not in noisy  # bytes that are not UTF-8 stay raw bytes, never replacement characters
  if name != "delete":
    assert b"\xff" in noisy


def test_specific_properties():
  assert perturb_text(b"a b c", "no_whitespace", 1.0, 0) == b"abc"
  assert perturb_text(b"abc", "delete", 1.0, 0) == b""
  homo = perturb_text(b"coca cola", "homoglyph", 1.0, 0).decode()
  assert homo != "coca cola" and len(homo.encode()) > len("coca cola")
  with pytest.raises(ValueError, match="unknown perturbation"):
    perturb_text(b"x", "nope", 0.1, 0)


@pytest.mark.slow  # CI budget: the default suite stays under 15 minutes on 2 cores
def test_suite_scores_byte_and_token_models_on_identical_bytes(tmp_path, corpus_dir, capsys):
  from chunklm.cli import main
  from conftest import TINY

  sets = [a for o in TINY + ["train.steps=4", "eval.sample_bytes=0"] for a in ("--set", o)]
  base = ["train", "--no-progress", "--data", str(corpus_dir)] + sets
  assert main(base + ["--config", "byte_transformer_tiny", "--workdir", str(tmp_path / "bytes")]) == 0
  tok = tmp_path / "t.model"
  assert main(["tokenizer", "train", "--data", str(corpus_dir), "--vocab-size", "300", "--out", str(tok)]) == 0
  assert (
    main(
      base
      + [
        "--config",
        "bpe_transformer_tiny",
        "--set",
        f"data.tokenizer={tok}",
        "--set",
        "model.vocab_size=300",
        "--set",
        "data.seq_len=12",
        "--workdir",
        str(tmp_path / "bpe"),
      ]
    )
    == 0
  )
  capsys.readouterr()
  from chunklm.eval.robustness import run_robustness

  printed: list[str] = []
  res = run_robustness(
    [tmp_path / "bytes", tmp_path / "bpe"],
    (str(corpus_dir / "doc001.py"),),
    ["uppercase", "delete", "antspeak"],
    0.2,
    0,
    0,
    tmp_path / "out",
    log=printed.append,
    warn=printed.append,
  )
  for text in ("clean", "uppercase", "delete", "antspeak"):
    assert res["bytes"][text]["bytes"] == res["bpe"][text]["bytes"]  # the same text bytes for both models
  assert res["bytes"]["antspeak"]["bytes"] > 1.8 * res["bytes"]["clean"]["bytes"]
  md = (tmp_path / "out" / "robustness.md").read_text()
  assert "| antspeak |" in md and (tmp_path / "out" / "robustness.png").exists()
  row = lambda name: next(line for line in md.splitlines() if line.startswith(f"| {name} |"))
  deltas = [float(row(t).split("|")[3].split("(")[1].split(",")[0]) for t in ("uppercase", "delete", "antspeak")]
  assert float(row("mean").split("|")[3].split("(")[1].split(",")[0]) == pytest.approx(sum(deltas) / 3, abs=2e-4)
  assert "- bpe (clean " in md
  assert [line.split()[:2] for line in printed if line.startswith("bytes ")] == [
    ["bytes", f"{res['bytes']['clean']['bpb']:.4f}"]  # the printout: each model's clean BPB beside its increases
  ]
  assert (tmp_path / "out" / "robustness.csv").read_text().startswith("perturbation,bytes,bytes BPB")
  code = main(["robustness", "--workdir", str(tmp_path / "bytes"), "--perturbations", "nope"])
  assert code == 2 and "unknown perturbation" in capsys.readouterr().err


def test_report_ends_with_the_mean_over_perturbations(tmp_path):
  from types import SimpleNamespace

  from chunklm.eval import robustness

  bpb = {"h": (2.0, 2.5, 3.0), "t": (1.8, 2.7, 3.6)}  # clean, a, b
  results = {m: {t: {"bpb": v} for t, v in zip(("clean", "a", "b"), vals)} for m, vals in bpb.items()}
  texts = {t: SimpleNamespace(num_bytes=n) for t, n in (("clean", 100), ("a", 100), ("b", 120))}
  lines, warning = robustness._write(tmp_path, results, texts, 0.1, 0, entropy=4.5)
  md = (tmp_path / "robustness.md").read_text()
  assert "| mean | 110 | 2.7500 (+0.7500, +37.5%) | 3.1500 (+1.3500, +75.0%) |" in md
  # each model's clean BPB beside its mean increases, absolute and relative, in the printout and the report
  assert lines[0].split() == ["model", "clean", "BPB", "mean", "BPB", "mean", "increase", "relative", "increase"]
  assert lines[1].split() == ["h", "2.0000", "2.7500", "+0.7500", "+37.5%"]
  assert lines[2].split() == ["t", "1.8000", "3.1500", "+1.3500", "+75.0%"]
  assert all(line in md for line in lines) and "order-0 byte entropy 4.5000 bits per byte" in md
  assert "- t (clean 1.8000) vs h (clean 2.0000): mean increase +1.3500 vs +0.7500 BPB (1.80x), relative" in md
  assert "relative +75.0% vs +37.5% (2.00x)" in md
  assert md.index("```") < md.index("| perturbation |")  # the summary leads the page
  assert warning == "" and "Warning" not in md  # 2.0 / 1.8 is within CLEAN_SPREAD
  assert (tmp_path / "robustness.csv").read_text().splitlines()[-1].startswith("mean,110,2.75,0.75,37.5,")


def test_widely_different_clean_bpb_warns_that_relative_increases_do_not_compare(tmp_path):
  from types import SimpleNamespace

  from chunklm.eval import robustness

  # a trained model, and a 20-step one near the unigram entropy whose relative increase looks 4x smaller
  bpb = {"trained": (2.0, 3.0), "20-step": (5.5, 6.0)}
  results = {m: {t: {"bpb": v} for t, v in zip(("clean", "delete"), vals)} for m, vals in bpb.items()}
  texts = {t: SimpleNamespace(num_bytes=100) for t in ("clean", "delete")}
  _, warning = robustness._write(tmp_path, results, texts, 0.2, 0)
  assert "trained 2.0000, 20-step 5.5000: 2.75x" in warning and "relative increases are not comparable" in warning
  assert f"**Warning**: {warning}." in (tmp_path / "robustness.md").read_text()
  assert robustness.clean_spread({"a": 2.0, "b": 2.5}) == ""  # 1.25x: still comparable
  assert robustness.clean_spread({"a": 2.0}) == ""
