"""`chunklm report` renders every section for a tiny run, led by its answer, and a summary for several runs."""

import re
from types import SimpleNamespace

import pytest
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.record_writer import RecordWriter

from chunklm.cli import main
from chunklm.eval import robustness, run_report
from conftest import TINY
from test_hnet import HNET1


def test_numbers_read_by_magnitude_and_keys_as_words():
  fmt = run_report.fmt
  assert [fmt(344943.0), fmt(344943), fmt(6.942851402), fmt(4.846153736), fmt(0.000123456), fmt(2.0)] == [
    "344,943",
    "344,943",
    "6.943",
    "4.846",
    "0.0001235",
    "2",
  ]
  assert fmt(12345.678) == "12,346" and fmt(float("nan")) == "nan" and fmt("x") == "x" and fmt(True) == "True"
  assert run_report.label("bytes_per_chunk_s1") == "bytes per chunk, stage 1"
  assert run_report.label("bpb") == "bits per byte" and run_report.label("grad_norm") == "grad norm"
  assert [run_report.duration(s) for s in (42, 70.4, 3725)] == ["42 s", "1 min 10 s", "1 h 02 min"]


def test_headline_puts_valid_bpb_beside_the_order0_entropy():
  final = {"step": 6, "split": "valid", "bpb": 6.9428514, "bytes": 314.0, "bytes_per_chunk_s0": 4.84615, "x_s1": 2.0}
  train = {"step": 6, "split": "train", "bpb": 7.0128936}
  rows = run_report.headline_rows(final, train, (3.650123, 314), (3.0, 2.0))
  assert [r[:2] for r in rows] == [
    ["valid bits per byte", "6.943"],
    ["order-0 byte entropy", "3.65"],
    ["train bits per byte", "7.013"],
    ["bytes per chunk, stage 0", "4.846"],
  ]
  assert "314 bytes" in rows[0][2] and "not below it yet" in rows[1][2] and rows[3][2] == "valid; target 3"
  assert "not below" not in run_report.headline_rows({**final, "bpb": 2.5}, train, (3.65, 314), ())[1][2]
  assert run_report.headline_rows({}, {}, None, ()) == []


def test_training_time_is_read_from_the_tensorboard_events(tmp_path):
  for session, (start, end) in enumerate(((1000.0, 1070.0), (5000.0, 5030.5))):
    writer = RecordWriter(str(tmp_path / f"events.out.tfevents.{session}"))
    for t in (start, (start + end) / 2, end):
      writer.write(Event(wall_time=t, step=1).SerializeToString())
    writer.close()
  assert run_report.training_time(tmp_path) == (100.5, 2, 5030.5)
  data = (tmp_path / "events.out.tfevents.0").read_bytes()
  assert run_report.event_times(data[:-5]) == [1000.0, 1035.0]  # a torn last record is left out
  assert run_report.training_time(tmp_path / "missing") is None


def test_the_robustness_table_reads_as_the_report_does(tmp_path):
  bpb = {"trained": (2.0, 3.0), "20-step": (5.5, 6.0)}
  results = {m: {t: {"bpb": v} for t, v in zip(("clean", "delete"), vals)} for m, vals in bpb.items()}
  robustness._write(tmp_path, results, {t: SimpleNamespace(num_bytes=344943) for t in ("clean", "delete")}, 0.2, 0)
  part = run_report._robustness_html(tmp_path)
  assert "<th>trained: BPB (increase, relative)</th>" in part and "<td>344,943</td>" in part
  assert "<td>3.0000 (+1.0000, +50.0%)</td>" in part and "relative increases are not comparable" in part
  assert "not measured" in run_report._robustness_html(tmp_path / "elsewhere")


@pytest.mark.slow  # CI budget: the default suite stays under 15 minutes on 2 cores
def test_report_has_every_section(tmp_path, corpus_dir, capsys):
  sets = [a for o in TINY + HNET1 + ["train.steps=3", "eval.sample_bytes=0"] for a in ("--set", o)]
  runs = []
  for name in ("a", "b"):
    wd = tmp_path / name
    assert main(["train", "--no-progress", "--data", str(corpus_dir), "--workdir", str(wd), *sets]) == 0
    runs.append(wd)
  assert (
    main(
      [
        "robustness",
        "--workdir",
        str(runs[0]),
        "--perturbations",
        "uppercase",
        "--max-bytes",
        "500",
        "--data",
        str(corpus_dir / "doc003.py"),
      ]
    )
    == 0
  )
  assert main(["report", "--workdir", str(runs[0]), "--samples", "1"]) == 0
  page = (runs[0] / "report.html").read_text()
  at = [page.index(f'class="{section}"') for section in run_report.SECTIONS]
  assert at == sorted(at), "sections out of order"  # the answer first, the config last
  assert '<details class="config">' in page and page.index("chunklm 0.") < page.index('class="results"')
  for words in ("training time", "valid bits per byte", "order-0 byte entropy", "bytes per chunk, stage 0", "data"):
    assert f"<td>{words}</td>" in page, words
  assert "bytes_per_chunk_s0" not in page and not re.search(r"<td>\d+\.0000</td>", page)
  assert "uppercase" in page and "data:image/png;base64," in page and "│" in page
  out = tmp_path / "both.html"
  assert main(["report", "--workdir", str(runs[0]), "--workdir", str(runs[1]), "--out", str(out)]) == 0
  both = out.read_text()
  assert "<h2>summary</h2>" in both and both.count('<h3 class="samples">') == 2
  assert both.index("<h2>summary</h2>") < both.index('class="provenance"')
  capsys.readouterr()
  assert main(["report", "--workdir", str(tmp_path / "missing")]) == 2
