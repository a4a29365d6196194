"""Sampling with caches: batched prompts of different lengths, temperature, top-k, top-p, stop strings, end of
sequence, max bytes.

One jitted loop runs the model one position at a time (model/cache.py: KV caches, Mamba2 states; model/hnet.py:
an H-Net's routing state per stage, so its main network runs only when a new chunk starts). Every row starts with
BOS, reads its prompt, then feeds back what it samples; the loop ends when every row has sampled a stop id (BOS,
the end-of-sequence id, a one-byte stop) or reached its length. Bytes in, bytes out for every model kind: a token
model encodes prompts with its tokenizer and decodes what it samples.

The work is bounded: a prompt may be as long as the longest document the model was trained to read (data.seq_len - 1
bytes, or tokens), a continuation at most MAX_NEW_BYTES, and the state of the whole batch must fit in memory (one
line otherwise). Lengths are padded to a few fixed sizes (`padded_length`), so prompts of other lengths reuse the
compiled loop.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chunklm.data.pipeline import BOS
from chunklm.errors import UserError
from chunklm.eval.bpb import check_fits
from chunklm.model import cache
from chunklm.run.trained import open_run


class ArgumentTypeError(UserError, TypeError):
  """A setting of the wrong type: one line (a UserError), and a TypeError for `except TypeError`."""


OFFICIAL_EOS = 0xFF  # the official H-Net's byte tokenizer: BOS 0xFE (as chunklm's), EOS 0xFF, where its loop stops
MAX_NEW_BYTES = 1 << 20  # per prompt: the loop runs one position at a time, each attending to all before it


def sample_logits(
  logits_V: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array, top_k: int = 0
) -> jax.Array:
  """One id: greedy when temperature == 0, else softmax(logits / T) restricted to the top-k ids and the top-p
  nucleus: the fewest most likely ids whose mass reaches top_p (the most likely id is always kept), found by bisecting
  a probability threshold. Greedy decoding and top_p = 1 skip that work (lax.cond: temperature and top_p are the same
  for every row, so the branch is real, not a select, under vmap). A top_k of the vocabulary's size or more keeps
  every id, as 0 does."""
  logits = logits_V.astype(jnp.float32)
  if 0 < top_k < logits.shape[-1]:
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
def sample_batch(
  graphdef, params, tokens_BxT, lengths_B, key, top_k, temperature, top_p, n_steps=None, stop_ids_S=None
):
  """Fills tokens_BxT past each row's prompt (position 0 = BOS, then lengths_B prompt ids): `n_steps` positions
  (default: all T - 1), fewer when every row has sampled one of `stop_ids_S` (what follows it is left as it was)."""
  model = nnx.merge(graphdef, params)
  b, t = tokens_BxT.shape
  state = cache.lm_init(model, b, t)
  last = t - 1 if n_steps is None else jnp.minimum(n_steps, t - 1)
  stops_S = jnp.zeros((0,), tokens_BxT.dtype) if stop_ids_S is None else stop_ids_S

  def body(carry):
    i, tokens, state, key, done_B = carry
    logits_BxV, state, _ = cache.lm_step(model, tokens[:, i], state)
    key, sub = jax.random.split(key)
    nxt = jax.vmap(sample_logits, in_axes=(0, 0, None, None, None))(
      logits_BxV, jax.random.split(sub, b), temperature, top_p, top_k
    ).astype(tokens.dtype)
    in_prompt = i + 1 <= lengths_B
    tokens = tokens.at[:, i + 1].set(jnp.where(in_prompt, tokens[:, i + 1], nxt))
    done_B = done_B | (~in_prompt & jnp.isin(nxt, stops_S))
    return i + 1, tokens, state, key, done_B

  def more(carry):
    return (carry[0] < last) & ~jnp.all(carry[4])

  init = (jnp.int32(0), tokens_BxT, state, key, jnp.zeros(b, bool))
  return jax.lax.while_loop(more, body, init)[1]


def padded_length(n: int) -> int:
  """The loop's length for n positions: the next of 64, 96, 128, 192, 256, ... (2^k and 3 * 2^(k-1)), so other
  prompt lengths reuse the compiled loop; at most a third of it is padding, which the loop never runs."""
  size = 64
  while size < n:
    size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
  return size


def eos_id(cfg, tokenizer=None) -> int | None:
  """The id that ends a sequence, where the model has one: the tokenizer's EOS (a BPE run whose sentencepiece model
  defines one), 0xFF for a converted official H-Net (model.compat: official, whose code stops there); else None."""
  if tokenizer is not None:
    eos = int(tokenizer.sp.eos_id()) if hasattr(tokenizer, "sp") else -1
    return eos if eos >= 0 else None
  return OFFICIAL_EOS if cfg.model.compat == "official" else None


def check_sampling(
  *, max_bytes, temperature, top_k, top_p, seed=0, what: str = "generate", flags: bool = False
) -> None:
  """One line for a sampling setting of the wrong type or out of range (`flags`: named as command-line flags)."""

  def name(n: str) -> str:
    return "--" + n.replace("_", "-") if flags else f"{what}: {n}"

  ints = {"max_bytes": max_bytes, "top_k": top_k, "seed": seed}
  for n, v in ints.items():
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
      raise ArgumentTypeError(f"{name(n)} must be an int, got {type(v).__name__}")
  for n, v in {"temperature": temperature, "top_p": top_p}.items():
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
      raise ArgumentTypeError(f"{name(n)} must be a number, got {type(v).__name__}")
    if not math.isfinite(v):
      raise UserError(f"{name(n)} must be a finite number, got {v!r}")
  if not -(2**63) <= seed < 2**63:
    raise UserError(f"{name('seed')} must fit in 64 bits, got {seed}")
  if not 1 <= max_bytes <= MAX_NEW_BYTES:
    raise UserError(f"{name('max_bytes')} must be between 1 and {MAX_NEW_BYTES:,} (bytes per prompt), got {max_bytes}")
  if temperature < 0:
    raise UserError(f"{name('temperature')} must be >= 0 (0 = greedy), got {temperature}")
  if top_k < 0:
    raise UserError(
      f"{name('top_k')} must be >= 0 (0 = every id; more than the vocabulary keeps every id), got {top_k}"
    )
  if not 0 < top_p <= 1:
    raise UserError(f"{name('top_p')} must be in (0, 1] (1 = no nucleus), got {top_p}")


def stop_list(stop, what: str = "stop") -> list[bytes]:
  """Stop strings: one (str or bytes) or a list of them; a str is encoded as UTF-8. Empty strings are dropped."""
  items = [stop] if isinstance(stop, (str, bytes, bytearray)) else stop
  if not isinstance(items, (list, tuple)):
    raise ArgumentTypeError(f"{what}: expected str, bytes or a list of them, got {type(stop).__name__}")
  out = []
  for s in items:
    if not isinstance(s, (str, bytes, bytearray)):
      raise ArgumentTypeError(f"{what}: expected str, bytes or a list of them, got a {type(s).__name__} in the list")
    if s:
      out.append(s.encode("utf-8") if isinstance(s, str) else bytes(s))
  return out


def generate_many(
  graphdef,
  params,
  prompts: list[bytes],
  *,
  max_new_bytes: int,
  temperature: float = 0.8,
  top_k: int = 0,
  top_p: float = 1.0,
  stop: bytes | list[bytes] | tuple = (),
  seed: int = 0,
  tokenizer=None,
  eos: int | None = None,
  max_prompt: int | None = None,
) -> list[bytes]:
  """Continuations of `prompts` (each a document start), at most `max_new_bytes` bytes each, cut before the first
  occurrence of any string in `stop` (a bytes value is one stop string), before a generated BOS and before the id
  `eos`. `max_prompt`: the most ids a prompt may have (one line above it)."""
  if not prompts or max_new_bytes <= 0:
    return [b"" for _ in prompts]
  stops = stop_list(stop)
  bos = BOS if tokenizer is None else tokenizer.bos_id
  encoded = [list(p) if tokenizer is None else tokenizer.encode(p).tolist() for p in prompts]
  longest = max(len(e) for e in encoded)
  unit = "bytes" if tokenizer is None else "tokens"
  if max_prompt is not None and longest > max_prompt:
    raise UserError(
      f"a prompt has {longest:,} {unit}; this model reads documents of up to {max_prompt:,} {unit} "
      "(data.seq_len - 1, what it was trained on): give a shorter prompt, e.g. the end of this one"
    )
  total = longest + max_new_bytes + 1  # BOS, the prompt, the continuation (a token is at least one byte)
  model = nnx.merge(graphdef, params)
  shape = (len(prompts), padded_length(total))
  _check_state_fits(model, shape)
  tokens = np.zeros(shape, np.int32)
  tokens[:, 0] = bos
  for r, e in enumerate(encoded):
    tokens[r, 1 : len(e) + 1] = e
  lengths = np.array([len(e) for e in encoded], np.int32)
  end_ids = [bos] + ([] if eos is None else [eos])
  ends = end_ids + ([s[0] for s in stops if len(s) == 1] if tokenizer is None else [])  # the loop may stop there
  vocab = model.cfg.vocab_size
  out = np.asarray(
    sample_batch(
      graphdef,
      params,
      tokens,
      lengths,
      jax.random.key(seed),
      int(top_k) if 0 < top_k < vocab else 0,  # k >= the vocabulary keeps every id: no recompile per k
      jnp.float32(temperature),
      jnp.float32(top_p),
      jnp.int32(total - 1),
      jnp.asarray(_padded_ids(ends)),
    )
  )
  return [
    _cut(out[r, n + 1 : n + 1 + max_new_bytes].tolist(), end_ids, stops, max_new_bytes, tokenizer)
    for r, n in enumerate(lengths)
  ]


def _padded_ids(ids: list[int]) -> np.ndarray:
  """The distinct `ids`, padded with -1 (no id) to a multiple of 8, so other stop sets reuse the compiled loop."""
  distinct = sorted(set(ids))
  out = np.full(8 * -(-len(distinct) // 8), -1, np.int32)
  out[: len(distinct)] = distinct
  return out


def _cut(new: list[int], end_ids: list[int], stops: list[bytes], max_new_bytes: int, tokenizer) -> bytes:
  """A row's continuation as bytes: up to its first BOS or EOS id, then before its first stop string."""
  first = min([new.index(i) for i in end_ids if i in new], default=len(new))
  text = bytes(new[:first]) if tokenizer is None else tokenizer.decode(new[:first])
  cut = min([text.index(s) for s in stops if s in text], default=len(text))
  return text[: min(cut, max_new_bytes)]


def _check_state_fits(model, shape: tuple[int, int]) -> None:
  """One line, before allocating, when the generation state of `shape` (rows x positions: KV caches, Mamba2 states,
  routing state) cannot fit in memory."""
  abstract = jax.eval_shape(lambda: cache.lm_init(model, *shape))
  need = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract))
  check_fits(
    2 * need + 8 * math.prod(shape),  # the state and its update in the loop, the ids in and out
    f"generating {shape[0]} row(s) of {shape[1]:,} positions (prompt + --max-bytes)",
    "use fewer prompts at once or a smaller --max-bytes",
  )


def generate(
  graphdef,
  params,
  prompt: bytes,
  *,
  max_new_bytes: int,
  temperature: float = 0.8,
  top_k: int = 0,
  top_p: float = 0.95,
  stop: bytes | list[bytes] | tuple = (),
  seed: int = 0,
  tokenizer=None,
  eos: int | None = None,
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
    eos=eos,
  )[0]


def generate_run(
  run,
  prompts: list[bytes],
  *,
  max_bytes: int = 200,
  temperature: float = 0.8,
  top_k: int = 0,
  top_p: float = 0.95,
  stop=(),
  seed: int = 0,
  stop_at_eos: bool = True,
) -> list[bytes]:
  """Continuations of `prompts` from a trained run (`chunklm generate`, `chunklm.generate`, `Model.generate`): its
  prompts up to data.seq_len - 1 ids, ended at its end-of-sequence id (`eos_id`) unless `stop_at_eos` is False."""
  return generate_many(
    run.graphdef,
    run.params,
    prompts,
    max_new_bytes=max_bytes,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    stop=stop,
    seed=seed,
    tokenizer=run.tokenizer,
    eos=eos_id(run.cfg, run.tokenizer) if stop_at_eos else None,
    max_prompt=run.cfg.data.seq_len - 1,
  )


def _prompts(prompts) -> tuple[list[bytes], bool]:
  """(prompts as bytes, whether one was given rather than a list); a wrong type is one line."""
  single = isinstance(prompts, (str, bytes, bytearray))
  given = [prompts] if single else prompts
  if not isinstance(given, (list, tuple)) or not all(isinstance(p, (str, bytes, bytearray)) for p in given):
    raise ArgumentTypeError(f"generate: expected str, bytes or a list of them, got {type(prompts).__name__}")
  return [p.encode() if isinstance(p, str) else bytes(p) for p in given], single


def checked_generate(run, prompts: str | bytes | list, **settings):
  """`generate_run` for the public entry points (`chunklm generate`, `chunklm.generate`, `Model.generate`): one
  prompt in, one continuation out (bytes), or a list for a list; every argument's type and value checked first,
  each a one-line UserError. `settings`: max_bytes, temperature, top_k, top_p, stop (a string or a list of them),
  seed, stop_at_eos."""
  items, single = _prompts(prompts)
  out = generate_run(run, items, **_checked_settings(**settings))
  return out[0] if single else out


def _checked_settings(
  *,
  max_bytes: int = 200,
  temperature: float = 0.8,
  top_k: int = 0,
  top_p: float = 0.95,
  stop=(),
  seed: int = 0,
  stop_at_eos: bool = True,
) -> dict:
  check_sampling(max_bytes=max_bytes, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
  if not isinstance(stop_at_eos, bool):
    raise ArgumentTypeError(f"generate: stop_at_eos must be True or False, got {stop_at_eos!r}")
  return dict(
    max_bytes=max_bytes,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    stop=stop_list(stop, "generate: stop"),
    seed=seed,
    stop_at_eos=stop_at_eos,
  )


def generate_from_workdir(workdir, prompts: str | bytes | list, *, overrides: tuple[str, ...] = (), **settings):
  """`chunklm.generate`: `checked_generate` on a trained run's newest checkpoint; the prompts and settings are
  checked before the run is read."""
  _prompts(prompts)
  _checked_settings(**settings)
  run = open_run(workdir, tuple(overrides), log=lambda *a, **k: None)
  return checked_generate(run, prompts, **settings)
