"""Rule-based boundary predictors with nothing to learn: fixed stride (MEGABYTE-style blocks) and word starts
(HAT / SpaceByte / word-pooled models).

Both give p = b exactly (0 or 1), no auxiliary loss, and no H-Net ratio loss (nothing learns the boundaries). With
p = 1 at every boundary the dechunk EMA is the identity up to its clamp P = 1 - 1e-4 (a 1e-4 share of the previous
chunk's vector, which is causal and computed the same way in generation), and the confidence STE is exactly 1.

stride: a chunk starts every S = target_ratio bytes, counted from each document start.
whitespace (`model.whitespace.boundary`), decided from bytes <= t only (causal):
  space  a chunk starts at the first byte after a whitespace character (Unicode White_Space, read from its UTF-8
         bytes: ASCII 09-0D and 20, U+0085, U+00A0, U+1680, U+2000-200A, U+2028/9, U+202F, U+205F, U+3000) that is
         not itself ASCII whitespace or a UTF-8 continuation byte. A multi-byte whitespace character directly after
         another whitespace character therefore starts a chunk of its own: telling it from a letter at its lead
         byte would need the bytes after it.
  punct  as space, plus a chunk at every ASCII punctuation byte and at the byte after one (unless that byte is
         whitespace, punctuation or a continuation byte).
  regex:<class>  a chunk at every byte of a one-byte class (`[\\s.,;:]`, `\\W`, ...); with a trailing '+' a run of
         class bytes starts one chunk. The class becomes a 256-entry table, so boundaries stay in the graph.
Word routers read bytes, so they work at stage 0 only (config check). On data without whitespace (DNA) the trainer
refuses them (`check_router_data`).
"""

from __future__ import annotations

import re
import string

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chunklm.errors import DataError
from chunklm.model.routing import Router, Routing, document_starts, finalize

ASCII_WS = (9, 10, 11, 12, 13, 32)
ASCII_PUNCT = tuple(string.punctuation.encode())


def position_in_document(segment_ids_BxL: jax.Array) -> jax.Array:
  """0 at each document start, counting up to its end."""
  t_BxL = jnp.broadcast_to(jnp.arange(segment_ids_BxL.shape[1]), segment_ids_BxL.shape)
  start_BxL = jax.lax.cummax(jnp.where(document_starts(segment_ids_BxL), t_BxL, 0), axis=1)
  return t_BxL - start_BxL


class StrideRouter(Router):
  ratio_loss = False

  def __init__(self, cfg, level: int, dim: int, *, rngs: nnx.Rngs):
    del dim, rngs
    self.stride = int(cfg.target_ratio[level])

  def __call__(self, h_BxLxD, ids_BxL, segment_ids_BxL, valid_BxL, *, train=False, rng=None) -> Routing:
    del h_BxLxD, ids_BxL, train, rng
    b_BxL = position_in_document(segment_ids_BxL) % self.stride == 0
    return finalize((b_BxL & valid_BxL).astype(jnp.float32), b_BxL, segment_ids_BxL, valid_BxL)

  def init_step_state(self, batch: int):
    return {"count": jnp.zeros(batch, jnp.int32)}

  def step(self, h_BxD, h_prev_BxD, has_prev_B, ids_B, state):
    """`count` = position in the document; it advances only on the rows that receive a position (HNet.step
    keeps the old state of the others)."""
    del h_BxD, h_prev_BxD, ids_B
    count_B = jnp.where(has_prev_B, state["count"], 0)
    b_B = count_B % self.stride == 0
    return b_B.astype(jnp.float32), b_B, {"count": count_B + 1}


def _in(x, values) -> jax.Array:
  return jnp.isin(x, jnp.asarray(values, x.dtype))


def whitespace_end(b3, b2, b1) -> jax.Array:
  """True where byte b1 ends a Unicode whitespace character (b3, b2 are the two bytes before it, 0 if none)."""
  one = _in(b1, ASCII_WS)
  two = (b2 == 0xC2) & _in(b1, (0x85, 0xA0))
  e2_80 = (b3 == 0xE2) & (b2 == 0x80) & (((b1 >= 0x80) & (b1 <= 0x8A)) | _in(b1, (0xA8, 0xA9, 0xAF)))
  three = (
    ((b3 == 0xE1) & (b2 == 0x9A) & (b1 == 0x80))
    | e2_80
    | ((b3 == 0xE2) & (b2 == 0x81) & (b1 == 0x9F))
    | ((b3 == 0xE3) & (b2 == 0x80) & (b1 == 0x80))
  )
  return one | two | three


def byte_class_table(pattern: str) -> np.ndarray:
  """bool[256]: which single bytes the regex matches."""
  rx = re.compile(pattern.encode())
  return np.array([rx.fullmatch(bytes([v])) is not None for v in range(256)])


def word_starts(cur, p1, p2, p3, mode: str) -> jax.Array:
  """Word-start decision at a byte `cur` given the 3 bytes before it in the document (0 where there is none).
  Works elementwise, so the full forward and the generation step share it."""
  if mode.startswith("regex:"):
    pattern = mode[len("regex:") :]
    run = pattern.endswith("+") and not pattern.endswith("\\+")
    table = jnp.asarray(byte_class_table(pattern[:-1] if run else pattern))
    hit = table[cur]
    return hit & ~table[p1] if run else hit
  cont = (cur >= 0x80) & (cur < 0xC0)
  ws = _in(cur, ASCII_WS)
  out = whitespace_end(p3, p2, p1) & ~ws & ~cont
  if mode == "punct":
    punct = _in(cur, ASCII_PUNCT)
    out = out | punct | (_in(p1, ASCII_PUNCT) & ~ws & ~punct & ~cont)
  return out


def document_word_starts(ids_BxL: jax.Array, segment_ids_BxL: jax.Array, mode: str) -> jax.Array:
  """word_starts at every byte, reading the 3 bytes before it in its own document."""
  ids = ids_BxL.astype(jnp.int32)

  def back(k):  # the byte k positions earlier in the same document, else 0
    shifted = jnp.pad(ids[:, :-k], ((0, 0), (k, 0)))
    same = jnp.pad(segment_ids_BxL[:, :-k], ((0, 0), (k, 0)), constant_values=-1) == segment_ids_BxL
    return jnp.where(same, shifted, 0)

  return word_starts(ids, back(1), back(2), back(3), mode)


class WhitespaceRouter(Router):
  ratio_loss = False

  def __init__(self, cfg, level: int, dim: int, *, rngs: nnx.Rngs):
    del level, dim, rngs
    self.mode = cfg.whitespace.boundary

  def __call__(self, h_BxLxD, ids_BxL, segment_ids_BxL, valid_BxL, *, train=False, rng=None) -> Routing:
    del h_BxLxD, train, rng
    if ids_BxL is None:
      raise ValueError("the whitespace router needs the bytes (stage 0 only)")
    b_BxL = document_word_starts(ids_BxL, segment_ids_BxL, self.mode)
    return finalize((b_BxL & valid_BxL).astype(jnp.float32), b_BxL, segment_ids_BxL, valid_BxL)

  def init_step_state(self, batch: int):
    return {"prev": jnp.zeros((batch, 3), jnp.int32)}  # bytes t-3, t-2, t-1 of the document

  def step(self, h_BxD, h_prev_BxD, has_prev_B, ids_B, state):
    del h_BxD, h_prev_BxD
    prev_Bx3 = jnp.where(has_prev_B[:, None], state["prev"], 0)
    cur = ids_B.astype(jnp.int32)
    b_B = word_starts(cur, prev_Bx3[:, 2], prev_Bx3[:, 1], prev_Bx3[:, 0], self.mode) | ~has_prev_B
    return b_B.astype(jnp.float32), b_B, {"prev": jnp.concatenate([prev_Bx3[:, 1:], cur[:, None]], axis=1)}


DNA_ALPHABET = frozenset(b"ACGTNacgtn\r\n")


def check_router_data(cfg, docs, sample_bytes: int = 65536) -> None:
  """Refuses a word router on data it cannot chunk: a nucleotide alphabet, or no word start besides document starts
  in the first `sample_bytes` bytes of the training documents. Raises DataError."""

  if "whitespace" not in cfg.router[: cfg.num_stages]:
    return
  pieces, total = [], 0
  for i in range(len(docs)):
    if total >= sample_bytes:
      break
    doc = docs.doc(i)[: sample_bytes - total]
    pieces.append(doc)
    total += len(doc)
  seen = set().union(*(set(p) for p in pieces)) if pieces else set()
  hint = (
    "whitespace routing cannot chunk this data; use model.router=[stride] (fixed blocks) or [cosine] / "
    "[gumbel] (learned boundaries)"
  )
  if seen and seen <= DNA_ALPHABET:
    raise DataError(
      f"the training data looks like nucleotides (alphabet {''.join(sorted(map(chr, seen))).strip()}),"
      f" which has no word boundaries: {hint}"
    )
  found = 0
  for p in pieces:
    ids_1xL = jnp.asarray(np.frombuffer(p, np.uint8).astype(np.int32))[None]
    found += int(document_word_starts(ids_1xL, jnp.ones_like(ids_1xL), cfg.whitespace.boundary)[0, 1:].sum())
  if total and not found:
    raise DataError(
      f"model.whitespace.boundary={cfg.whitespace.boundary!r} finds no word start in the first "
      f"{total:,} training bytes besides document starts: {hint}"
    )
