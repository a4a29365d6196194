"""Sweeps and seeds for `chunklm compare`: a spec expanded into one run per model x sweep point x seed, and the
runs' final valid BPBs summarised per model and point (mean and spread over seeds, each model's best point).

A sweep over `budget_bytes` (BUDGET_KEY, not a config field: the compare spec's training bytes per model) gives
budget curves: each model's best at each budget, its gap to the model lowest at the largest budget and how the gap
moves per doubling of the budget (`budget_lines`), and BPB against training bytes and training FLOPs (`plot_budget`).

Seed k > 0 adds k to the model's `train.seed` (parameter init) and `data.seed` (document and window order); seed 0 is
the config as it is, so an earlier single-seed run is reused as seed 0. Within one seed every model trains on the
same bytes; across seeds only the order differs.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics

from chunklm.errors import ConfigError, UserError
from chunklm.plots import figure, save

BUDGET_KEY = "budget_bytes"


@dataclasses.dataclass(frozen=True)
class Run:
  name: str  # row and workdir name, e.g. "hnet-1stage@train.lr=0.004@seed1"
  model: str  # the spec's model
  point: tuple[tuple[str, str], ...]  # the sweep's (key, value) pairs
  seed: int  # seed index; 0 = the config's own seeds


def split_values(text: str) -> list[str]:
  """Comma-separated values, commas inside brackets kept: "[mean],[max]" -> ["[mean]", "[max]"]."""
  out, depth, cur = [], 0, ""
  for ch in text:
    depth += (ch in "[{") - (ch in "]}")
    if ch == "," and depth == 0:
      out.append(cur.strip())
      cur = ""
    else:
      cur += ch
  out.append(cur.strip())
  return out


def parse_sweep(text: str) -> tuple[str, tuple[str, ...]]:
  """ "KEY=V1,V2,..." -> (KEY, values); one clear error for anything else."""
  key, sep, rest = text.partition("=")
  values = split_values(rest) if sep else []
  if not key.strip() or not values or any(not v for v in values):
    raise UserError(f"--sweep {text!r}: expected KEY=V1,V2,... e.g. --sweep train.lr=1e-3,2e-3,4e-3")
  return key.strip(), check_values(key.strip(), values)


def normal(value) -> str:
  """One text per value, whether it came from YAML or the command line (it names the run's workdir): numbers as
  Python writes them (1e-3, 1.0e-3 and 0.001 are all "0.001"), lists as [a,b] without spaces."""
  if isinstance(value, (list, tuple)):
    return "[" + ",".join(normal(v) for v in value) + "]"
  if isinstance(value, bool):
    return str(value).lower()
  text = str(value).strip()
  for kind in (int, float):
    try:
      return repr(kind(text))
    except ValueError:
      pass
  if text.startswith("[") and text.endswith("]"):
    return "[" + ",".join(normal(v) for v in split_values(text[1:-1])) + "]"
  return text


def parse_sweeps(texts: list[str]) -> dict[str, tuple[str, ...]]:
  """The grid of several --sweep arguments; one clear line for a key swept twice."""
  swept: dict[str, tuple[str, ...]] = {}
  for text in texts:
    key, values = parse_sweep(text)
    if key in swept:
      raise UserError(f"--sweep {key} is given twice; put all its values in one --sweep {key}=V1,V2,...")
    swept[key] = values
  return swept


def check_unset(keys, overrides: list[str]) -> None:
  """A swept key may not also be set (KEY=VALUE in `overrides`): one of the two would silently win."""
  for key in keys:
    clash = [o for o in overrides if o.split("=", 1)[0].strip() == key]
    if clash:
      raise UserError(f"{key} is swept and also set ({clash[0]}); to try other values give --sweep {key}=V1,V2,...")


def check_values(key: str, values) -> tuple[str, ...]:
  values = tuple(normal(v) for v in values)
  if len(values) < 1 or len(set(values)) != len(values):
    raise ConfigError(f"sweep {key}: needs distinct values, got {list(values)}")
  for v in values:
    if "/" in v or "@" in v:  # values name workdirs
      raise ConfigError(f"sweep {key}: value {v!r} may not contain '/' or '@'")
  return values


def run_name(model: str, point: tuple[tuple[str, str], ...], seed: int) -> str:
  return "@".join([model] + [f"{k}={v}" for k, v in point] + ([f"seed{seed}"] if seed else []))


def expand(models: list[str], sweep: dict[str, tuple[str, ...]], seeds: int) -> list[Run]:
  """Every model x sweep point (the grid of all keys' values) x seed, model-major."""
  if seeds < 1:
    raise ConfigError(f"seeds must be at least 1, got {seeds}")
  points = [tuple(zip(sweep, values)) for values in itertools.product(*sweep.values())]
  return [Run(run_name(m, p, s), m, p, s) for m in models for p in points for s in range(seeds)]


def overrides(run: Run, train_seed: int, data_seed: int) -> list[str]:
  """The run's KEY=VALUE settings on top of its model's: the sweep point's config fields (not its budget), then the
  shifted seeds."""
  out = [f"{k}={v}" for k, v in run.point if k != BUDGET_KEY]
  if run.seed:
    out += [f"train.seed={train_seed + run.seed}", f"data.seed={data_seed + run.seed}"]
  return out


@dataclasses.dataclass
class Summary:
  model: str
  point: tuple[tuple[str, str], ...]
  bpbs: list[float]  # final valid BPB of each finished seed, in seed order
  seeds: int = 1  # seeds asked for

  @property
  def mean(self) -> float:
    return statistics.fmean(self.bpbs)

  @property
  def std(self) -> float:  # sample standard deviation over seeds; nan with one seed
    return statistics.stdev(self.bpbs) if len(self.bpbs) > 1 else math.nan

  @property
  def complete(self) -> bool:
    return len(self.bpbs) == self.seeds

  def cell(self) -> str:
    text = f"{self.mean:.4f}"
    if len(self.bpbs) > 1:
      text += f" ± {self.std:.4f} ({min(self.bpbs):.4f}–{max(self.bpbs):.4f})"
    return text if self.complete else f"{text} [{len(self.bpbs)} of {self.seeds} seeds]"


def summarise(runs: list[Run], bpb: dict[str, float]) -> list[Summary]:
  """One summary per (model, point) over the seeds that have a result in `bpb`, in run order."""
  seeds = max((r.seed for r in runs), default=0) + 1
  out: dict[tuple, Summary] = {}
  for r in runs:
    if r.name in bpb:
      out.setdefault((r.model, r.point), Summary(r.model, r.point, [], seeds)).bpbs.append(bpb[r.name])
  return list(out.values())


def best_per_model(summaries: list[Summary], sweep: dict[str, tuple[str, ...]]) -> dict[str, tuple[Summary, str]]:
  """Each model's point with the lowest mean BPB among its points with every seed finished (among all when none
  is), and a warning when that point is the lowest or highest of three or more numeric values swept (the optimum
  may lie outside the range) or lacks seeds."""
  best: dict[str, tuple[Summary, str]] = {}
  for model in dict.fromkeys(s.model for s in summaries):
    mine = [s for s in summaries if s.model == model]
    top = min([s for s in mine if s.complete] or mine, key=lambda s: s.mean)
    edges = [
      k
      for k, v in top.point
      if len(sweep[k]) > 2 and _numeric(sweep[k]) and float(v) in (min(map(float, sweep[k])), max(map(float, sweep[k])))
    ]
    warns = [f"at the edge of the swept {', '.join(edges)} range: the best may lie outside it"] if edges else []
    if not top.complete:
      warns.append("not every seed has finished")
    best[model] = (top, "; ".join(warns))
  return best


def _numeric(values) -> bool:
  try:
    return all(math.isfinite(float(v)) for v in values)
  except ValueError:
    return False


def point_label(point: tuple[tuple[str, str], ...]) -> str:
  return ", ".join(f"{k}={v}" for k, v in point) or "-"


def lines(
  summaries: list[Summary], sweep: dict[str, tuple[str, ...]], seeds: int, metric: str = "valid BPB", best: bool = True
) -> list[str]:
  """Markdown: a table of mean ± std (min–max) of `metric` (lower is better) per model and point, then (`best`) each
  model's best and the ranking."""
  head = metric + (f", mean ± std over {seeds} seeds (min–max)" if seeds > 1 else "")
  out = [f"| model | {point_label(()) if not sweep else ', '.join(sweep)} | {head} |", "|---|---|---|"]
  out += [f"| {s.model} | {point_label(s.point)} | {s.cell()} |" for s in summaries]
  if not best:
    return out
  ranked = sorted(best_per_model(summaries, sweep).values(), key=lambda b: b[0].mean)
  out.append("")
  if sweep:
    for s, warn in ranked:
      out.append(f"- best of {s.model}: {point_label(s.point)}, {s.cell()}" + (f" ({warn})" if warn else ""))
  if len(ranked) == 1:
    return out
  lead = ranked[0][0]
  rest = ", ".join(f"{s.model} {s.mean - lead.mean:+.4f} ({s.mean / lead.mean - 1:+.1%})" for s, _ in ranked[1:])
  out.append(
    f"- lowest {'mean ' if seeds > 1 else ''}{metric}{' at its best point' if sweep else ''}: "
    f"**{lead.model}** ({lead.mean:.4f})" + (f"; {rest}" if rest else "")
  )
  return out


def plot(
  summaries: list[Summary], sweep: dict[str, tuple[str, ...]], path, ylabel: str = "final valid bits per byte"
) -> object | None:
  """The mean (error bars: std over seeds) against the swept value, a line per model; one swept key only."""
  if len(sweep) != 1:
    return None
  ((key, values),) = sweep.items()
  numeric = _numeric(values)
  xs = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
  summaries = sorted(summaries, key=lambda s: xs[s.point[0][1]])
  fig, ax = figure(figsize=(6.5, 4.5))
  for i, model in enumerate(dict.fromkeys(s.model for s in summaries)):
    mine = [s for s in summaries if s.model == model]
    x = [xs[s.point[0][1]] for s in mine]
    y = [s.mean for s in mine]
    err = [0.0 if math.isnan(s.std) else s.std for s in mine]
    ax.errorbar(x, y, yerr=err, fmt="o-", color=f"C{i}", label=model, capsize=3)
  if numeric and min(xs.values()) > 0 and max(xs.values()) / min(xs.values()) >= 4:
    ax.set_xscale("log")
    ax.minorticks_off()  # the swept values are the ticks (log minor labels would crowd them)
  ax.set_xticks(list(xs.values()), list(xs))
  ax.set_xlabel(key)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  save(fig, path, dpi=100)
  return path


def check_budgets(values, budget_given: bool) -> None:
  """One clear line for budgets that are not whole positive numbers of bytes, or that clash with --budget-bytes."""
  if budget_given:
    raise UserError(f"--sweep {BUDGET_KEY} and --budget-bytes: give the budgets in one of them")
  if not all(v.isdecimal() and v.isascii() and int(v) > 0 for v in values):
    raise UserError(
      f"--sweep {BUDGET_KEY}={','.join(values)}: budgets are whole positive numbers of training bytes, "
      "e.g. --sweep budget_bytes=2500000,10000000"
    )


def report(
  runs: list[Run],
  bpb: dict[str, float],
  flops_per_byte: dict[str, float],
  sweep: dict[str, tuple[str, ...]],
  seeds: int,
  path,
) -> tuple[list[Summary], list[str]]:
  """The summaries of the finished runs (`bpb`: final valid BPB by run name), the report's markdown lines, and the
  plot at `path`: against the swept value, or for a budget sweep (whose largest budget would always be "best")
  budget curves, with each point's training FLOPs per byte averaged over its seeds (`flops_per_byte` by run name)."""
  summaries = summarise(runs, bpb)
  if BUDGET_KEY not in sweep:
    plot(summaries, sweep, path)
    return summaries, lines(summaries, sweep, seeds)
  per_point: dict[tuple, list[float]] = {}
  for r in runs:
    if r.name in flops_per_byte:
      per_point.setdefault((r.model, r.point), []).append(flops_per_byte[r.name])
  plot_budget(summaries, {k: statistics.fmean(v) for k, v in per_point.items()}, path)
  return summaries, lines(summaries, sweep, seeds, best=False) + [""] + budget_lines(summaries, sweep)


def best_per_budget(summaries: list[Summary]) -> dict[str, dict[int, Summary]]:
  """model -> budget -> its lowest-mean point at that budget over the other swept keys, among the points with every
  seed finished (among all when none is)."""
  groups: dict[str, dict[int, list[Summary]]] = {}
  for s in summaries:
    groups.setdefault(s.model, {}).setdefault(int(dict(s.point)[BUDGET_KEY]), []).append(s)
  return {
    model: {b: min([s for s in mine if s.complete] or mine, key=lambda s: s.mean) for b, mine in per.items()}
    for model, per in groups.items()
  }


def budget_lines(summaries: list[Summary], sweep: dict[str, tuple[str, ...]]) -> list[str]:
  """Markdown for a budget sweep: each model's best BPB per budget (and at which point of the other swept keys),
  then each model's gap to the lowest model at the largest budget reached, at the smallest and largest budget both
  reached, and its change in percentage points per doubling of the budget (averaged between those two)."""
  budgets = sorted(int(b) for b in sweep[BUDGET_KEY])
  others = [k for k in sweep if k != BUDGET_KEY]
  best = best_per_budget(summaries)

  def cell(s: Summary | None) -> str:
    if s is None:
      return "–"
    rest = point_label(tuple(kv for kv in s.point if kv[0] != BUDGET_KEY))
    return s.cell() + (f" ({rest})" if others else "")

  out = ["| model | " + " | ".join(f"{b:,} bytes" for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
  out += [f"| {model} | " + " | ".join(cell(mine.get(b)) for b in budgets) + " |" for model, mine in best.items()]
  top = max(b for mine in best.values() for b in mine)
  leader = min((mine[top].mean, model) for model, mine in best.items() if top in mine)[1]
  out.append("")
  for model, mine in best.items():
    if model == leader:
      continue
    shared = [b for b in budgets if b in mine and b in best[leader]]
    if len(shared) < 2:
      out.append(f"- {model} vs {leader}: fewer than two budgets finished by both, no trend yet")
      continue
    lo, hi = shared[0], shared[-1]
    gap = {b: mine[b].mean / best[leader][b].mean - 1 for b in (lo, hi)}
    per = (gap[hi] - gap[lo]) / math.log2(hi / lo) * 100
    text = f"- {model} vs {leader}: {gap[lo]:+.1%} at {lo:,} bytes, {gap[hi]:+.1%} at {hi:,}"
    if gap[lo] * gap[hi] < 0:
      text += (
        f": {'ahead' if gap[lo] < 0 else 'behind'} at the smaller budget, {'ahead' if gap[hi] < 0 else 'behind'} "
        f"at the larger ({per:+.2f} percentage points per doubling of the budget)"
      )
    else:
      way = "narrows" if abs(gap[hi]) < abs(gap[lo]) else "widens"
      text += f": the gap {way} by {abs(per):.2f} percentage points per doubling of the budget"
    out.append(text)
  return out


def plot_budget(summaries: list[Summary], flops_per_byte: dict[tuple, float], path) -> object:
  """Each model's best BPB (error bars: std over seeds) against its training bytes and its training FLOPs (budget x
  `flops_per_byte[(model, point)]`, the point's training FLOPs per byte), log axes."""
  fig, axes = figure(1, 2, figsize=(12, 4.5))
  best = best_per_budget(summaries)
  for i, (model, mine) in enumerate(best.items()):
    budgets = sorted(mine)
    y = [mine[b].mean for b in budgets]
    err = [0.0 if math.isnan(mine[b].std) else mine[b].std for b in budgets]
    flops = [b * flops_per_byte.get((model, mine[b].point), math.nan) for b in budgets]
    for ax, x in zip(axes, (budgets, flops)):
      ax.errorbar(x, y, yerr=err, fmt="o-", color=f"C{i}", label=model, capsize=3)
  budgets = sorted({b for mine in best.values() for b in mine})
  for ax, label in zip(axes, ("training bytes", "training FLOPs (budget x training FLOPs per byte)")):
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("final valid bits per byte")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
  axes[0].minorticks_off()  # the budgets are the ticks
  axes[0].set_xticks(budgets, [f"{b / 1e6:g} MB" for b in budgets])
  fig.tight_layout()
  save(fig, path, dpi=100)
  return path
