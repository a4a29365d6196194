"""Cloze items from a text (a tiny-scale stand-in for HellaSwag) and noisy copies of any multiple-choice items.

Cloze: an item sits at a space between two words of the text, at byte offset p. Its context is the ~C bytes before
p (C = `context_bytes`, default 200), cut to start at a word; its true continuation is the ~K bytes from p on
(K = `continuation_bytes`, default 40): the space and the words that follow, cut at the end of a word, at least
K/2 bytes. The three distractors are spans cut the same way at other random spaces of the same text, each within
`length_tolerance(len(true))` bytes of the true continuation (so unnormalised likelihoods compare), none overlapping
the item's context, its true continuation or each other, all four texts distinct. No two items share continuation
bytes. The gold position is balanced over the four, in a random order. Work is on bytes (cuts fall on ASCII spaces,
so UTF-8 characters stay whole); a record holds text (invalid UTF-8 shows as U+FFFD).

Noisy: the same records with the query (and with `choices=True` each choice, after its leading space) passed through
`chunklm.eval.perturb.perturb_text` at one strength, so acc(noisy) - acc(clean) is the drop on the same items.
Strength 0 is the clean text for every perturbation; `uppercase` and `antspeak` ignore the strength otherwise (the
whole text, at any strength above 0).

A cloze record: {"id", "offset" (p), "query" (the context), "choices", "gold", "answer" (choices[gold]),
"offsets" (byte offset of each choice in the text)}; noisy records add "perturbation" and "strength".
"""

from __future__ import annotations

import random
import re
from typing import Any

from chunklm.eval.perturb import perturb_text
from chunklm.eval.task_probes import balanced

N_CHOICES = 4
MIN_CONTEXT_BYTES, MIN_CONTINUATION_BYTES = 16, 8
DISTRACTOR_TRIES = 200
_WORD_GAP = re.compile(rb"(?<=\S) (?=\S)")  # a single space between two words: where a continuation may start
_SPACE = b" \t\n\r\f\v"


def length_tolerance(n: int) -> int:
  """How many bytes a distractor may differ in length from a true continuation of `n` bytes."""
  return max(3, n // 10)


def span(data: bytes, p: int, target: int) -> int | None:
  """The end of the continuation from `p`: the last word end at or before p + target (None: no word ends there or
  the span is under half the target)."""
  for e in range(min(p + target, len(data)), p + 1, -1):
    if (e == len(data) or data[e] in _SPACE) and data[e - 1] not in _SPACE:
      return e if e - p >= target // 2 else None
  return None


def context_start(data: bytes, p: int, context_bytes: int) -> int:
  """Where the context of a continuation at `p` starts: `context_bytes` back, moved forward to a word start."""
  s = max(0, p - context_bytes)
  if s == 0 or data[s - 1] in _SPACE:
    return s
  while s < p and data[s] not in _SPACE:
    s += 1
  while s < p and data[s] in _SPACE:
    s += 1
  return s


def _distractors(
  data: bytes, gaps: list[int], taken: list[tuple[int, int]], true: bytes, rng: random.Random
) -> list[tuple[int, int]] | None:
  """Three distractor spans (start, end) (see the module docstring), or None when none are found in time."""
  picks: list[tuple[int, int]] = []
  texts = {true}
  tol = length_tolerance(len(true))
  for _ in range(DISTRACTOR_TRIES):
    q = rng.choice(gaps)
    e = span(data, q, len(true))
    if e is None or abs(e - q - len(true)) > tol or data[q:e] in texts:
      continue
    if any(q < b and a < e for a, b in taken):
      continue
    picks.append((q, e))
    texts.add(data[q:e])
    taken.append((q, e))
    if len(picks) == N_CHOICES - 1:
      return picks
  return None


def cloze_records(
  data: bytes, n: int, rng: random.Random, context_bytes: int = 200, continuation_bytes: int = 40
) -> list[dict[str, Any]]:
  """Up to `n` cloze items from `data` (fewer when the text runs out), in the order of their offsets."""
  gaps = [m.start() for m in _WORD_GAP.finditer(data)]
  starts = [p for p in gaps if p >= context_bytes]
  if not starts:
    return []
  used = bytearray(len(data))
  found: list[tuple[int, int, int, list[tuple[int, int]]]] = []  # (p, context start, end, distractor spans)
  for p in rng.sample(starts, min(len(starts), 8 * n + 64)):
    e = span(data, p, continuation_bytes)
    if e is None or any(used[p:e]):
      continue
    s = context_start(data, p, context_bytes)
    picks = _distractors(data, gaps, [(s, e)], data[p:e], rng)
    if picks is None:
      continue
    used[p:e] = b"\x01" * (e - p)
    found.append((p, s, e, picks))
    if len(found) == n:
      break
  golds = balanced(len(found), N_CHOICES, rng)
  records = []
  for i, ((p, s, e, picks), gold) in enumerate(zip(sorted(found), golds)):
    spans = list(picks)
    spans.insert(gold, (p, e))
    choices = [_text(data[a:b]) for a, b in spans]
    record = dict(id=i, offset=p, query=_text(data[s:p]), choices=choices, gold=gold, answer=choices[gold])
    records.append(record | {"offsets": [a for a, _ in spans]})
  return records


def _text(b: bytes) -> str:
  return b.decode("utf-8", errors="replace")


def _noisy(text: str, name: str, strength: float, seed: int) -> str:
  return _text(perturb_text(text.encode("utf-8"), name, strength, seed))


def noisy_records(
  records: list[dict[str, Any]], name: str, strength: float, seed: int, *, choices: bool = False
) -> list[dict[str, Any]]:
  """`records` with the query (and, with `choices`, every choice) perturbed by `name` at `strength`; the same
  ids, golds and order. Strength 0 leaves the text as it is."""
  out = []
  for r in records:
    new = dict(r, perturbation=name, strength=strength)
    if strength > 0:
      new["query"] = _noisy(r["query"], name, strength, seed)
      if choices:
        new["choices"] = [c[:1] + _noisy(c[1:], name, strength, seed) for c in r["choices"]]
        new["answer"] = new["choices"][r["gold"]]
    out.append(new)
  return out
