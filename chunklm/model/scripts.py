"""The Unicode script class of every byte, computed in the graph from UTF-8 (for per-script boundary targets).

Each character's code point is decoded from its lead byte and continuation bytes; a continuation byte takes the
class of the character it belongs to. Classes (config.SCRIPTS) by code-point ranges: latin (ASCII, U+0080-024F,
U+1E00-1EFF), greek (U+0370-03FF, U+1F00-1FFF), cyrillic (U+0400-052F), arabic (U+0600-06FF, U+0750-077F),
devanagari (U+0900-097F), hiragana (U+3040-309F), katakana (U+30A0-30FF, U+31F0-31FF), han (U+3400-4DBF,
U+4E00-9FFF, U+F900-FAFF, U+20000-2FFFF), hangul (U+1100-11FF, U+3130-318F, U+AC00-D7AF); everything else default.
Decoding reads up to 3 bytes after a lead byte: this is for training losses only, never for a boundary decision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from chunklm.config import SCRIPTS

RANGES = {
  "latin": ((0x0000, 0x024F), (0x1E00, 0x1EFF)),
  "greek": ((0x0370, 0x03FF), (0x1F00, 0x1FFF)),
  "cyrillic": ((0x0400, 0x052F),),
  "arabic": ((0x0600, 0x06FF), (0x0750, 0x077F)),
  "devanagari": ((0x0900, 0x097F),),
  "hiragana": ((0x3040, 0x309F),),
  "katakana": ((0x30A0, 0x30FF), (0x31F0, 0x31FF)),
  "han": ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FFFF)),
  "hangul": ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF)),
}


def code_points(ids_BxL: jax.Array) -> jax.Array:
  """int32 code point of the character each byte belongs to (-1 for malformed bytes)."""
  b = ids_BxL.astype(jnp.int32)

  def ahead(k):
    return jnp.pad(b[:, k:], ((0, 0), (0, k)))

  c1, c2, c3 = (ahead(k) & 0x3F for k in (1, 2, 3))
  lead_cp = jnp.select(
    [b < 0x80, (b >= 0xC0) & (b < 0xE0), (b >= 0xE0) & (b < 0xF0), b >= 0xF0],
    [b, ((b & 0x1F) << 6) | c1, ((b & 0x0F) << 12) | (c1 << 6) | c2, ((b & 0x07) << 18) | (c1 << 12) | (c2 << 6) | c3],
    -1,
  )
  is_lead = (b < 0x80) | (b >= 0xC0)
  t = jnp.broadcast_to(jnp.arange(b.shape[1]), b.shape)
  lead_pos = jax.lax.cummax(jnp.where(is_lead, t, -1), axis=1)
  cp = jnp.take_along_axis(lead_cp, jnp.maximum(lead_pos, 0), axis=1)
  return jnp.where((lead_pos >= 0) & (t - lead_pos <= 3), cp, -1)


def script_classes(ids_BxL: jax.Array) -> jax.Array:
  """int32 index into config.SCRIPTS for every byte."""
  cp = code_points(ids_BxL)
  out = jnp.zeros(cp.shape, jnp.int32)
  for name, ranges in RANGES.items():
    hit = jnp.zeros(cp.shape, bool)
    for lo, hi in ranges:
      hit |= (cp >= lo) & (cp <= hi)
    out = jnp.where(hit, SCRIPTS.index(name), out)
  return out
