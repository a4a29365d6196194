"""Sampling with caches: batched prompts of different lengths, temperature, top-k, top-p, stop bytes, max bytes.

One jitted `lax.scan` runs the model one position at a time (model/cache.py: KV caches, Mamba2 states; model/hnet.py:
an H-Net's routing state per stage, so its main network runs only when a new chunk starts). Every row starts with
BOS, reads its prompt, then feeds back what it samples. Bytes in, bytes out for every model kind: a token model
encodes prompts with its tokenizer and decodes what it samples.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chunklm.data.pipeline import BOS
from chunklm.model import cache
from chunklm.run.trained import open_run


def sample_logits(
  logits_V: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array, top_k: int = 0
) -> jax.Array:
  """One id: greedy when temperature == 0, else softmax(logits / T) restricted to the top-k ids and the top-p
  nucleus: the fewest most likely ids whose mass reaches top_p (the most likely id is always kept), found by bisecting
  a probability threshold. Greedy decoding and top_p = 1 skip that work (lax.cond: temperature and top_p are the same
  for every row, so the branch is real, not a select, under vmap)."""
  logits = logits_V.astype(jnp.float32)
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][-1]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)

  def nucleus(probs):  # the largest t with mass(p >= t) >= top_p, by bisection: no sort (slow on CPU)
    def halve(_, lo_hi):
      lo, hi = lo_hi
      mid = 0.5 * (lo + hi)
      enough = jnp.sum(jnp.where(probs >= mid, probs, 0.0)) >= top_p
      return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 40, halve, (jnp.zeros((), probs.dtype), jnp.max(probs)))
    return (probs >= lo) | (probs == jnp.max(probs))

  def sample():
    probs = jax.nn.softmax(logits / jnp.maximum(temperature, 1e-6))
    keep = jax.lax.cond(top_p < 1.0, nucleus, lambda p: jnp.ones(p.shape, bool), probs)
    return jax.random.categorical(key, jnp.where(keep, jnp.log(probs + 1e-30), -jnp.inf))

  return jax.lax.cond(temperature > 0, sample, lambda: jnp.argmax(logits_V)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 5))
def sample_batch(graphdef, params, tokens_BxT, lengths_B, key, top_k, temperature, top_p):
  """Fills tokens_BxT past each row's prompt (position 0 = BOS, then lengths_B prompt ids)."""
  model = nnx.merge(graphdef, params)
  b, t = tokens_BxT.shape
  state = cache.lm_init(model, b, t)

  def body(carry, i):
    tokens, state, key = carry
    logits_BxV, state, _ = cache.lm_step(model, tokens[:, i], state)
    key, sub = jax.random.split(key)
    nxt = jax.vmap(sample_logits, in_axes=(0, 0, None, None, None))(
      logits_BxV, jax.random.split(sub, b), temperature, top_p, top_k
    )
    in_prompt = i + 1 <= lengths_B
    tokens = tokens.at[:, i + 1].set(jnp.where(in_prompt, tokens[:, i + 1], nxt.astype(tokens.dtype)))
    return (tokens, state, key), None

  (tokens_BxT, _, _), _ = jax.lax.scan(body, (tokens_BxT, state, key), jnp.arange(t - 1))
  return tokens_BxT


def generate_many(
  graphdef,
  params,
  prompts: list[bytes],
  *,
  max_new_bytes: int,
  temperature: float = 0.8,
  top_k: int = 0,
  top_p: float = 1.0,
  stop: bytes = b"",
  seed: int = 0,
  tokenizer=None,
) -> list[bytes]:
  """Continuations of `prompts` (each a document start), at most `max_new_bytes` bytes each, cut before the first
  byte in `stop` and before a generated BOS."""
  if not prompts:
    return []
  bos = BOS if tokenizer is None else tokenizer.bos_id
  encoded = [list(p) if tokenizer is None else tokenizer.encode(p).tolist() for p in prompts]
  longest = max(len(e) for e in encoded)
  tokens = np.zeros((len(prompts), longest + max_new_bytes + 1), np.int32)
  tokens[:, 0] = bos
  for r, e in enumerate(encoded):
    tokens[r, 1 : len(e) + 1] = e
  lengths = np.array([len(e) for e in encoded], np.int32)
  out = np.asarray(
    sample_batch(
      graphdef, params, tokens, lengths, jax.random.key(seed), int(top_k), jnp.float32(temperature), jnp.float32(top_p)
    )
  )
  texts = []
  for r, n in enumerate(lengths):
    new = out[r, n + 1 : n + 1 + max_new_bytes].tolist()
    if bos in new:
      new = new[: new.index(bos)]
    text = bytes(new) if tokenizer is None else tokenizer.decode(new)
    cut = min([text.index(bytes([c])) for c in set(stop) if bytes([c]) in text], default=len(text))
    texts.append(text[: min(cut, max_new_bytes)])
  return texts


def generate(
  graphdef,
  params,
  prompt: bytes,
  *,
  max_new_bytes: int,
  temperature: float = 0.8,
  top_k: int = 0,
  top_p: float = 0.95,
  stop: bytes = b"",
  seed: int = 0,
  tokenizer=None,
) -> bytes:
  """One continuation of `prompt` (see generate_many)."""
  return generate_many(
    graphdef,
    params,
    [prompt],
    max_new_bytes=max_new_bytes,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    stop=stop,
    seed=seed,
    tokenizer=tokenizer,
  )[0]


def generate_from_workdir(
  workdir,
  prompts: str | bytes | list,
  *,
  max_bytes: int = 200,
  temperature: float = 0.8,
  top_k: int = 0,
  top_p: float = 0.95,
  stop: bytes | str = b"",
  seed: int = 0,
  overrides: tuple[str, ...] = (),
):
  """`chunklm.generate`: continuations from a trained run's newest checkpoint; one prompt in, one out (bytes)."""
  run = open_run(workdir, tuple(overrides), log=lambda *a, **k: None)
  single = isinstance(prompts, (str, bytes))
  given: list = [prompts] if single else list(prompts)
  items: list[bytes] = [p.encode() if isinstance(p, str) else p for p in given]
  out = generate_many(
    run.graphdef,
    run.params,
    items,
    max_new_bytes=max_bytes,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    stop=stop.encode() if isinstance(stop, str) else stop,
    seed=seed,
    tokenizer=run.tokenizer,
  )
  return out[0] if single else out
