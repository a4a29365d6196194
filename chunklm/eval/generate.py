"""Sampling from a trained model (temperature, nucleus/top-p, seed), bytes in and bytes out for every model kind.

This path recomputes the whole window for every new position, which works for every model kind; cached generation
is the job of `model/cache.py`. When the window is full, the oldest half of the context is dropped. A token model
encodes the prompt with its tokenizer and decodes what it samples.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from chunklm.data.pipeline import BOS
from chunklm.train.step import forward


def sample_logits(logits_V: jax.Array, key: jax.Array, temperature: float, top_p: float) -> jax.Array:
  """One id from logits: greedy when temperature == 0, else softmax(logits / T) restricted to the top-p nucleus."""
  if temperature == 0:
    return jnp.argmax(logits_V)
  probs = jax.nn.softmax(logits_V / temperature)
  order = jnp.argsort(-probs)
  sorted_p = probs[order]
  keep_sorted = jnp.cumsum(sorted_p) - sorted_p < top_p  # always keeps the most likely id
  keep = jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)
  logits = jnp.where(keep, jnp.log(probs + 1e-30), -jnp.inf)
  return jax.random.categorical(key, logits)


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _next_byte(graphdef, params, ids_1xL, length, key, temperature, top_p):
  seq_len = ids_1xL.shape[1]
  valid_1xL = jnp.arange(seq_len)[None] < length
  batch = {"ids": ids_1xL, "segment_ids": valid_1xL.astype(jnp.int32),
           "positions": jnp.arange(seq_len, dtype=jnp.int32)[None]}
  logits_1xLxV, _ = forward(graphdef, params, batch, exact=True)
  return sample_logits(logits_1xLxV[0, length - 1], key, temperature, top_p)


def generate(graphdef, params, prompt: bytes, *, seq_len: int, max_new_bytes: int, temperature: float = 0.8,
             top_p: float = 0.95, seed: int = 0, tokenizer=None) -> bytes:
  """Continues `prompt` (a document start) by up to `max_new_bytes` bytes; stops early if the model emits BOS."""
  bos = BOS if tokenizer is None else tokenizer.bos_id
  context = [bos] + (list(prompt) if tokenizer is None else tokenizer.encode(prompt).tolist())
  out: list[int] = []
  n_bytes = 0
  key = jax.random.key(seed)
  while n_bytes < max_new_bytes:
    if len(context) >= seq_len:
      context = context[-(seq_len // 2):]
    ids = np.zeros((1, seq_len), np.int32)
    ids[0, : len(context)] = context
    key, sub = jax.random.split(key)
    nxt = int(_next_byte(graphdef, params, ids, len(context), sub, float(temperature), float(top_p)))
    if nxt == bos:
      break
    out.append(nxt)
    context.append(nxt)
    n_bytes += 1 if tokenizer is None else int(tokenizer.piece_bytes[nxt]) or 1
  text = bytes(out) if tokenizer is None else tokenizer.decode(out)
  return text[:max_new_bytes]
