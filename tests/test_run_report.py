"""`chunklm report` renders every section for a tiny run, and a summary for several runs."""

import pytest

from chunklm.cli import main
from conftest import TINY
from test_hnet import HNET1


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
  for section in ("config", "size", "curves", "valid", "robustness", "boundaries", "samples"):
    assert f'class="{section}"' in page, section
  assert "uppercase" in page and "data:image/png;base64," in page and "│" in page
  out = tmp_path / "both.html"
  assert main(["report", "--workdir", str(runs[0]), "--workdir", str(runs[1]), "--out", str(out)]) == 0
  both = out.read_text()
  assert "<h2>summary</h2>" in both and both.count('<h3 class="samples">') == 2
  capsys.readouterr()
  assert main(["report", "--workdir", str(tmp_path / "missing")]) == 2
