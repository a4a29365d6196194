"""The lm-evaluation-harness adapter: a chunklm run as a harness model, registered as "chunklm".

    import lm_eval
    from chunklm.eval.harness import ChunkLM
    lm_eval.simple_evaluate(model=ChunkLM("runs/default"), tasks=["my_task"], task_manager=...)

or, from the command line, `chunklm lm-eval --workdir RUN --tasks T --include-path DIR` (eval/harness_run.py).

The harness's three request types map onto the scoring primitives (eval/scoring.py), for every model kind alike
(H-Net, byte and BPE Transformers read the same text):
- loglikelihood: one forward pass per (context, continuation), `batch_size` of them per pass; is_greedy from the
  argmax at each scored unit;
- loglikelihood_rolling: the text in rolling windows `stride` units apart (default data.seq_len: disjoint windows,
  as the harness's own Hugging Face models use);
- generate_until: greedy decoding (sampling where the task sets do_sample: its temperature, default 1, and top_p)
  until the task's stop strings or the model's end-of-sequence id, at most max_gen_toks bytes (a byte is the unit
  every model shares); a context longer than the window keeps its end.
Needs the optional extra chunklm[eval] (lm-eval, which needs no torch).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from chunklm.errors import UserError
from chunklm.eval.generate import generate_run
from chunklm.eval.scoring import Scorer
from chunklm.progress import bar
from chunklm.run.trained import TrainedRun, open_run

try:
  import lm_eval.models  # noqa: F401  (the harness's own models first: it fills an empty registry only)
  from lm_eval.api.model import LM
  from lm_eval.api.registry import register_model
except ImportError:  # the optional extra chunklm[eval]: without it the adapter is refused in one line (`require`)
  LM, register_model = object, None

INSTALL = "the lm-evaluation-harness adapter needs lm-eval: pip install 'chunklm[eval]'"
DEFAULT_MAX_GEN = 256  # bytes, when a task names no max_gen_toks (the harness's own default)


def require() -> None:
  """One line when lm-eval is not installed."""
  if register_model is None:
    raise UserError(INSTALL)


def _registered(cls):
  return register_model("chunklm")(cls) if register_model is not None else cls


@_registered
class ChunkLM(LM):
  """A trained (or converted, or imported) run as a harness model. `workdir` or an opened `run`; `batch_size`
  requests per forward pass; `stride` of rolling windows; `overrides` are settings that may change after training
  (e.g. kernels.impl=xla). The harness's `device` and `max_batch_size` arguments are accepted and unused."""

  def __init__(
    self,
    workdir: str | os.PathLike | None = None,
    *,
    run: TrainedRun | None = None,
    batch_size: int | str = 32,
    stride: int | None = None,
    overrides: tuple[str, ...] = (),
    progress: bool = True,
    **_ignored,
  ):
    require()
    super().__init__()
    if run is None:
      if workdir is None:
        raise UserError("ChunkLM: give a run directory (workdir) or an opened run (run), one of them")
      given = (overrides,) if isinstance(overrides, str) else tuple(overrides)  # one from --model_args is a str
      run = open_run(workdir, given, log=lambda *a, **k: None)
    elif workdir is not None:
      raise UserError("ChunkLM: give a run directory (workdir) or an opened run (run), one of them")
    self.run = run
    self.scorer = Scorer(self.run, _int(batch_size, "batch_size"), lenient=True)
    self.stride = None if stride in (None, "") else _int(stride, "stride")
    self.progress = progress

  def _bar(self, n: int, desc: str, disable: bool) -> Callable[[int], object]:
    """A progress bar's update(k) (it closes when full)."""
    progress = bar(None, total=n, enabled=self.progress and not disable, desc=desc, unit="req")

    def update(k: int) -> None:
      progress.update(k)
      if progress.n >= n:
        progress.close()

    return update

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    pairs = [(_utf8(c), _utf8(x)) for c, x in (r.args for r in requests)]
    out = self.scorer.loglikelihood(pairs, self._bar(len(pairs), "loglikelihood", disable_tqdm))
    for r, res in zip(requests, out):
      self.cache_hook.add_partial("loglikelihood", r.args, res)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    per_text = [self.scorer.rolling_rows(_utf8(r.args[0]), self.stride) for r in requests]
    windows = sum(len(rows) for rows in per_text)  # what the bar counts
    out = self.scorer.rolling_totals(per_text, self._bar(windows, "loglikelihood_rolling", disable_tqdm))
    for r, res in zip(requests, out):
      self.cache_hook.add_partial("loglikelihood_rolling", r.args, res)
    return out

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    out: list[str | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
      groups.setdefault(_settings(r.args[1]), []).append(i)
    update = self._bar(len(requests), "generate_until", disable_tqdm)
    for settings, members in groups.items():
      until, max_bytes, temperature, top_p = settings
      for lo in range(0, len(members), self.scorer.batch_size):
        part = members[lo : lo + self.scorer.batch_size]
        prompts = [self._fitted(_utf8(requests[i].args[0]), max_bytes) for i in part]
        texts = generate_run(self.run, prompts, max_bytes=max_bytes, temperature=temperature, top_p=top_p, stop=until)
        for i, text in zip(part, texts):
          out[i] = text.decode("utf-8", errors="replace")
          self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        update(len(part))
    return [o or "" for o in out]

  def _fitted(self, context: bytes, max_bytes: int) -> bytes:
    """The end of `context` that the model reads: room is left for `max_bytes` new bytes inside the window (as the
    harness's Hugging Face models leave max_gen_toks), but the context keeps at least half the window."""
    keep = max(self.scorer.seq_len - 1 - max_bytes, self.scorer.seq_len // 2)
    units = self.scorer.encode(context)
    if len(units) <= keep:
      return context
    if self.run.tokenizer is None:
      return context[-keep:]
    text = self.run.tokenizer.decode(units[-keep:])
    while len(self.scorer.encode(text)) > keep:  # the tail's own tokens may differ at its cut
      text = text[1:]
    return text

  @property
  def tokenizer_name(self) -> str:
    return "bytes" if self.run.tokenizer is None else f"bpe-{self.run.tokenizer.vocab_size}"


def _settings(gen_kwargs) -> tuple:
  """(stop strings, max bytes, temperature, top_p) of a generate_until request's keyword arguments: greedy unless
  do_sample is set, as the harness's Hugging Face models."""
  kwargs = dict(gen_kwargs or {})
  until = kwargs.get("until") or []
  until = [until] if isinstance(until, str) else list(until)
  max_bytes = _int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN), "max_gen_toks")
  sample = bool(kwargs.get("do_sample", False))
  temperature = float(kwargs.get("temperature", 1.0)) if sample else 0.0
  top_p = float(kwargs.get("top_p", 1.0)) if sample else 1.0
  return tuple(s.encode("utf-8") for s in until if s), max_bytes, temperature, top_p


def _int(value, what: str) -> int:
  try:
    number = int(value)
  except (TypeError, ValueError):
    raise UserError(f"ChunkLM: {what} must be a positive int, got {value!r}") from None
  if number < 1 or isinstance(value, bool) or number != float(value):
    raise UserError(f"ChunkLM: {what} must be a positive int, got {value!r}")
  return number


def _utf8(text) -> bytes:
  if not isinstance(text, str):
    raise UserError(f"ChunkLM: the harness gave a {type(text).__name__}, expected text")
  return text.encode("utf-8", errors="surrogateescape")
