"""Character-level perturbations of evaluation text (robustness suites), deterministic given a seed.

Each perturbation maps text -> text at a strength in [0, 1] (the probability of touching a character, where that
applies) with a `random.Random`. Text is handled as characters, not bytes; bytes that are not UTF-8 pass through
unchanged (decoded with surrogateescape). The set follows the noise used by ByT5, BLT and H-Net evaluations:
case flips, upper-casing, deletion, insertion, neighbour swaps, keyboard typos, whitespace removal, AntSpeak,
repeated characters, and Unicode homoglyphs/diacritics.
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from collections.abc import Callable

from chunklm.data.corpus import Documents, build

_ROWS = ["1234567890-=", "qwertyuiop[]", "asdfghjkl;'", "zxcvbnm,./"]
_NEIGHBOURS: dict[str, str] = {}
for r, row in enumerate(_ROWS):
  for c, ch in enumerate(row):
    near = [row[c + d] for d in (-1, 1) if 0 <= c + d < len(row)]
    near += [_ROWS[r + d][c] for d in (-1, 1) if 0 <= r + d < len(_ROWS) and c < len(_ROWS[r + d])]
    _NEIGHBOURS[ch] = "".join(near)
# Latin letters and Cyrillic/Greek look-alikes that render (nearly) the same.
_HOMOGLYPHS = {
  "a": "а",
  "c": "с",
  "e": "е",
  "i": "і",
  "o": "о",
  "p": "р",
  "x": "х",
  "y": "у",
  "A": "А",
  "B": "В",
  "C": "С",
  "E": "Е",
  "H": "Н",
  "K": "К",
  "M": "М",
  "O": "О",
  "P": "Р",
  "T": "Т",
  "X": "Х",
  "s": "ѕ",
}
_DIACRITICS = "\u0301\u0300\u0308\u0303\u0302"  # acute, grave, diaeresis, tilde, circumflex (combining)


def _each(text: str, p: float, rng: random.Random, fn: Callable[[str], str]) -> str:
  return "".join(fn(ch) if rng.random() < p else ch for ch in text)


def random_case(text, p, rng):
  return _each(text, p, rng, lambda ch: ch.swapcase())


def uppercase(text, p, rng):
  return text.upper()


def delete(text, p, rng):
  return _each(text, p, rng, lambda ch: "")


def insert(text, p, rng):
  letters = "abcdefghijklmnopqrstuvwxyz"
  return _each(text, p, rng, lambda ch: ch + rng.choice(letters))


def swap(text, p, rng):
  chars, i = list(text), 0
  while i < len(chars) - 1:
    if rng.random() < p:
      chars[i], chars[i + 1] = chars[i + 1], chars[i]
      i += 2
    else:
      i += 1
  return "".join(chars)


def keyboard(text, p, rng):
  def typo(ch):
    near = _NEIGHBOURS.get(ch.lower())
    if not near:
      return ch
    out = rng.choice(near)
    return out.upper() if ch.isupper() else out

  return _each(text, p, rng, typo)


def no_whitespace(text, p, rng):
  return _each(text, p, rng, lambda ch: "" if ch in " \t" else ch)


def antspeak(text, p, rng):
  """'the cat' -> 'T H E   C A T' (BLT's AntSpeak: upper-case, a space after every character)."""
  return " ".join(text.upper())


def repeat(text, p, rng):
  return _each(text, p, rng, lambda ch: ch * rng.randint(2, 4))


def homoglyph(text, p, rng):
  def change(ch):
    if ch in _HOMOGLYPHS and rng.random() < 0.5:
      return _HOMOGLYPHS[ch]
    return unicodedata.normalize("NFC", ch + rng.choice(_DIACRITICS)) if ch.isalpha() else ch

  return _each(text, p, rng, change)


PERTURBATIONS: dict[str, Callable[[str, float, random.Random], str]] = {
  "random_case": random_case,
  "uppercase": uppercase,
  "delete": delete,
  "insert": insert,
  "swap": swap,
  "keyboard": keyboard,
  "no_whitespace": no_whitespace,
  "antspeak": antspeak,
  "repeat": repeat,
  "homoglyph": homoglyph,
}


def perturb_text(data: bytes, name: str, strength: float, seed: int) -> bytes:
  """`name` applied to `data` (bytes in, bytes out); the same (data, name, strength, seed) gives the same bytes."""
  if name not in PERTURBATIONS:
    raise ValueError(f"unknown perturbation {name!r}; available: {', '.join(PERTURBATIONS)}")
  digest = hashlib.blake2b(data + f"|{name}|{strength}|{seed}".encode(), digest_size=8).digest()
  rng = random.Random(int.from_bytes(digest, "little"))
  text = data.decode("utf-8", errors="surrogateescape")
  return PERTURBATIONS[name](text, strength, rng).encode("utf-8", errors="surrogateescape")


def perturb_documents(docs: Documents, name: str, strength: float, seed: int) -> Documents:
  """Every document perturbed independently (names kept), as a new in-memory corpus."""
  return build((n, perturb_text(docs.doc(i), name, strength, seed)) for i, n in enumerate(docs.names))
