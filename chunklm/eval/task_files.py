"""Offline lm-evaluation-harness task folders made from a text the user owns (`chunklm tasks make`).

`make_tasks` writes one folder per family under `out_dir`, each a set of harness task YAMLs, their JSONL data and
group YAMLs; `lm_eval --include_path OUT_DIR --tasks chunklm_cute,chunklm_cloze,...` then runs them with nothing
downloaded (the data loads with the `json` builder of `datasets`):

  probes/  chunklm_cute_<probe> (multiple choice) and chunklm_cute_<probe>_gen (generate_until, exact_match) for
           each CUTE-style probe (task_probes.py); groups chunklm_cute and chunklm_cute_gen.
  cloze/   chunklm_cloze: pick the continuation of a context from four (task_cloze.py).
  noisy/   <base>_noisy_<perturbation>_s<strength>: a multiple-choice task (chunklm_cloze by default) with its
           contexts perturbed (and, if asked, its choices); group <base>_noisy_s<strength> per strength. The items
           are the clean task's, so acc(noisy) - acc(clean) is the drop the perturbation causes.

Multiple-choice tasks score acc and acc_norm (log-likelihood of each choice after the query; choices carry their
leading space and `target_delimiter` is empty, so the query and a choice join exactly as in the text). The YAMLs name
record fields (`doc_to_text: query`), which the harness reads as they are, rather than Jinja templates, which it
would turn into numbers when they render as digits. The data paths are absolute: lm_eval 0.4.13 hands `data_files`
to `datasets.load_dataset` unchanged, so a relative path would be read from the harness's working directory, not
the YAML's folder; a moved folder is made again (same seed, same items). README.md records how the folder was made
and `chunklm_tasks.json` marks it as this command's, so a later run may replace it (and only such a folder).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from chunklm import logs, progress
from chunklm.errors import UserError
from chunklm.eval.perturb import PERTURBATIONS
from chunklm.eval.task_cloze import MIN_CONTEXT_BYTES, MIN_CONTINUATION_BYTES, cloze_records, noisy_records
from chunklm.eval.task_probes import MIN_WORDS, PROBES, probe_records, words_from_text

FAMILIES = ("probes", "cloze", "noisy")
DEFAULT_N = 200
DEFAULT_STRENGTHS = (0.05, 0.15)
DEFAULT_NOISY_ON = ("cloze",)
MARKER = "chunklm_tasks.json"
MAX_GEN_TOKENS = 64
_MC_METRICS = [
  {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
  {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
]
_GEN_METRICS = [
  {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "regexes_to_ignore": [r"^\s+", r"\s+$"]}
]


def probe_task(probe: str) -> str:
  return f"chunklm_cute_{probe}"


def base_task(base: str) -> str:
  """The clean task a --noisy-on name stands for: 'cloze' or a probe name."""
  return "chunklm_cloze" if base == "cloze" else probe_task(base)


def noisy_task(base: str, perturbation: str, strength: float) -> str:
  return f"{base_task(base)}_noisy_{perturbation}_s{strength:g}"


def noisy_group(base: str, strength: float) -> str:
  return f"{base_task(base)}_noisy_s{strength:g}"


def _dataset(path: Path) -> dict[str, Any]:
  return {
    "dataset_path": "json",
    "dataset_name": None,
    "dataset_kwargs": {"data_files": {"test": str(path)}},
    "test_split": "test",
  }


def mc_yaml(name: str, data: Path, delimiter: str = "") -> dict[str, Any]:
  """The harness config of a multiple-choice task over the records in `data`; `delimiter` goes between the query
  and each choice (none: the choices carry their own leading space)."""
  return {
    "task": name,
    **_dataset(data),
    "output_type": "multiple_choice",
    "doc_to_text": "query",
    "doc_to_choice": "choices",
    "doc_to_target": "gold",
    "target_delimiter": delimiter,
    "num_fewshot": 0,
    "metric_list": _MC_METRICS,
    "metadata": {"version": 1},
  }


def gen_yaml(name: str, data: Path) -> dict[str, Any]:
  """The harness config of a generation task: greedy up to a newline, exact match with the record's answer."""
  return {
    "task": name,
    **_dataset(data),
    "output_type": "generate_until",
    "doc_to_text": "query",
    "doc_to_target": "answer",
    "target_delimiter": "",
    "num_fewshot": 0,
    "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": MAX_GEN_TOKENS},
    "metric_list": _GEN_METRICS,
    "metadata": {"version": 1},
  }


def group_yaml(name: str, tasks: list[str], metrics: Sequence[str]) -> dict[str, Any]:
  """A harness group of `tasks`: each metric averaged over them, weighted by their sizes."""
  aggregate = [{"metric": m, "aggregation": "mean", "weight_by_size": True} for m in metrics]
  return {"group": name, "task": tasks, "aggregate_metric_list": aggregate, "metadata": {"version": 1}}


class _Dumper(yaml.SafeDumper):
  """YAML with strings that hold a newline double-quoted ("\\n"), not folded over lines."""


_Dumper.add_representer(
  str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style='"' if "\n" in s else None)
)


def _dump(cfg: dict[str, Any]) -> str:
  return yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)


def _jsonl(records: list[dict[str, Any]]) -> str:
  return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


class Folder:
  """The files a run writes, by path relative to the output folder, and the tasks and groups they define."""

  def __init__(self, root: Path):
    self.root = root
    self.files: dict[str, str] = {}
    self.tasks: dict[str, int] = {}  # task -> items
    self.groups: dict[str, list[str]] = {}
    self.words: int | None = None  # eligible words of the text, when the probes were made

  def task(
    self, family: str, name: str, records: list[dict[str, Any]], *, gen: bool = False, delimiter: str = ""
  ) -> None:
    """Task `name` (and with `gen` its generation twin `name`_gen) over `records`, in folder `family`."""
    data = f"{family}/data/{name}.jsonl"
    self.files[data] = _jsonl(records)
    self.files[f"{family}/{name}.yaml"] = _dump(mc_yaml(name, self.root / data, delimiter))
    self.tasks[name] = len(records)
    if gen:
      self.files[f"{family}/{name}_gen.yaml"] = _dump(gen_yaml(f"{name}_gen", self.root / data))
      self.tasks[f"{name}_gen"] = len(records)

  def group(self, family: str, name: str, tasks: list[str], metrics: Sequence[str] = ("acc", "acc_norm")) -> None:
    self.files[f"{family}/_{name}.yaml"] = _dump(group_yaml(name, tasks, metrics))
    self.groups[name] = tasks

  def top(self) -> list[str]:
    """What to name on the harness's --tasks to run everything once: the groups and the tasks in none."""
    grouped = {t for tasks in self.groups.values() for t in tasks}
    return list(self.groups) + [t for t in self.tasks if t not in grouped]


def _check(
  families: Sequence[str],
  n: int,
  strengths: Sequence[float],
  perturbations: Sequence[str],
  noisy_on: Sequence[str],
  context_bytes: int,
  continuation_bytes: int,
) -> None:
  """One line for the first argument that cannot work."""
  if not families or any(f not in FAMILIES for f in families):
    raise UserError(f"tasks make: --families {','.join(families)!r}: choose from {', '.join(FAMILIES)}")
  if n < 1:
    raise UserError(f"tasks make: --n must be at least 1, got {n}")
  if context_bytes < MIN_CONTEXT_BYTES or continuation_bytes < MIN_CONTINUATION_BYTES:
    raise UserError(
      f"tasks make: --context-bytes must be at least {MIN_CONTEXT_BYTES} and --continuation-bytes at least "
      f"{MIN_CONTINUATION_BYTES}, got {context_bytes} and {continuation_bytes}"
    )
  if "noisy" not in families:
    return
  bad = [s for s in strengths if not (math.isfinite(s) and 0 <= s <= 1)]
  if bad or not strengths:
    raise UserError(f"tasks make: --strength must be in [0, 1], got {bad[0] if bad else 'none'}")
  unknown = [p for p in perturbations if p not in PERTURBATIONS] or ([] if perturbations else ["(none)"])
  if unknown:
    raise UserError(f"tasks make: unknown perturbation {unknown[0]!r}; available: all, {', '.join(PERTURBATIONS)}")
  for base in noisy_on:
    if base != "cloze" and base not in PROBES:
      raise UserError(f"tasks make: --noisy-on {base!r}: choose from cloze, {', '.join(PROBES)}")
    family = "cloze" if base == "cloze" else "probes"
    if family not in families:
      raise UserError(f"tasks make: --noisy-on {base} needs the {family} family too (the clean task to compare with)")


def earlier_files(out: Path) -> list[str]:
  """The files an earlier run wrote in `out` (to replace); none for a new or empty folder. Anything else is refused."""
  if out.exists() and not out.is_dir():
    raise UserError(f"tasks: --out {out} is a file, not a folder")
  if not out.exists() or not any(out.iterdir()):
    return []
  try:
    return list(json.loads((out / MARKER).read_text())["files"])
  except (OSError, ValueError, KeyError, TypeError):
    raise UserError(
      f"tasks: --out {out} is a folder that `chunklm tasks` did not write (no readable {MARKER}); "
      "choose a new or empty folder"
    ) from None


def _read_text(text_path: str | Path) -> bytes:
  if "://" in str(text_path):
    raise UserError(f"tasks make: --text {text_path}: a local file is needed")
  try:
    return Path(text_path).read_bytes()
  except FileNotFoundError:
    raise UserError(f"tasks make: --text {text_path}: no such file") from None
  except (IsADirectoryError, PermissionError) as e:
    raise UserError(f"tasks make: --text {text_path}: {e.strerror}") from None


def _probes(folder: Folder, data: bytes, n: int, seed: int, show: bool) -> dict[str, list[dict[str, Any]]]:
  words = words_from_text(data.decode("utf-8", errors="replace"))
  if len(words) < MIN_WORDS:
    raise UserError(
      f"tasks make: the text has {len(words)} distinct words of 3-12 letters seen at least twice; the probes need "
      f"at least {MIN_WORDS} (a longer text, or --families without probes)"
    )
  random.Random(seed).shuffle(words)
  folder.words = len(words)
  made = {}
  for probe in progress.bar(PROBES, enabled=show, desc="probes", total=len(PROBES)):
    made[probe] = probe_records(probe, words, n, random.Random(f"{seed}:{probe}"))
    if not made[probe]:
      raise UserError(f"tasks make: too few words in the text fit the {probe} probe")
    folder.task("probes", probe_task(probe), made[probe], gen=True)
  folder.group("probes", "chunklm_cute", [probe_task(p) for p in PROBES])
  folder.group("probes", "chunklm_cute_gen", [probe_task(p) + "_gen" for p in PROBES], ("exact_match",))
  logs.info(f"probes: {len(words):,} eligible words, {sum(map(len, made.values())):,} items in {len(made)} probes")
  return made


def _cloze(folder: Folder, data: bytes, n: int, seed: int, context_bytes: int, continuation_bytes: int) -> list:
  records = cloze_records(data, n, random.Random(f"{seed}:cloze"), context_bytes, continuation_bytes)
  if not records:
    raise UserError(
      f"tasks make: the text is too short for cloze items ({len(data):,} bytes; each needs --context-bytes "
      f"{context_bytes} before it and three distractors elsewhere)"
    )
  folder.task("cloze", "chunklm_cloze", records)
  return records


def make_tasks(
  text_path: str | Path,
  out_dir: str | Path,
  *,
  families: Sequence[str] = FAMILIES,
  n: int = DEFAULT_N,
  seed: int = 0,
  strengths: Sequence[float] = DEFAULT_STRENGTHS,
  perturbations: Sequence[str] | None = None,
  noisy_choices: bool = False,
  noisy_on: Sequence[str] = DEFAULT_NOISY_ON,
  context_bytes: int = 200,
  continuation_bytes: int = 40,
  progress: bool = True,
) -> dict[str, Any]:
  """Write the task folders of `families` for the text at `text_path` into `out_dir` (see the module docstring);
  `perturbations`: names in `chunklm.eval.perturb.PERTURBATIONS` (None: all). Returns the summary that
  chunklm_tasks.json holds: the settings, the source's sha256 and every task's item count."""
  perturbations = list(dict.fromkeys(PERTURBATIONS if perturbations is None else perturbations))
  strengths = list({f"{s:g}": s for s in strengths}.values())  # one task per name
  noisy_on = list(dict.fromkeys(noisy_on))
  _check(families, n, strengths, perturbations, noisy_on, context_bytes, continuation_bytes)
  out = Path(out_dir).absolute()
  old = earlier_files(out)
  data = _read_text(text_path)
  folder = Folder(out)
  made: dict[str, list[dict[str, Any]]] = {}
  if "probes" in families:
    made |= _probes(folder, data, n, seed, progress)
  if "cloze" in families:
    made["cloze"] = _cloze(folder, data, n, seed, context_bytes, continuation_bytes)
  if "noisy" in families:
    for base in noisy_on:
      for s in strengths:
        names = [noisy_task(base, p, s) for p in perturbations]
        for p, name in zip(perturbations, names):
          folder.task("noisy", name, noisy_records(made[base], p, s, seed, choices=noisy_choices))
        folder.group("noisy", noisy_group(base, s), names)
  summary = {
    "made_by": "chunklm tasks make",
    "source": str(Path(text_path).absolute()),
    "sha256": hashlib.sha256(data).hexdigest(),
    "bytes": len(data),
    "words": folder.words,
    "settings": {
      "families": list(families),
      "n": n,
      "seed": seed,
      "strengths": strengths,
      "perturbations": perturbations,
      "noisy_on": noisy_on,
      "noisy_choices": noisy_choices,
      "context_bytes": context_bytes,
      "continuation_bytes": continuation_bytes,
    },
    "folder": str(out),
    "tasks": folder.tasks,
    "groups": folder.groups,
    "run": folder.top(),
  }
  folder.files["README.md"] = readme(summary)
  write_folder(out, old, folder.files, summary)
  return summary


def write_folder(out: Path, old: list[str], files: dict[str, str], summary: dict[str, Any]) -> None:
  """Replace what an earlier run wrote (the files its marker lists) with `files`; the marker first, listing them,
  so an interrupted run can be replaced too."""
  for rel in old:
    path = (out / rel).resolve()
    if path.is_relative_to(out.resolve()) and path.is_file():
      path.unlink()
  for family in FAMILIES:
    for d in (out / family / "data", out / family):
      if d.is_dir() and not any(d.iterdir()):
        d.rmdir()
  out.mkdir(parents=True, exist_ok=True)
  marker = summary | {"files": sorted(files)}
  (out / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
  for rel, text in files.items():
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def readme(summary: dict[str, Any]) -> str:
  """README.md of a task folder: where it came from and how to run it."""
  s = summary["settings"]
  rows = "\n".join(f"| {t} | {k} |" for t, k in summary["tasks"].items())
  return f"""# chunklm evaluation tasks (lm-evaluation-harness)

Made by `chunklm tasks make` from a text file; nothing here was downloaded.

- source: `{summary["source"]}` ({summary["bytes"]:,} bytes), sha256 `{summary["sha256"]}`
- seed {s["seed"]}, up to {s["n"]} items per task; families: {", ".join(s["families"])}
- cloze: context ~{s["context_bytes"]} bytes, continuation ~{s["continuation_bytes"]} bytes
- noisy: {", ".join(s["noisy_on"])} at strengths {", ".join(f"{x:g}" for x in s["strengths"])} with
  {", ".join(s["perturbations"])}{" (choices perturbed too)" if s["noisy_choices"] else " (contexts only)"}

The same text, seed and settings give the same files. The data paths in the YAMLs are absolute: after moving this
folder, make it again.

Each JSONL line is one item: `query` (the text the model conditions on), `choices` (each with its leading space),
`gold` (the index of the true choice) and `answer` (the true choice; the target of the `_gen` tasks, compared with
whitespace at either end ignored), plus what it was made from (`word`, `offset`, `offsets`, `perturbation`,
`strength`). Probes use {summary["words"] or "no"} eligible words of the text (3-12 ASCII letters, seen at least
twice). At strength 0 a noisy task holds the clean text; `uppercase` and `antspeak` ignore the strength otherwise.

## Run

A chunklm run (H-Net, byte or BPE Transformer):

    chunklm lm-eval --workdir RUN --include-path {summary["folder"]} --tasks {",".join(summary["run"])}

Any other harness model:

    lm_eval --model hf --model_args pretrained=MODEL --include_path {summary["folder"]} --tasks {",".join(summary["run"])}

The accuracy drop a perturbation causes is acc(`<base>_noisy_<perturbation>_s<strength>`) minus
acc(`<base>`): the same items, perturbed. Formats: see `chunklm/eval/task_probes.py` and `task_cloze.py`.

## Tasks

| task | items |
|---|---|
{rows}
"""
