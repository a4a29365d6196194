"""The Python API: a trained (or converted, or imported) run as one object.

    import chunklm
    m = chunklm.load("runs/default")
    m.score("def main():\\n    pass\\n")          # bits per byte of the text (one document)
    m.score(["text one", "text two"])              # one figure per text
    m.generate("def ", max_bytes=80)              # bytes
    b = m.boundaries("def main(args):")           # chunk starts per stage, probabilities, the text in chunks
    print(b.picture)                               # def│ main│(args│):
    m.config, m.params, m.step                     # the resolved config, the parameter pytree, its step

Everything runs at evaluation capacity (nothing dropped), on the default device, as `chunklm eval`, `generate` and
`boundaries` do; `overrides` are the settings that may change after training (e.g. kernels.impl=xla). The scoring
calls (`logprobs`, `loglikelihood`, `loglikelihood_rolling`) make one forward pass per request, batched across
requests (chunklm/eval/scoring.py); they are what the lm-evaluation-harness adapter calls.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from pathlib import Path

import numpy as np

from chunklm.config import Config
from chunklm.data.corpus import Documents
from chunklm.errors import UserError
from chunklm.eval.boundaries import picture, text_routing
from chunklm.eval.bpb import make_eval_step
from chunklm.eval.generate import ArgumentTypeError, checked_generate
from chunklm.eval.run_eval import score_documents
from chunklm.eval.scoring import Scorer
from chunklm.run.trained import TrainedRun, open_run


@dataclasses.dataclass(frozen=True)
class Boundaries:
  text: bytes
  starts: list[np.ndarray]  # per stage (outermost first): a bool per byte, True where a chunk starts
  probs: list[np.ndarray]  # per stage: the router's boundary probability at each byte
  picture: str  # the text with '│' before every stage-0 chunk start ('┃' where a deeper stage starts one too)

  def chunks(self, stage: int = 0) -> list[bytes]:
    """The text cut into the chunks of `stage` (the first piece is the rest of the chunk that the document's BOS
    starts, unless the first byte starts one of its own)."""
    cuts = [int(i) for i in np.flatnonzero(self.starts[stage])] + [len(self.text)]
    cuts = cuts if cuts[0] == 0 else [0, *cuts]
    return [self.text[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


class Model:
  """A trained model; see the module docstring."""

  def __init__(self, run: TrainedRun):
    self.run = run
    self._eval_step = None
    self._scorer: Scorer | None = None

  @property
  def config(self) -> Config:
    return self.run.cfg

  @property
  def params(self):
    return self.run.params

  @property
  def step(self) -> int:
    return self.run.step

  def __repr__(self) -> str:
    return f"chunklm.Model({str(self.run.workdir)!r}, {self.run.kind}, step {self.step})"

  def score(self, texts: str | bytes | list, *, batch_size: int = 8) -> float | list[float]:
    """Bits per byte of each text, read as one document from its start (a str is encoded as UTF-8)."""
    single = isinstance(texts, (str, bytes, bytearray))
    items = [_as_bytes(t, "score") for t in ([texts] if single else _as_list(texts, "score"))]
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
      raise InputTypeError(f"score: batch_size must be a positive int, got {batch_size!r}")
    if any(not t for t in items):
      raise UserError("score: empty text (no bytes to predict)")
    if self._eval_step is None:
      self._eval_step = make_eval_step(self.run.graphdef)
    out = []
    for text in items:
      docs = Documents.one(text)
      bpb = score_documents(self.run, docs, int(batch_size), eval_step=self._eval_step, flag="score: batch_size")["bpb"]
      out.append(bpb if math.isfinite(bpb) else float("nan"))
    return out[0] if single else out

  def generate(
    self,
    prompts: str | bytes | list,
    *,
    max_bytes: int = 200,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 0.95,
    stop: str | bytes | list | tuple = (),
    seed: int = 0,
    stop_at_eos: bool = True,
  ) -> bytes | list[bytes]:
    """Continuations (bytes) of one prompt or a batch of them, as `chunklm generate`: `stop` is a string or a list
    of them (a continuation ends before the first to occur); it also ends at the model's end-of-sequence id (a BPE
    tokenizer's EOS, 0xFF for a converted official H-Net) unless `stop_at_eos` is False. A prompt may have up to
    data.seq_len - 1 bytes (tokens)."""
    return checked_generate(
      self.run,
      prompts,
      max_bytes=max_bytes,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      stop=stop,
      seed=seed,
      stop_at_eos=stop_at_eos,
    )

  def scorer(self, batch_size: int = 32) -> Scorer:
    """The scorer of this model with `batch_size` rows per forward pass (kept while the batch size stays)."""
    if self._scorer is None or self._scorer.batch_size != batch_size:
      self._scorer = Scorer(self.run, _positive(batch_size, "batch_size"))
    return self._scorer

  def logprobs(self, text: str | bytes, *, stride: int | None = None) -> np.ndarray:
    """The natural-log probability of each byte of `text` (read as one document from its start) given the bytes
    before it: one float64 per byte. A token model's token log-probability sits on the token's last byte (0 on its
    others), so sums over token-aligned spans, and the total, are exact. Texts longer than the window are read in
    rolling windows `stride` units apart (default data.seq_len: no overlap, as `chunklm eval`)."""
    data = _as_bytes(text, "logprobs")
    scorer = self.scorer()
    per_unit, unit_bytes = scorer.unit_logprobs(data, stride)
    out = np.zeros(len(data), np.float64)
    out[np.cumsum(unit_bytes) - 1] = per_unit
    return out

  def loglikelihood(self, requests: list, *, batch_size: int = 32) -> list[tuple[float, bool]]:
    """For each (context, continuation) pair: the log-probability of the continuation given the context, and
    whether greedy decoding would produce it; one forward pass per pair, `batch_size` pairs per pass."""
    pairs = []
    if isinstance(requests, (str, bytes, bytearray)):
      raise InputTypeError("loglikelihood: expected a list of (context, continuation) pairs, got one text")
    for item in _as_list(requests, "loglikelihood"):
      if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise InputTypeError("loglikelihood: expected a list of (context, continuation) pairs")
      pairs.append((_as_bytes(item[0], "loglikelihood"), _as_bytes(item[1], "loglikelihood")))
    return self.scorer(batch_size).loglikelihood(pairs)

  def loglikelihood_rolling(self, texts: list, *, stride: int | None = None, batch_size: int = 32) -> list[float]:
    """The log-probability of each whole text from its start, in rolling windows `stride` units apart (default
    data.seq_len; a smaller stride gives each prediction more context), `batch_size` windows per pass."""
    if isinstance(texts, (str, bytes, bytearray)):
      raise InputTypeError("loglikelihood_rolling: expected a list of texts, got one text (put it in a list)")
    items = [_as_bytes(t, "loglikelihood_rolling") for t in _as_list(texts, "loglikelihood_rolling")]
    return self.scorer(batch_size).rolling(items, stride)

  def boundaries(self, text: str | bytes) -> Boundaries:
    """Where each stage of an H-Net starts its chunks in `text` (one document, up to data.seq_len - 1 bytes)."""
    stages = self.config.model.num_stages
    if not stages:
      raise UserError(f"boundaries: {self.run.workdir} is a {self.run.kind} model, not an H-Net (no chunks)")
    data = _as_bytes(text, "boundaries")
    if len(data) > self.config.data.seq_len - 1:
      raise UserError(
        f"boundaries: the text has {len(data):,} bytes; this model reads up to {self.config.data.seq_len - 1:,} at once"
      )
    r = text_routing(self.run.graphdef, self.params, data, stages, self.config.data.seq_len)
    return Boundaries(data, list(r.starts), list(r.probs), picture(data, list(r.starts)))


class InputTypeError(ArgumentTypeError):
  """An argument of the wrong type (a UserError, one line, and a TypeError for `except TypeError`)."""


def _as_bytes(value, what: str) -> bytes:
  if isinstance(value, str):
    return value.encode("utf-8")
  if isinstance(value, (bytes, bytearray)):
    return bytes(value)
  raise InputTypeError(f"{what}: expected str or bytes, got {type(value).__name__}")


def _positive(value, what: str) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise InputTypeError(f"{what} must be a positive int, got {value!r}")
  return int(value)


def _as_list(values, what: str) -> list:
  """A list (or other iterable) of texts as a list; anything else is one line saying what was expected."""
  try:
    return list(values)
  except TypeError:
    raise InputTypeError(f"{what}: expected str, bytes or a list of them, got {type(values).__name__}") from None


def load(workdir: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> Model:
  """The newest readable checkpoint of a run directory (trained, converted or imported) as a Model."""
  if not isinstance(workdir, (str, os.PathLike)):
    raise InputTypeError(f"load: expected a run directory (str or path), got {type(workdir).__name__}")
  if isinstance(overrides, str) or not isinstance(overrides, (list, tuple)):
    raise InputTypeError(f"load: overrides must be a list of 'KEY=VALUE' strings, got {type(overrides).__name__}")
  if not all(isinstance(o, str) for o in overrides):
    raise InputTypeError("load: overrides must be a list of 'KEY=VALUE' strings")
  return Model(open_run(workdir, tuple(overrides), log=lambda *a, **k: None, flag="chunklm.load:"))
