"""`chunklm report`: one HTML page per run, or one page comparing several.

The page leads with its answer. Per run: where it came from (the chunklm that trained it, the step, the training
time, the data), the headline figures (final valid bits per byte beside the order-0 byte entropy of the same valid
bytes, train bits per byte, bytes per chunk per stage), its size, the BPB curves (and bytes per chunk per stage for
an H-Net), the robustness table (when `chunklm robustness` has written one in the run), a picture of the chunk
boundaries on a valid snippet, generated samples, every final valid figure, and last the config, folded. Several
runs get a summary table and overlaid curves first. Numbers read by magnitude (integers with thousands separators,
other values to 4 significant digits). Images are embedded, so the page is one self-contained file.
"""

from __future__ import annotations

import base64
import csv
import html
import importlib.metadata
import io
import math
import re
import struct
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from etils import epath
from tensorboardX.proto.event_pb2 import Event

from chunklm.config import Config, dump_yaml
from chunklm.data.corpus import Documents, order0_entropy
from chunklm.data.pipeline import leading_bytes
from chunklm.errors import UserError
from chunklm.eval.boundaries import picture, text_routing
from chunklm.eval.generate import generate_run
from chunklm.eval.robustness import clean_spread
from chunklm.eval.summary import show_bytes, snippet_of
from chunklm.model.describe import describe_config
from chunklm.plots import figure
from chunklm.run.metrics import plot_curves, read_jsonl
from chunklm.run.trained import TrainedRun, open_run
from chunklm.run.workdir import RunDir
from chunklm.storage.paths import ensure_dir, location

SECTIONS = ("provenance", "results", "size", "curves", "robustness", "boundaries", "samples", "valid", "config")
ENTROPY_MAX_BYTES = 1 << 20  # the order-0 entropy reads at most this many leading valid bytes
_NAMES = {
  "bpb": "bits per byte",
  "bytes": "bytes evaluated",
  "predicted": "bytes predicted",
  "bytes_per_chunk": "bytes per chunk",
  "bytes_per_position": "bytes per position",
  "sources": "bits per byte per source",
}
_LEVEL = re.compile(r"(.+)_([sl])(\d+)")


def fmt(v) -> str:
  """A number as a reader wants it: integers (and whole floats) with thousands separators, other floats to 4
  significant digits (thousands and up: whole, with separators); anything else as str()."""
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    return str(v)
  if isinstance(v, int):
    return f"{v:,}"
  if not math.isfinite(v):
    return str(v)
  if v.is_integer() or abs(v) >= 1000:
    return f"{v:,.0f}"
  return f"{v:.4g}"


def label(key: str) -> str:
  """A metrics.jsonl key as words: `bytes_per_chunk_s0` -> "bytes per chunk, stage 0"."""
  m = _LEVEL.fullmatch(key)
  if m:
    base, kind, n = m.groups()
    return f"{_NAMES.get(base, base.replace('_', ' '))}, {'stage' if kind == 's' else 'level'} {n}"
  return _NAMES.get(key, key.replace("_", " "))


def _cell(v) -> str:
  if isinstance(v, dict):
    return "; ".join(f"{k} {fmt(x)}" for k, x in v.items())
  return fmt(v)


def _img(png: bytes, alt: str) -> str:
  return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: list[str] | None, rows: list[list[str]], cls: str = "") -> str:
  head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
  body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
  attr = f' class="{cls}"' if cls else ""
  return f"<table{attr}>{head}{body}</table>"


def duration(seconds: float) -> str:
  """`3725` -> "1 h 02 min", `70.4` -> "1 min 10 s", `42` -> "42 s"."""
  s = round(seconds)
  if s >= 3600:
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
  return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def event_times(data: bytes) -> list[float]:
  """The wall times of the events in one TensorBoard event file (TFRecord framing: length, its CRC, the event, its
  CRC); a torn last record is ignored."""
  times, at = [], 0
  while at + 12 <= len(data):
    (n,) = struct.unpack_from("<Q", data, at)
    if at + 16 + n > len(data):
      break
    times.append(Event.FromString(data[at + 12 : at + 12 + n]).wall_time)
    at += 16 + n
  return times


def training_time(tb_dir: epath.Path) -> tuple[float, int, float] | None:
  """(seconds, sessions, time of the last metric): the wall time from the first to the last metric of each
  training session (one TensorBoard event file each: the first start and every resume), summed; None when the run
  kept no TensorBoard events."""
  if not tb_dir.exists():
    return None
  spans = [t for f in sorted(tb_dir.glob("events.out.tfevents.*")) if len(t := event_times(f.read_bytes())) > 1]
  return (sum(max(t) - min(t) for t in spans), len(spans), max(max(t) for t in spans)) if spans else None


def _data_description(cfg: Config, valid: Documents) -> str:
  d = cfg.data
  train = ", ".join(m.name for m in d.mixture) if d.mixture else ", ".join(d.sources) or "the built-in corpus"
  held = f"from {', '.join(d.valid_sources)}" if d.valid_sources else f"{d.valid_fraction:.0%} of documents held out"
  docs = f"{len(valid):,} document{'s' if len(valid) != 1 else ''}"
  token = f"; tokenizer {d.tokenizer}" if d.tokenizer else ""
  return f"train: {train}; valid: {held}, {docs} read ({valid.num_bytes:,} bytes){token}"


def provenance_rows(run: TrainedRun, records: list[dict], valid: Documents) -> list[list[str]]:
  """What the run is and where it came from, as (what, value) rows."""
  made: dict = next((r for r in reversed(records) if r.get("split") == "run"), {})
  rows = [["run", str(run.workdir)], ["step", f"{run.step:,} of {run.cfg.train.steps:,}"]]
  if made:
    by = f"chunklm {made.get('chunklm', '?')}" + (f" (git {made['git']})" if made.get("git") else "")
    rows.append(["trained by", f"{by} on {made.get('devices', '?')}"])
  took = training_time(RunDir(run.workdir).tensorboard)
  if took is not None:
    seconds, sessions, last = took
    ended = datetime.fromtimestamp(last, UTC)
    rows.append(["training time", f"{duration(seconds)} ({sessions} session{'s' if sessions > 1 else ''})"])
    rows.append(["last metric written", f"{ended:%Y-%m-%d %H:%M} UTC"])
  else:
    rows.append(["training time", "not recorded (no TensorBoard events)"])
  rate = [r["bytes_per_sec"] for r in records if r.get("split") == "train" and "bytes_per_sec" in r]
  if rate:
    rows.append(["throughput", f"{fmt(rate[-1])} bytes/s (last train record)"])
  rows.append(["data", _data_description(run.cfg, valid)])
  return rows


def valid_entropy(valid: Documents, evaluated: float | None) -> tuple[float, int]:
  """(order-0 byte entropy, bytes read) of the leading valid bytes a final evaluation scored (at most
  ENTROPY_MAX_BYTES)."""
  cap = min(int(evaluated), ENTROPY_MAX_BYTES) if evaluated else ENTROPY_MAX_BYTES
  docs = leading_bytes(valid, cap)
  return order0_entropy(docs), docs.num_bytes


def headline_rows(
  final: dict, train: dict, entropy: tuple[float, int] | None, targets: tuple[float, ...]
) -> list[list[str]]:
  """The figures a reader came for, as (figure, value, what it is) rows."""
  rows = []
  if "bpb" in final:
    rows.append(
      ["valid bits per byte", fmt(final["bpb"]), f"step {final['step']:,}, {fmt(final.get('bytes', 0))} bytes"]
    )
  if entropy is not None and entropy[1]:
    note = f"a unigram byte model of the first {entropy[1]:,} valid bytes: the BPB of byte frequencies alone"
    if "bpb" in final and final["bpb"] >= entropy[0]:
      note += "; the model is not below it yet"
    rows.append(["order-0 byte entropy", fmt(entropy[0]), note])
  if "bpb" in train:
    rows.append(["train bits per byte", fmt(train["bpb"]), f"step {train['step']:,}, one batch"])
  target = 1.0
  for s, n in enumerate(targets):
    target *= n
    if f"bytes_per_chunk_s{s}" in final:
      rows.append([label(f"bytes_per_chunk_s{s}"), fmt(final[f"bytes_per_chunk_s{s}"]), f"valid; target {target:g}"])
  return rows


def _robustness_html(workdir: Path) -> str:
  """The table `chunklm robustness` left in the run: per model BPB (absolute, relative increase), clean BPB first;
  the warning when the models' clean BPBs are too far apart for their relative increases to compare."""
  rob = workdir / "robustness.csv"
  if not rob.exists():
    return (
      '<h3 class="robustness">robustness</h3><p>not measured: run <code>chunklm robustness --workdir '
      f"{html.escape(str(workdir))}</code> first</p>"
    )
  rows = list(csv.DictReader(rob.read_text().splitlines()))
  models = [k.removesuffix(" BPB") for k in rows[0] if k.endswith(" BPB")] if rows else []
  cells = [
    [r["perturbation"], fmt(int(r["bytes"]))]
    + [f"{float(r[f'{m} BPB']):.4f} ({float(r[f'{m} delta']):+.4f}, {float(r[f'{m} delta %']):+.1f}%)" for m in models]
    for r in rows
  ]
  table = _table(["perturbation", "bytes"] + [f"{m}: BPB (increase, relative)" for m in models], cells)
  warning = clean_spread({m: float(rows[0][f"{m} BPB"]) for m in models}) if rows else ""
  note = f"<p><b>warning</b>: {html.escape(warning)}</p>" if warning else ""
  return '<h3 class="robustness">robustness</h3>' + table + note


def _samples_html(run: TrainedRun, snippet: bytes, samples: int, sample_bytes: int, seed: int) -> str:
  prompts = [snippet[: 16 * (i + 1)] for i in range(samples)]
  outs = generate_run(run, prompts, max_bytes=sample_bytes, temperature=0.8, top_p=0.95, seed=seed)
  pres = "".join(
    f"<pre><b>{html.escape(show_bytes(p))}</b>{html.escape(show_bytes(o))}</pre>" for p, o in zip(prompts, outs)
  )
  return '<h3 class="samples">samples</h3>' + (pres or "<p>none asked for (--samples 0)</p>")


def run_section(workdir: Path, samples: int, sample_bytes: int, seed: int = 0) -> tuple[str, dict]:
  run = open_run(workdir, log=lambda *a, **k: None)
  cfg = run.cfg
  info = describe_config(cfg)
  records = read_jsonl(RunDir(workdir).metrics)
  final: dict = next((r for r in reversed(records) if r["split"] == "valid"), {})
  train: dict = next((r for r in reversed(records) if r["split"] == "train"), {})
  valid = run.valid_split()
  entropy = valid_entropy(valid, final.get("bytes"))
  targets = cfg.model.target_ratio if cfg.model.num_stages else ()
  parts = [f'<h2 id="{html.escape(workdir.name)}">{html.escape(workdir.name)} (step {run.step:,})</h2>']
  parts.append(_table(None, provenance_rows(run, records, valid), "provenance"))
  rows = headline_rows(final, train, entropy, targets)
  parts.append(
    '<h3 class="results">results</h3>'
    + (_table(["figure", "value", "what it is"], rows) if rows else "<p>no evaluation yet</p>")
  )
  parts.append(
    '<h3 class="size">size</h3>'
    + _table(
      ["parameters", "train FLOPs per byte (target ratios)", "stages"],
      [[f"{info['params']:,}", f"{fmt(info['flops_per_byte'] / 1e6)} M", str(cfg.model.num_stages)]],
    )
  )
  with tempfile.TemporaryDirectory(prefix="chunklm-report-") as tmp:  # a report never writes into the run
    png = plot_curves(workdir, out=Path(tmp) / "curves.png", targets=targets)
    if png is not None:
      parts.append('<h3 class="curves">curves</h3>' + _img(png.read_bytes(), "BPB and chunk-ratio curves"))
  parts.append(_robustness_html(workdir))
  snippet = snippet_of(valid)
  if cfg.model.num_stages:
    r = text_routing(run.graphdef, run.params, snippet, cfg.model.num_stages, cfg.data.seq_len)
    parts.append(
      '<h3 class="boundaries">chunk boundaries</h3><pre>'
      f"{html.escape(picture(snippet[: len(r.starts[0])], r.starts))}</pre>"
    )
  parts.append(_samples_html(run, snippet, samples, sample_bytes, seed))
  figures = [[label(k), _cell(v)] for k, v in final.items() if k not in ("split", "step")]
  at = f" (step {final['step']:,})" if final else ""
  parts.append(
    f'<h3 class="valid">final valid evaluation{at}</h3>'
    + (_table(["metric", "value"], figures) if figures else "<p>no evaluation yet</p>")
  )
  parts.append(f'<details class="config"><summary>config</summary><pre>{html.escape(dump_yaml(cfg))}</pre></details>')
  summary = {
    "run": workdir.name,
    "params": info["params"],
    "step": run.step,
    "valid_bpb": final.get("bpb"),
    "train_bpb": train.get("bpb"),
    "entropy": entropy[0] if entropy[1] else None,
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


def summary_html(summaries: list[dict]) -> str:
  """The table (and overlaid valid curves) that opens a page of several runs."""
  show = lambda v: "–" if v is None else fmt(v)  # noqa: E731
  rows = [
    [s["run"], fmt(s["params"]), fmt(s["step"]), show(s["valid_bpb"]), show(s["entropy"]), show(s["train_bpb"])]
    for s in summaries
  ]
  header = ["run", "parameters", "step", "valid BPB", "order-0 byte entropy of valid", "train BPB"]
  return "<h2>summary</h2>" + _table(header, rows) + _img(_overlay(summaries), "valid BPB of every run")


def _version() -> str:
  try:
    return importlib.metadata.version("chunklm")
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


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
  head = summary_html(summaries) if len(workdirs) > 1 else ""
  title = "chunklm report: " + ", ".join(wd.name for wd in workdirs)
  written = f"written by chunklm {_version()} on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
  style = (
    "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px}pre{background:#f6f6f6;padding:.5em;overflow-x:auto}"
    ".provenance td:first-child{color:#555}"
  )
  page = (
    f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{style}"
    f'</style></head><body><h1>{html.escape(title)}</h1><p class="written">{html.escape(written)}</p>'
    f"{head}{''.join(sections)}</body></html>"
  )
  out = location(out or (workdirs[0] / "report.html" if len(workdirs) == 1 else Path("runs") / "report.html"))
  ensure_dir(out.parent)
  out.write_text(page)
  log(f"wrote {out}")
  return out
