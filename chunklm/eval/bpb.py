"""Bits per byte on held-out documents: total NLL over every byte (or token) of the text / the text's bytes.

Every byte (token) of the evaluated documents is predicted exactly once (the windows tile the packed stream, the last
one padded and masked), and the divisor is the number of UTF-8 bytes the predictions stand for, so the figure is
exact, independent of the batch size, and comparable between byte and token models on the same documents.
`eval_step` returns sums (NLL, predicted positions, text bytes, H-Net stage counts) so batches add up exactly;
`nll_sums` is also the training loss's NLL.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from chunklm.config import ModelConfig
from chunklm.data.corpus import Documents
from chunklm.data.pipeline import BOS, PackedWindows, eval_batches
from chunklm.errors import UserError
from chunklm.mesh.memory import GIB, device_memory
from chunklm.model.functional import forward
from chunklm.model.stage_output import counts, routing_metrics
from chunklm.progress import bar


def nll_sums(logits_BxLxV: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(NLL in nats summed over predicted positions, number of predicted positions, text bytes they stand for)."""
  nll_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"].astype(jnp.int32))
  mask = batch["loss_mask"].astype(jnp.float32)
  # byte batches may leave out target_bytes: each predicted byte stands for itself
  n_bytes = jnp.sum(batch["target_bytes"].astype(jnp.float32)) if "target_bytes" in batch else jnp.sum(mask)
  return jnp.sum(nll_BxL * mask), jnp.sum(mask), n_bytes


def eval_step(graphdef, params, batch: dict) -> dict:
  """Sums (not means) so batches add up exactly; every H-Net stage runs at full capacity (no overflow)."""
  logits_BxLxV, stages = forward(graphdef, params, batch, exact=True)
  total_nll, count, n_bytes = nll_sums(logits_BxLxV, batch)
  return {"nll_sum": total_nll, "predicted": count, "bytes": n_bytes, **counts(stages)}


def make_eval_step(graphdef):
  return jax.jit(functools.partial(eval_step, graphdef))


def evaluate(
  eval_step,
  params,
  docs: Documents,
  seq_len: int,
  batch_size: int,
  *,
  progress: bool = False,
  desc: str = "eval",
  put=lambda batch: batch,
  bos: int = BOS,
  piece_bytes: np.ndarray | None = None,
  model: ModelConfig | None = None,
  flag: str = "eval.batch_size",
) -> dict[str, float]:
  """{'bpb', 'bytes', 'predicted', 'nll_sum', and summed routing statistics} over all of `docs`.

  `put` places each (global, host-side) batch on devices, e.g. split over a mesh; `bos` and `piece_bytes` describe a
  token model's vocabulary (None for bytes). A batch size far above the number of windows is lowered (see
  `lowered_batch`); with
  `model`, one whose activations cannot fit in memory is refused before anything is allocated (`flag` names it).
  """
  totals: dict[str, float] = {}
  pending = []
  n_windows = len(PackedWindows(docs, seq_len, shuffle=False, pad_last=True))
  if model is not None:
    batch_size = check_eval_batch(model, batch_size, seq_len, n_windows, flag)
  batch_size = lowered_batch(batch_size, n_windows)
  n_batches = -(-n_windows // batch_size)
  for batch in bar(
    eval_batches(docs, seq_len, batch_size, bos, piece_bytes),
    total=n_batches,
    enabled=progress,
    desc=desc,
    unit="batch",
  ):
    pending.append(eval_step(params, put(batch)))
    if len(pending) > 4:  # keep a few batches in flight, then fold them into float64 host sums
      _accumulate(totals, pending.pop(0))
  for out in pending:
    _accumulate(totals, out)
  return _with_rates(totals)


def _with_rates(totals: dict[str, float]) -> dict[str, float]:
  """Summed statistics plus what is derived from them: bits per byte and the routing rates."""
  n = totals.get("bytes", 0.0)
  totals["bpb"] = totals["nll_sum"] / n / math.log(2) if n else float("nan")
  stages = sum(1 for k in totals if k.startswith("boundaries_s"))
  if stages:
    totals.update({k: float(v) for k, v in routing_metrics(totals, stages).items()})
  return totals


def combine(results: list[dict[str, float]]) -> dict[str, float]:
  """The evaluation of several texts together, from `evaluate`'s result on each: their sums added, the rates derived
  again (bits per byte over all their bytes)."""
  stages = sum(1 for k in results[0] if k.startswith("boundaries_s"))
  derived = {"bpb", *(routing_metrics(results[0], stages) if stages else {})}
  totals: dict[str, float] = {}
  for res in results:
    for k, v in res.items():
      if k not in derived:
        totals[k] = totals.get(k, 0.0) + v
  return _with_rates(totals)


def _accumulate(totals: dict, out: dict) -> None:
  for k, v in jax.device_get(out).items():
    totals[k] = totals.get(k, 0.0) + float(np.asarray(v, np.float64))


ACTIVATION_FACTOR = 16  # float32 values live per d_model-wide position of a level (projections, Mamba2's expansion)


def activation_bytes(model: ModelConfig, batch: int, seq_len: int) -> int:
  """A rough estimate of what one evaluation forward of `batch` windows holds at its peak: batch x seq_len x d_model
  x 4 bytes x ACTIVATION_FACTOR summed over the levels (each at full length; an H-Net keeps every outer level's
  residual while its inner ones run), plus the logits and their softmax. Not x layers: without a backward pass
  each layer's activations are freed once the next has read them."""
  per_position = 3 * model.vocab_size + sum(model.d_model[: model.num_levels]) * ACTIVATION_FACTOR
  return batch * seq_len * per_position * 4


def check_fits(need: int, what: str, advice: str) -> None:
  """One line instead of an out-of-memory crash when `need` bytes cannot fit in the device's memory."""
  limit, where = device_memory()
  if limit and need > limit:
    raise UserError(f"{what} needs about {need / GIB:,.1f} GiB but {where} {limit / GIB:,.1f} GiB; {advice}")


def lowered_batch(batch_size: int, n_windows: int) -> int:
  """The batch size to evaluate `n_windows` windows with: `batch_size`, lowered to `n_windows` (but not below 8, so
  texts of 1 to 8 windows share one compiled shape): no batch of padding rows."""
  return max(1, min(batch_size, max(n_windows, 8)))


def check_eval_batch(model: ModelConfig, batch_size: int, seq_len: int, n_windows: int, flag: str) -> int:
  """`lowered_batch(batch_size, n_windows)`, refused in one line when its activations (`activation_bytes`) cannot
  fit in memory."""
  batch = lowered_batch(batch_size, n_windows)
  check_fits(
    activation_bytes(model, batch, seq_len),
    f"{flag} {batch_size:,}: a batch of {batch:,} windows of {seq_len:,}",
    f"use a smaller {flag}",
  )
  return batch
