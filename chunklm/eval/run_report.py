"""`chunklm report`: one HTML page per run, or one page comparing several.

Sections per run: config, parameters and FLOPs per byte, BPB curves (and bytes-per-chunk per stage for an H-Net),
final valid figures, the robustness table (when `chunklm robustness` has written one in the run), a picture of the
chunk boundaries on a valid snippet, and generated samples. Several runs get a summary table and overlaid curves
first. Images are embedded, so the page is one self-contained file.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path

from chunklm.config import dump_yaml
from chunklm.errors import UserError
from chunklm.eval.boundaries import picture, text_routing
from chunklm.eval.generate import generate_many
from chunklm.eval.summary import show_bytes, snippet_of
from chunklm.model.describe import describe_config
from chunklm.plots import figure
from chunklm.run.metrics import plot_curves, read_jsonl
from chunklm.run.trained import open_run
from chunklm.run.workdir import RunDir
from chunklm.storage.paths import ensure_dir, location

SECTIONS = ("config", "size", "curves", "valid", "robustness", "boundaries", "samples")


def _img(png: bytes, alt: str) -> str:
  return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: list[str], rows: list[list[str]]) -> str:
  head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
  return f"<table><tr>{head}</tr>{body}</table>"


def run_section(workdir: Path, samples: int, sample_bytes: int, seed: int = 0) -> tuple[str, dict]:
  run = open_run(workdir, log=lambda *a, **k: None)
  cfg, graphdef, params, step = run.cfg, run.graphdef, run.params, run.step
  info = describe_config(cfg)
  records = read_jsonl(RunDir(workdir).metrics)
  valid = [r for r in records if r["split"] == "valid"]
  final = valid[-1] if valid else {}
  parts = [f'<h2 id="{html.escape(workdir.name)}">{html.escape(workdir.name)} (step {step})</h2>']
  parts.append(f'<h3 class="config">config</h3><pre>{html.escape(dump_yaml(cfg))}</pre>')
  parts.append(
    '<h3 class="size">size</h3>'
    + _table(
      ["parameters", "train FLOPs/byte (target ratios)", "stages"],
      [[f"{info['params']:,}", f"{info['flops_per_byte'] / 1e6:.2f} M", str(cfg.model.num_stages)]],
    )
  )
  png = plot_curves(
    workdir, out=workdir / "report_curves.png", targets=cfg.model.target_ratio if cfg.model.num_stages else ()
  )
  if png is not None:
    parts.append('<h3 class="curves">curves</h3>' + _img(png.read_bytes(), "BPB and chunk-ratio curves"))
  rows = [[k, f"{v:.4f}" if isinstance(v, float) else str(v)] for k, v in final.items() if k not in ("split",)]
  parts.append(
    '<h3 class="valid">final valid evaluation</h3>'
    + (_table(["metric", "value"], rows) if rows else "<p>no evaluation yet</p>")
  )
  rob = workdir / "robustness.csv"
  if rob.exists():
    table = list(csv.reader(rob.read_text().splitlines()))
    parts.append('<h3 class="robustness">robustness</h3>' + _table(table[0], table[1:]))
  else:
    parts.append(
      '<h3 class="robustness">robustness</h3><p>not measured: run <code>chunklm robustness --workdir '
      f"{html.escape(str(workdir))}</code> first</p>"
    )
  snippet = snippet_of(run.valid_split())
  if cfg.model.num_stages:
    r = text_routing(graphdef, params, snippet, cfg.model.num_stages, cfg.data.seq_len)
    parts.append(
      '<h3 class="boundaries">chunk boundaries</h3><pre>'
      f"{html.escape(picture(snippet[: len(r.starts[0])], r.starts))}</pre>"
    )
  prompts = [snippet[: 16 * (i + 1)] for i in range(samples)]
  outs = generate_many(
    graphdef,
    params,
    prompts,
    max_new_bytes=sample_bytes,
    temperature=0.8,
    top_p=0.95,
    seed=seed,
    tokenizer=run.tokenizer,
  )
  parts.append(
    '<h3 class="samples">samples</h3>'
    + "".join(
      f"<pre><b>{html.escape(show_bytes(p))}</b>{html.escape(show_bytes(o))}</pre>" for p, o in zip(prompts, outs)
    )
  )
  summary = {
    "run": workdir.name,
    "params": info["params"],
    "step": step,
    "valid_bpb": final.get("bpb"),
    "records": records,
  }
  return "".join(parts), summary


def _overlay(summaries: list[dict]) -> bytes:
  fig, ax = figure(figsize=(7, 4))
  for i, s in enumerate(summaries):
    valid = [r for r in s["records"] if r["split"] == "valid"]
    ax.plot([r["step"] for r in valid], [r["bpb"] for r in valid], "o-", color=f"C{i}", label=s["run"])
  ax.set_xlabel("step")
  ax.set_ylabel("valid bits per byte")
  ax.grid(alpha=0.3)
  ax.legend()
  buf = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buf, format="png", dpi=100)
  return buf.getvalue()


def run_report(
  workdirs: list[Path], out: Path | None = None, samples: int = 2, sample_bytes: int = 160, seed: int = 0, log=print
) -> Path:
  if not workdirs:
    raise UserError("report: give at least one --workdir")
  sections, summaries = [], []
  for wd in workdirs:
    log(f"report: {wd}")
    body, summary = run_section(wd, samples, sample_bytes, seed)
    sections.append(body)
    summaries.append(summary)
  head = ""
  if len(workdirs) > 1:
    rows = [
      [s["run"], f"{s['params']:,}", str(s["step"]), f"{s['valid_bpb']:.4f}" if s["valid_bpb"] is not None else "–"]
      for s in summaries
    ]
    head = (
      "<h2>summary</h2>"
      + _table(["run", "parameters", "step", "valid BPB"], rows)
      + _img(_overlay(summaries), "valid BPB of every run")
    )
  title = "chunklm report: " + ", ".join(wd.name for wd in workdirs)
  style = (
    "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px}pre{background:#f6f6f6;padding:.5em;overflow-x:auto}"
  )
  page = (
    f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{style}"
    f"</style></head><body><h1>{html.escape(title)}</h1>{head}{''.join(sections)}</body></html>"
  )
  out = location(out or (workdirs[0] / "report.html" if len(workdirs) == 1 else Path("runs") / "report.html"))
  ensure_dir(out.parent)
  out.write_text(page)
  log(f"wrote {out}")
  return out
