"""Bits per byte of a trained run on documents: what `chunklm eval` reports and `chunklm.load(...).score` returns,
computed in one place (`score_documents`), and the whole `chunklm eval` (`eval_run`: a workdir and some paths, or
its validation split, in; the figures out)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from chunklm.data.corpus import Documents, load_documents
from chunklm.data.dna import looks_like_dna
from chunklm.data.pipeline import leading_bytes
from chunklm.errors import DataError
from chunklm.eval.bpb import evaluate, make_eval_step
from chunklm.run.trained import TrainedRun, open_run


@dataclasses.dataclass(frozen=True)
class RunEval:
  run: TrainedRun
  what: str  # the data evaluated, in words: its paths or "the run's validation split"
  result: dict[str, float]  # bpb, bytes, predicted, nll_sum, routing statistics (and bits_per_base for DNA)


def score_documents(
  run: TrainedRun,
  docs: Documents,
  batch_size: int | None = None,
  *,
  progress: bool = False,
  eval_step=None,
  flag: str = "--batch-size",
) -> dict[str, float]:
  """The figures of `evaluate` for `run` on every byte of `docs` (its tokens for a token model), `batch_size`
  windows at a time (default: eval.batch_size; lowered to the number of windows, refused in one line naming `flag`
  when its activations cannot fit in memory); `eval_step`: a compiled `make_eval_step(run.graphdef)` to reuse.
  DNA (a byte model on nucleotide letters, one byte per base) adds bits_per_base, equal to bpb."""
  step = eval_step or make_eval_step(run.graphdef)
  res = evaluate(
    step,
    run.params,
    run.units(docs),
    run.cfg.data.seq_len,
    batch_size or run.cfg.eval.batch_size,
    progress=progress,
    model=run.cfg.model,
    flag=flag if batch_size else "eval.batch_size",
    **run.vocab,
  )
  if not run.cfg.data.tokenizer and looks_like_dna(docs.data[: 1 << 20]):
    res["bits_per_base"] = res["bpb"]
  return res


def eval_run(
  workdir: str | Path,
  overrides: tuple[str, ...] = (),
  paths: tuple[str, ...] = (),
  *,
  max_bytes: int = 0,
  batch_size: int | None = None,
  progress: bool = False,
) -> RunEval:
  """The newest checkpoint of `workdir` (with `overrides` that keep its parameters) scored on the documents of
  `paths` (default: the run's validation split), only their first `max_bytes` bytes when positive."""
  run = open_run(workdir, tuple(overrides))
  if paths:
    docs = load_documents(tuple(paths), run.cfg.data)
    docs = docs.select(docs.lengths > 0)
    if docs.num_bytes == 0:
      raise DataError(f"{', '.join(paths)}: no bytes to evaluate")
    what = ", ".join(paths)
  else:
    docs, what = run.valid_split(), "the run's validation split"
  docs = leading_bytes(docs, max_bytes)
  return RunEval(run, what, score_documents(run, docs, batch_size, progress=progress))
