"""Statistics of learned chunk boundaries over a corpus, and pictures of them on one text (HTML, PNG).

Against reference segmentations (whitespace, word starts, BPE token starts) a stage's boundaries get a precision
(share of its boundaries that are reference starts) and a recall (share of reference starts it chose).
"""

from __future__ import annotations

import html
import textwrap
from pathlib import Path

import numpy as np

from chunklm.data.corpus import load_documents
from chunklm.data.dna import looks_like_dna
from chunklm.data.pipeline import leading_bytes
from chunklm.data.tokenizer import Tokenizer
from chunklm.errors import UserError
from chunklm.eval.boundaries import ByteRouting, _show, characters, corpus_routing, picture, text_routing
from chunklm.eval.kmer_boundaries import kmer_markdown
from chunklm.plots import figure, save
from chunklm.run.trained import open_run
from chunklm.storage.paths import ensure_dir, location


def chunk_lengths(starts: np.ndarray) -> np.ndarray:
  """Bytes per chunk of one document; its first byte always begins a chunk."""
  idx = np.flatnonzero(starts)
  idx = np.concatenate([[0], idx[idx > 0], [len(starts)]]) if len(starts) else np.zeros(1, int)
  return np.diff(idx)


def reference_starts(data: bytes, kind: str, tokenizer=None) -> np.ndarray:
  arr = np.frombuffer(data, np.uint8)
  if kind == "whitespace":  # a chunk that begins with a space, tab or newline
    return np.isin(arr, list(b" \t\n\r"))
  if kind == "word":  # first byte of a run of letters/digits/_ (or of a non-ASCII character after a non-word byte)
    word = np.isin(arr, list(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")) | (arr >= 0xC0)
    prev = np.concatenate([[False], word[:-1] | (arr[:-1] >= 0x80)])
    return word & ~prev
  if kind == "bpe":
    starts = np.zeros(len(data), bool)
    offsets = np.cumsum([0] + [int(tokenizer.piece_bytes[t]) for t in tokenizer.encode(data)])[:-1]
    starts[offsets[offsets < len(data)]] = True
    return starts
  raise ValueError(kind)


def corpus_stats(routed: list[tuple[bytes, ByteRouting]], num_stages: int, tokenizer=None, examples: int = 5) -> dict:
  kinds = ["whitespace", "word"] + (["bpe"] if tokenizer is not None else [])
  stats = {}
  for s in range(num_stages):
    lengths, hits, chosen, refs = [], {k: 0 for k in kinds}, 0, {k: 0 for k in kinds}
    chunks: list[bytes] = []
    for data, r in routed:
      st = r.starts[s]
      lengths.append(chunk_lengths(st))
      chosen += int(st.sum())
      for k in kinds:
        ref = reference_starts(data, k, tokenizer)
        hits[k] += int((st & ref).sum())
        refs[k] += int(ref.sum())
      bounds = np.concatenate([[0], np.flatnonzero(st)[np.flatnonzero(st) > 0], [len(data)]])
      chunks.extend(data[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
    lens = np.concatenate(lengths) if lengths else np.zeros(0, int)
    order = sorted(set(chunks), key=len)
    stats[s] = {
      "chunks": int(len(lens)),
      "bytes_per_chunk": float(lens.mean()) if len(lens) else float("nan"),
      "lengths": lens,
      "precision": {k: hits[k] / max(chosen, 1) for k in kinds},
      "recall": {k: hits[k] / max(refs[k], 1) for k in kinds},
      "longest": order[-examples:][::-1],
      "shortest": order[:examples],
    }
  return stats


def stats_markdown(stats: dict, total_bytes: int) -> str:
  lines = [f"Boundary statistics over {total_bytes:,} bytes", ""]
  for s, st in stats.items():
    lines.append(f"stage {s}: {st['chunks']:,} chunks, {st['bytes_per_chunk']:.2f} bytes per chunk")
    for k in st["precision"]:
      lines.append(f"  boundaries on {k:10s}: precision {st['precision'][k]:.3f}  recall {st['recall'][k]:.3f}")
    lines.append("  longest: " + "  ".join(repr(_show(c.decode("utf-8", "replace"))) for c in st["longest"]))
    lines.append("  shortest: " + "  ".join(repr(_show(c.decode("utf-8", "replace"))) for c in st["shortest"]))
  return "\n".join(lines)


def histogram_png(stats: dict, path: Path) -> Path:
  fig, axes = figure(1, len(stats), figsize=(5 * len(stats), 3.5), squeeze=False)
  for ax, (s, st) in zip(axes[0], stats.items()):
    top = int(np.percentile(st["lengths"], 99)) + 1 if len(st["lengths"]) else 1
    ax.hist(np.minimum(st["lengths"], top), bins=range(1, top + 2), color=f"C{s}", align="left")
    ax.set_title(f"stage {s}: {st['bytes_per_chunk']:.2f} bytes per chunk")
    ax.set_xlabel("bytes per chunk (last bin: longer)")
    ax.set_ylabel("chunks")
  fig.tight_layout()
  save(fig, path, dpi=100)
  return path


_COLORS = ("#dbeafe", "#fde68a", "#bbf7d0", "#fbcfe8", "#ddd6fe", "#fed7aa")


def text_html(data: bytes, r: ByteRouting, title: str) -> str:
  """Coloured chunks per stage (one line each) with the router's p as a heat strip under each character."""
  spans = characters(data)
  blocks = [f"<h1>{html.escape(title)}</h1><p>terminal view: <code>{html.escape(picture(data, r.starts))}</code></p>"]
  for s, (st, p) in enumerate(zip(r.starts, r.probs)):
    chunk, text, heat = -1, [], []
    for i, j in spans:
      if i == 0 or st[i:j].any():
        chunk += 1
      ch = html.escape(_show(data[i:j].decode("utf-8", errors="replace")))
      text.append(f'<span style="background:{_COLORS[chunk % len(_COLORS)]}">{ch}</span>')
      pv = float(np.nanmax(p[i:j])) if not np.isnan(p[i:j]).all() else float("nan")
      shade = "#eee" if np.isnan(pv) else f"rgba(220,38,38,{pv:.2f})"
      heat.append(f'<span title="p={pv:.3f}" style="background:{shade}">&nbsp;</span>')
    blocks.append(
      f"<h2>stage {s}: {chunk + 1} chunks</h2><div class=t>{''.join(text)}</div><div class=t>{''.join(heat)}</div>"
    )
  style = (
    "body{font-family:sans-serif;margin:2em}.t{font-family:monospace;white-space:pre;font-size:15px;"
    "line-height:1.3;overflow-x:auto}"
  )
  return (
    f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{style}"
    f"</style></head><body>{''.join(blocks)}<p>heat strip: the router's boundary probability p "
    "(white 0 … red 1; grey: not seen by this stage)</p></body></html>"
  )


def text_png(data: bytes, r: ByteRouting, path: Path, per_row: int = 64, min_columns: int = 24) -> Path:
  """The text in rows of at most `per_row` characters (the picture as wide as the text needs, at least
  `min_columns`), chunk starts marked per stage, with p drawn above each character."""

  spans = characters(data)
  rows = [spans[k : k + per_row] for k in range(0, len(spans), per_row)] or [[]]
  columns = max(min_columns, min(per_row, len(spans)))
  width = columns * 0.16 + 1
  fig, axes = figure(len(rows), 1, figsize=(width, 1.1 * len(rows) + 0.5), squeeze=False)
  for ax, row in zip(axes[:, 0], rows):
    for x, (i, j) in enumerate(row):
      ax.text(
        x,
        0,
        _show(data[i:j].decode("utf-8", errors="replace")),
        ha="center",
        va="center",
        fontfamily="monospace",
        fontsize=8,
      )
      for s, (st, p) in enumerate(zip(r.starts, r.probs)):
        pv = np.nanmax(p[i:j]) if not np.isnan(p[i:j]).all() else 0.0
        ax.bar(x, 0.5 * pv, bottom=0.35 + 0.55 * s, width=0.8, color=f"C{s}", alpha=0.6)
        if st[i:j].any():
          ax.axvline(x - 0.5, ymin=0.05, ymax=0.95, color=f"C{s}", lw=1 + s)
    ax.set_xlim(-0.7, columns - 0.3)
    ax.set_ylim(-0.4, 0.4 + 0.55 * len(r.starts) + 0.4)
    ax.axis("off")
  fig.suptitle(
    textwrap.fill(
      "chunk starts (vertical lines; thicker = deeper stage) and boundary probability p (bars)", width=int(width * 13)
    ),
    fontsize=9,
  )  # ~13 characters per inch at 9 pt
  fig.tight_layout()
  save(fig, path, dpi=110)
  return path


def run_boundaries(
  workdir: Path,
  text: bytes | None,
  data: tuple[str, ...],
  max_bytes: int,
  tokenizer_path: str,
  out: Path | None,
  overrides: tuple[str, ...] = (),
  log=print,
) -> dict:
  """`chunklm boundaries`: picture of one text (terminal, HTML, PNG) and statistics over a corpus."""
  run = open_run(workdir, tuple(overrides), log=lambda *a, **k: None)
  cfg, graphdef, params, step = run.cfg, run.graphdef, run.params, run.step
  stages = cfg.model.num_stages
  if not stages:
    raise UserError(
      f"{workdir} holds a plain {cfg.model.layout[0]} stack without routing stages; boundaries need an H-Net"
    )
  out = out or workdir / "boundaries"
  out = location(out, "--out")
  ensure_dir(out)
  result: dict = {}
  if text is not None:
    if len(text) > cfg.data.seq_len - 1:
      log(f"(showing the first {cfg.data.seq_len - 1} bytes: the model's window)")
    r = text_routing(graphdef, params, text, stages, cfg.data.seq_len)
    shown = text[: len(r.starts[0])]
    log(picture(shown, r.starts))
    (out / "boundaries.html").write_text(text_html(shown, r, f"{workdir.name} (step {step})"))
    text_png(shown, r, out / "boundaries.png")
    result["text"] = r
  if data:
    docs = load_documents(tuple(data), cfg.data)
  else:
    docs = run.valid_split()
  docs = leading_bytes(docs.select(docs.lengths > 0), max_bytes)
  tok = Tokenizer(tokenizer_path) if tokenizer_path else None
  routed = corpus_routing(graphdef, params, docs, stages, cfg.data.seq_len)
  stats = corpus_stats(routed, stages, tok)
  md = stats_markdown(stats, docs.num_bytes)
  if looks_like_dna(docs.data[docs.starts[0] : docs.starts[0] + 65536] if len(docs) else docs.data):
    md += "\n\n" + kmer_markdown(routed, stages)
  log(md)
  (out / "stats.md").write_text(md + "\n")
  histogram_png(stats, out / "histogram.png")
  log(f"wrote {out}/" + ("boundaries.html, boundaries.png, " if text is not None else "") + "stats.md, histogram.png")
  result["stats"] = stats
  return result
