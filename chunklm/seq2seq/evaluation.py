"""Evaluating an MrT5 run: cross-entropy per target byte (bits) with hard deletion (each batch compacted into the
smallest bucket that holds it) and with soft deletion, the deletion rate and the mean kept length, the deletion rate
per kind of input byte (`deleted_by_class`: vowels, consonants, digits, whitespace, punctuation, other; kinds absent
from the input are left out), and for seq2seq tasks exact-match accuracy of greedy (cached) decoding. `losses` is
also the core of the training objective (seq2seq/trainer.py)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from chunklm.config.mrt5 import MrT5Run
from chunklm.data.pipeline import BOS
from chunklm.data.span_corruption import EOS
from chunklm.model.mrt5 import MrT5, bucket_capacity
from chunklm.progress import bar
from chunklm.seq2seq.batches import Data
from chunklm.seq2seq.byte_classes import CLASS_NAMES, class_counts


def losses(model: MrT5, batch: dict, mode: str = "soft", capacity: int | None = None, gate_on=1.0, front=None) -> dict:
  logits, enc = model(batch["ids"], batch["valid"], batch["dec_in"], batch["dec_valid"], mode, capacity, gate_on, front)
  dv = batch["dec_valid"].astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  v = batch["valid"].astype(jnp.float32)
  g = enc.g_BxL if enc.g_reg_BxL is None else enc.g_reg_BxL  # the regulariser trains the gate, not the encoder
  n = jnp.maximum(v.sum(), 1)
  g_mean = jnp.sum(g * v) / n
  g_std = jnp.sqrt(jnp.maximum(jnp.sum(jax.lax.stop_gradient(g - g_mean) ** 2 * v) / n, 0.0))
  return {
    "ce_sum": jnp.sum(ce * dv),
    "targets": dv.sum(),
    "g_mean": g_mean,
    "g_std": g_std,
    "kept": jnp.sum(enc.keep_BxL * v),
    "positions": v.sum(),
  }


def hard_front(graphdef, params, batch: dict, buckets) -> tuple[int, np.ndarray, tuple[jax.Array, jax.Array]]:
  """(the bucket that holds every row's kept positions, keep_BxL on the host, the front's (h, G) on the device for
  `MrT5.encode(front=...)`): the encoder's part before hard deletion, run once per batch."""
  x, g, keep_BxL = front(graphdef, params, jnp.asarray(batch["ids"]), jnp.asarray(batch["valid"]))
  keep_BxL = np.asarray(keep_BxL)
  return bucket_capacity(int(keep_BxL.sum(axis=1).max()), batch["ids"].shape[1], buckets), keep_BxL, (x, g)


def _front(graphdef, params, ids, valid):
  """(states after the gate's blocks, G, kept positions): the part of the encoder before hard deletion."""
  m = nnx.merge(graphdef, params)
  x, g = m.encode_front(ids, valid)
  return x, g, (g > m.cfg.gate_scale / 2) & valid


front = jax.jit(_front, static_argnums=0)


def _eval_losses(graphdef, params, batch, mode, capacity, front_states):
  return losses(nnx.merge(graphdef, params), batch, mode, capacity, front=front_states)


_eval_jit = jax.jit(_eval_losses, static_argnums=(0, 3, 4))


def greedy_decode(graphdef, params, batch: dict, mode: str, capacity: int | None, front_states=None) -> list[bytes]:
  """Greedy continuations from BOS, cut at EOS, up to the decoder length (cached decoding: the encoder runs once,
  each decoder step reads its key/value caches); `front_states` as for `MrT5.encode`."""
  out = np.asarray(
    _greedy_jit(
      graphdef,
      params,
      jnp.asarray(batch["ids"]),
      jnp.asarray(batch["valid"]),
      batch["dec_in"].shape[1],
      mode,
      capacity,
      front_states,
    )
  )
  texts = []
  for row in out.tolist():
    texts.append(bytes(row[: row.index(EOS)] if EOS in row else row))
  return texts


def _greedy(graphdef, params, ids, valid, length, mode, capacity, front_states):
  m = nnx.merge(graphdef, params)
  enc = m.encode(ids, valid, mode, capacity, front=front_states)

  def body(carry, t):
    token, caches = carry
    logits, caches = m.decode_step(enc, token, t, caches)
    nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return (nxt, caches), nxt

  start = jnp.full((ids.shape[0],), BOS, jnp.int32)
  _, tokens_TxB = jax.lax.scan(body, (start, m.init_cache(enc, length)), jnp.arange(length))
  return tokens_TxB.T


_greedy_jit = jax.jit(_greedy, static_argnums=(0, 4, 5, 6))


def evaluate_mrt5(cfg: MrT5Run, graphdef, params, data: Data, batch_size: int = 16, progress: bool = False) -> dict:
  sums = {"ce_sum": 0.0, "targets": 0.0, "kept": 0.0, "positions": 0.0, "slots": 0.0, "soft_ce_sum": 0.0, "inputs": 0.0}
  correct = total = 0
  by_class = np.zeros((len(CLASS_NAMES), 2), np.int64)
  for batch in bar(data.eval_batches(batch_size), enabled=progress, desc="eval", unit="batch"):
    cap, keep_BxL, front_states = hard_front(graphdef, params, batch, cfg.mrt5.buckets)
    by_class += class_counts(batch["ids"], batch["valid"], keep_BxL)
    jb = jax.tree.map(jnp.asarray, batch)
    hard = jax.device_get(_eval_jit(graphdef, params, jb, "hard", cap, front_states))
    soft = jax.device_get(_eval_jit(graphdef, params, jb, "soft", None, front_states))
    for key in ("ce_sum", "targets", "kept", "positions"):
      sums[key] += float(hard[key])
    sums["soft_ce_sum"] += float(soft["ce_sum"])
    sums["slots"] += cap * batch["ids"].shape[0]
    sums["inputs"] += batch["ids"].size
    if cfg.seq2seq.objective == "seq2seq":
      got = greedy_decode(graphdef, params, batch, "hard", cap, front_states)
      for r, text in enumerate(got):
        want = bytes(batch["targets"][r][batch["dec_valid"][r]].tolist())[:-1]
        correct += text == want
        total += 1
  n = max(sums["targets"], 1.0)
  deleted_total = max(int(by_class[:, 1].sum()), 1)
  out = {
    "bits_per_target_byte": sums["ce_sum"] / n / math.log(2),
    "bits_per_target_byte_soft": sums["soft_ce_sum"] / n / math.log(2),
    "deletion_rate": 1 - sums["kept"] / max(sums["positions"], 1.0),
    "encoder_slots_per_input": sums["slots"] / max(sums["inputs"], 1.0),
    "deleted_by_class": {
      name: {"positions": count, "deletion_rate": deleted / count, "share_of_deleted": deleted / deleted_total}
      for name, (count, deleted) in zip(CLASS_NAMES, by_class.tolist())
      if count
    },
  }
  if total:
    out["exact_match"] = correct / total
  return out
