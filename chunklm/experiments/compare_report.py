"""The comparison's outputs: a table (report.md, report.html) and BPB curves vs training bytes and FLOPs."""

from __future__ import annotations

import base64
import dataclasses
import html
import statistics
from collections.abc import Sequence
from pathlib import Path

from chunklm.config import Config
from chunklm.model.flops import train_flops_per_byte
from chunklm.plots import figure, save
from chunklm.run.metrics import read_jsonl
from chunklm.run.workdir import RunDir


@dataclasses.dataclass
class Row:
  name: str
  kind: str  # "bytes", "BPE tokens" or "H-Net (N stages)"
  params: int
  flops_per_byte: float  # training FLOPs per byte, at the measured chunk ratio / bytes per token
  executed_flops_per_byte: float  # what the static shapes compute: every chunk slot (= flops_per_byte without chunks)
  bytes_per_s: float  # median training throughput (text bytes per second)
  valid_bpb: float
  unit_bytes: float  # bytes per innermost chunk (H-Net), per token (BPE) or 1
  curve: list[tuple[float, float, float]]  # (training bytes, valid BPB, evaluated bytes)
  match_error: float | None  # residual FLOPs mismatch after sizing, if this model was resized


def collect(
  name: str,
  workdir: Path,
  cfg: Config,
  params: int,
  bytes_per_token: float,
  match_error: float | None,
  executed_flops_per_byte: float | None = None,
) -> Row:
  """The row of the run in `workdir`; `executed_flops_per_byte` (from `describe_config` on the run's own config)
  defaults to the FLOPs at the measured ratio, which is what a model without chunk slots executes."""
  records = read_jsonl(RunDir(workdir).metrics)
  train = [r for r in records if r["split"] == "train"]
  valid = [r for r in records if r["split"] == "valid"]
  final = valid[-1]
  per_step = statistics.mean(r["bytes"] for r in train) if train else 0.0  # text bytes per optimizer step
  stages = cfg.model.num_stages
  if stages:
    positions = tuple([1.0] + [final[f"bytes_per_position_l{s + 1}"] for s in range(stages)])
    flops = train_flops_per_byte(cfg.model, cfg.data.seq_len, positions)
    unit, kind = final[f"bytes_per_chunk_s{stages - 1}"], f"H-Net ({stages} stage{'s' if stages > 1 else ''})"
  elif cfg.data.tokenizer:
    unit = final["bytes"] / max(final["predicted"], 1.0)
    flops, kind = train_flops_per_byte(cfg.model, cfg.data.seq_len, bytes_per_token=unit), "BPE tokens"
  else:
    flops, unit, kind = train_flops_per_byte(cfg.model, cfg.data.seq_len), 1.0, "bytes"
  speeds = [r["bytes_per_sec"] for r in train[1:] if "bytes_per_sec" in r]
  executed = executed_flops_per_byte if executed_flops_per_byte is not None else flops
  return Row(
    name,
    kind,
    params,
    flops,
    executed,
    statistics.median(speeds) if speeds else float("nan"),
    final["bpb"],
    unit,
    [(r["step"] * per_step, r["bpb"], r["bytes"]) for r in valid],
    match_error,
  )


def plot(rows: list[Row], out: Path) -> Path:
  fig, axes = figure(1, 2, figsize=(12, 4.5))
  for i, row in enumerate(rows):
    final_bytes = row.curve[-1][2]
    # Points on the final evaluation's bytes form the curve; evaluations on fewer (leading) bytes are drawn apart.
    for same, style, suffix in ((True, "o-", ""), (False, "o--", " (leading valid bytes)")):
      pts = [(b, v) for b, v, n in row.curve if (n == final_bytes) == same]
      if not pts:
        continue
      kw = dict(color=f"C{i}", label=row.name + suffix, mfc="none" if not same else None)
      axes[0].plot([b / 1e6 for b, _ in pts], [v for _, v in pts], style, **kw)
      axes[1].plot([b * row.flops_per_byte / 1e12 for b, _ in pts], [v for _, v in pts], style, **kw)
  axes[0].set_xlabel("training bytes (MB)")
  axes[1].set_xlabel("training FLOPs (TFLOP)")
  for ax in axes:
    ax.set_ylabel("valid bits per byte")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  save(fig, out, dpi=100)
  return out


HEADER = (
  "model",
  "kind",
  "params",
  "train FLOPs/byte",
  "executed FLOPs/byte",
  "train bytes/s",
  "valid BPB",
  "bytes per chunk/token",
)


def _cells(row: Row) -> list[str]:
  flops = f"{row.flops_per_byte / 1e6:.2f} M"
  if row.match_error is not None:
    flops += f" (sized to match: {row.match_error:+.1%})"
  executed = f"{row.executed_flops_per_byte / 1e6:.2f} M"
  if row.executed_flops_per_byte != row.flops_per_byte:
    executed += f" ({row.executed_flops_per_byte / row.flops_per_byte:.2f}x)"
  return [
    row.name,
    row.kind,
    f"{row.params / 1e6:.2f} M",
    flops,
    executed,
    f"{row.bytes_per_s:,.0f}",
    f"{row.valid_bpb:.4f}",
    f"{row.unit_bytes:.2f}",
  ]


def bytes_to_reach(curve: list[tuple[float, float, float]], target: float) -> float | None:
  """Training bytes at which a curve first reaches valid BPB `target` (linear between evaluations), using only the
  evaluations on the same bytes as its last one; None when it never does."""
  same = [(b, bpb) for b, bpb, n in curve if n == curve[-1][2]]
  for i, (b, bpb) in enumerate(same):
    if bpb <= target:
      if i == 0:
        return b
      b0, bpb0 = same[i - 1]
      return b0 + (b - b0) * (bpb0 - target) / (bpb0 - bpb)
  return None


def efficiency(rows: list[Row], reference: str) -> list[str]:
  """Lines: the training bytes each model needs to reach the reference model's final valid BPB, and the ratio."""
  ref = next(r for r in rows if r.name == reference)
  target, ref_bytes = ref.valid_bpb, ref.curve[-1][0]
  lines = [
    f"Data efficiency: training bytes to reach {ref.name}'s final valid BPB ({target:.4f}, after "
    f"{ref_bytes:,.0f} bytes)"
  ]
  for r in rows:
    if r is ref:
      continue
    need = bytes_to_reach(r.curve, target)
    first = next(b for b, _, n in r.curve if n == r.curve[-1][2])
    if need is None:
      lines.append(f"{r.name}: not reached within its {r.curve[-1][0]:,.0f} bytes (final {r.valid_bpb:.4f})")
    elif need == first:  # reached before the first evaluation: only a bound
      lines.append(
        f"{r.name}: at most {need:,.0f} bytes (already at its first evaluation), at least {ref_bytes / need:.2f}x fewer"
      )
    else:
      lines.append(f"{r.name}: {need:,.0f} bytes, {ref_bytes / need:.2f}x fewer")
  return lines


def write(
  out: Path, title: str, rows: list[Row], notes: list[str], efficiency_reference: str = "", summary: Sequence[str] = ()
) -> tuple[Path, Path]:
  """report.md and report.html (with the plot embedded) in `out`; with `efficiency_reference`, the bytes every
  other model needs to reach that model's final valid BPB; `summary` (markdown lines: the sweep's and seeds'
  table, experiments/sweep.py) goes first, with out/sweep.png when there is one."""
  png = plot(rows, out / "comparison.png")
  best = min(rows, key=lambda r: r.valid_bpb)
  sweep_png = out / "sweep.png"
  lines = [f"# {title}", "", *[f"- {n}" for n in notes], ""]
  if summary:
    lines += ["## Over seeds and sweep points", "", *summary, ""]
    lines += [f"![final valid BPB vs the swept value]({sweep_png.name})", ""] if sweep_png.exists() else []
    lines += ["## Every run", ""]
  lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
  lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
  others = sorted((r for r in rows if r is not best), key=lambda r: r.valid_bpb)
  verdict = f"Lowest valid BPB: **{best.name}** ({best.valid_bpb:.4f})"
  if others:
    verdict += "; " + ", ".join(
      f"{r.name} +{r.valid_bpb - best.valid_bpb:.4f} ({(r.valid_bpb / best.valid_bpb - 1):+.1%})" for r in others
    )
  extra = efficiency(rows, efficiency_reference) if efficiency_reference else []
  lines += [
    "",
    verdict + ".",
    "",
    *[f"- {e}" if i else e for i, e in enumerate(extra)],
    "",
    f"![valid BPB vs training bytes and FLOPs]({png.name})",
    "",
  ]
  md = out / "report.md"
  md.write_text("\n".join(lines))
  img = base64.b64encode(png.read_bytes()).decode()
  top = ""
  if summary:
    top = f"<h2>Over seeds and sweep points</h2><pre>{html.escape(chr(10).join(summary))}</pre>"
    if sweep_png.exists():
      top += f'<img alt="sweep" src="data:image/png;base64,{base64.b64encode(sweep_png.read_bytes()).decode()}">'
    top += "<h2>Every run</h2>"
  table = "".join(f"<tr>{''.join(f'<td>{html.escape(c)}</td>' for c in _cells(r))}</tr>" for r in rows)
  page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}</style>
</head><body><h1>{html.escape(title)}</h1><ul>{"".join(f"<li>{html.escape(n)}</li>" for n in notes)}</ul>
{top}<table><tr>{"".join(f"<th>{h}</th>" for h in HEADER)}</tr>{table}</table>
<p>{html.escape(verdict.replace("**", ""))}.</p>{"".join(f"<p>{html.escape(e)}</p>" for e in extra)}<img alt="valid BPB curves" src="data:image/png;base64,{img}">
</body></html>"""
  page_path = out / "report.html"
  page_path.write_text(page)
  return md, page_path
