"""Boundary statistics and pictures: by-hand cases, corpus routing vs single texts, the CLI end to end."""

import numpy as np
import pytest

from chunklm.data.corpus import build
from chunklm.eval.boundaries import corpus_routing, text_routing
from chunklm.eval.boundary_stats import chunk_lengths, reference_starts
from chunklm.model.functional import split_model
from chunklm.model.lm import build_model
from test_hnet import HNET1, hnet_config


def test_chunk_lengths_and_reference_starts_by_hand():
  assert chunk_lengths(np.array([0, 0, 1, 0, 1, 1, 0], bool)).tolist() == [2, 2, 1, 2]
  assert chunk_lengths(np.array([1, 0, 0], bool)).tolist() == [3]
  data = b"ab cd_e(f)  g"
  assert np.flatnonzero(reference_starts(data, "whitespace")).tolist() == [2, 10, 11]
  assert np.flatnonzero(reference_starts(data, "word")).tolist() == [0, 3, 8, 12]


@pytest.mark.parametrize("stages", [1, 2])
def test_corpus_routing_matches_single_texts(stages):
  cfg = hnet_config(stages)
  graphdef, params = split_model(build_model(cfg, 0))
  texts = [b"def f(x): return x + 1", b"class A:\n  pass", b"print(1)"]
  docs = build([(str(i), t) for i, t in enumerate(texts)])
  routed = corpus_routing(graphdef, params, docs, stages, cfg.data.seq_len, batch_size=2)
  assert [d for d, _ in routed] == texts
  alone = text_routing(graphdef, params, texts[0], stages, cfg.data.seq_len)  # doc 0 starts window 0
  for s in range(stages):
    np.testing.assert_array_equal(routed[0][1].starts[s], alone.starts[s])
    np.testing.assert_allclose(routed[0][1].probs[s], alone.probs[s], atol=1e-5)
    if s:  # a deeper stage only sees bytes that start a chunk of the stage above
      assert np.isnan(alone.probs[s][~alone.starts[s - 1]]).all()


def test_corpus_routing_covers_the_last_byte_when_the_stream_fills_whole_windows():
  cfg = hnet_config(1)
  graphdef, params = split_model(build_model(cfg, 0))
  text = bytes(b"ab cd_e(f)  g "[i % 14] for i in range(2 * cfg.data.seq_len))  # BOS + text: 2 windows of inputs
  routed = corpus_routing(graphdef, params, build([("a", text)]), 1, cfg.data.seq_len)
  assert len(routed) == 1 and routed[0][0] == text
  assert routed[0][1].starts[0].shape == (len(text),) and not np.isnan(routed[0][1].probs[0]).any()
  alone = text_routing(graphdef, params, text, 1, cfg.data.seq_len)  # the first window's bytes
  np.testing.assert_array_equal(routed[0][1].starts[0][: len(alone.starts[0])], alone.starts[0])


@pytest.mark.slow  # CI budget: the default suite stays under 15 minutes on 2 cores
def test_boundaries_cli(tmp_path, corpus_dir, capsys):
  from chunklm.cli import main
  from conftest import TINY

  sets = [a for o in TINY + HNET1 + ["train.steps=2", "eval.sample_bytes=0"] for a in ("--set", o)]
  wd = tmp_path / "h"
  assert main(["train", "--no-progress", "--data", str(corpus_dir), "--workdir", str(wd), *sets]) == 0
  capsys.readouterr()
  assert (
    main(
      [
        "boundaries",
        "--workdir",
        str(wd),
        "--text",
        "def main(args):",
        "--max-bytes",
        "2000",
        "--json",
        str(tmp_path / "b.json"),
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert "stage 0:" in out and "precision" in out and "bytes per chunk" in out
  figures = __import__("json").loads((tmp_path / "b.json").read_text())["stage 0"]
  assert figures["chunks"] == sum(figures["chunks_by_length"]) and 0 <= figures["precision"]["word"] <= 1
  for f in ("boundaries.html", "boundaries.png", "stats.md", "histogram.png"):
    assert (wd / "boundaries" / f).exists()
  assert "heat strip" in (wd / "boundaries" / "boundaries.html").read_text()
  saved = (wd / "config.yaml").read_text()  # the corpus set the documents per window, and the run keeps it
  assert "max_docs_per_window: 0" not in saved and "max_docs_per_window:" in saved
  assert main(["bench", "capacity", "--workdir", str(wd), "--window", "32,64", "--max-bytes", "3000"]) == 0
  out = capsys.readouterr().out
  assert "window     32 stage 0" in out and "window     64 stage 0" in out and "overflow by factor" in out
  bt = tmp_path / "b"
  sets_b = [a for o in TINY + ["train.steps=2", "eval.sample_bytes=0"] for a in ("--set", o)]
  assert (
    main(
      [
        "train",
        "--config",
        "byte_transformer_tiny",
        "--no-progress",
        "--data",
        str(corpus_dir),
        "--workdir",
        str(bt),
        *sets_b,
      ]
    )
    == 0
  )
  capsys.readouterr()
  assert main(["boundaries", "--workdir", str(bt), "--text", "x"]) == 2
  assert "need an H-Net" in capsys.readouterr().err
  assert main(["bench", "capacity", "--workdir", str(bt)]) == 2
  assert "needs a byte-level H-Net" in capsys.readouterr().err


def test_the_boundary_picture_is_as_wide_as_its_text(tmp_path):
  from PIL import Image

  from chunklm.eval.boundaries import ByteRouting
  from chunklm.eval.boundary_stats import text_png

  def width(text: bytes) -> int:
    n = len(text)
    starts = np.zeros(n, bool)
    starts[::4] = True
    r = ByteRouting(starts=[starts], probs=[np.linspace(0, 1, n)])
    return Image.open(text_png(text, r, tmp_path / f"{n}.png")).size[0]

  short, line, long = width(b"def f(x): pass"), width(b"x" * 48), width(b"y = 1\n" * 40)
  assert short < line < long  # 14 characters: the minimum width; 48: one row as wide as it; 240: rows of 64
  assert long == width(b"z" * 64)  # long texts wrap at 64 characters instead of growing
