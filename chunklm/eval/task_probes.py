"""Character probes in the style of CUTE (Edman, Schmid and Fraser 2024): does a model know what its tokens spell?

A probe asks one question about one word, the words drawn from the user's text (`words_from_text`: ASCII alphabetic
words of 3-12 letters seen at least twice, lower-cased, deduplicated). Every item is a line of the form
`<question> <answer>`, the answer after a space, preceded by three solved lines of the same probe on other words
(the demonstrations, fixed for the probe; demonstration words never appear as items):

  spell           Spell out the word "house": h o u s e
  spell_inverse   Write the word spelled "h o u s e": house
  contains_char   Is there a "u" in "house"? Yes                                  (Yes/No, half of each)
  contains_word   Is there the word "tree" in "cat tree blue house sky"? Yes      (Yes/No, half of each)
  orthographic    Which word is spelled more like "house", "mouse" or "river"? mouse  (two listed candidates)
  insert          Add "x" after every "o" in "house": hoxuse
  delete          Delete every "o" from "house": huse
  substitute      Replace every "o" with "a" in "house": hause
  swap            Swap "h" and "s" in "house": souhe                               (letters seen once each)

`contains_word` builds its five-word "sentences" from the word list (CUTE used real sentences). `orthographic` picks,
from 40 random words, the one with the unique smallest Levenshtein distance to the word and one at least two edits
further. CUTE's semantic-similarity probe is left out (it needs a thesaurus), and so are its word-level manipulations.

Each item is scored two ways. As multiple choice ranked by likelihood, so tiny models give a signal: the true answer
and three distractors made by the same operation applied wrongly (insert before instead of after, only the first
occurrence, a neighbouring letter, ...) or, when those run out, the answer with one letter changed, two neighbours
swapped, one dropped or doubled; the gold position is balanced over the four (a random order of a balanced list).
Yes/No and the two orthographic candidates are two-way choices, their gold balanced the same way. As generation,
the answer is the exact text after the question (whitespace at either end ignored).

A record: {"id", "probe", "word", "query" (demonstrations and question, no answer), "choices" (each with its leading
space), "gold" (index into choices), "answer" (choices[gold])}. Pure Python, deterministic given the `random.Random`.
"""

from __future__ import annotations

import random
import string
from collections import Counter
from collections.abc import Callable
from typing import Any

LETTERS = string.ascii_lowercase
MIN_LETTERS, MAX_LETTERS = 3, 12
MIN_COUNT = 2  # a word must appear this often in the text
N_DEMOS = 3
DEMO_POOL = 12  # the first words of the shuffled list: demonstrations only
MIN_WORDS = 24  # fewer eligible words than this: too few for demonstrations, items and distractors
ORTH_CANDIDATES = 40

Made = tuple[str, list[str]] | None  # (question, choices with the answer at the asked gold index), or None
ProbeFn = Callable[[str, int, random.Random, list[str]], Made]
_STRIP = string.punctuation + "\u201c\u201d\u2018\u2019"


def words_from_text(text: str) -> list[str]:
  """The eligible words of `text`, sorted: ASCII letters only, 3-12 of them, seen at least twice (lower-cased)."""
  counts = Counter(
    w.lower()
    for token in text.split()
    if (w := token.strip(_STRIP)).isascii() and w.isalpha() and MIN_LETTERS <= len(w) <= MAX_LETTERS
  )
  return sorted(w for w, c in counts.items() if c >= MIN_COUNT)


def levenshtein(a: str, b: str) -> int:
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    cur = [i]
    for j, cb in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]


def mutate(s: str, rng: random.Random) -> str:
  """`s` with one slip: a letter changed, two neighbours swapped, a letter dropped or doubled."""
  i = rng.randrange(len(s))
  op = rng.randrange(4)
  if op == 0:
    return s[:i] + rng.choice(LETTERS.replace(s[i], "")) + s[i + 1 :]
  if op == 1 and len(s) > 1:
    i = min(i, len(s) - 2)
    return s[:i] + s[i + 1] + s[i] + s[i + 2 :]
  if op == 2 and len(s) > 1:
    return s[:i] + s[i + 1 :]
  return s[: i + 1] + s[i:]


def _four(question: str, answer: str, wrong: list[str], gold: int, rng: random.Random, spaced: bool = False) -> Made:
  """Four choices: `answer` at `gold` and three distinct wrong ones, taken from `wrong` in a random order and then
  from slips of the answer (`spaced`: slips of the spelled word, spelled again)."""
  rng.shuffle(wrong)
  picks: list[str] = []
  seen = {answer}
  pool = iter(wrong)
  for _ in range(len(wrong) + 64):
    if len(picks) == 3:
      break
    cand = next(pool, None)
    if cand is None:
      cand = " ".join(mutate(answer.replace(" ", ""), rng)) if spaced else mutate(answer, rng)
    if cand and cand not in seen:
      seen.add(cand)
      picks.append(cand)
  if len(picks) < 3:
    return None
  picks.insert(gold, answer)
  return question, [" " + c for c in picks]


def _after_each(w: str, t: str, offset: int, fn: Callable[[str], str]) -> str:
  """`w` with `fn` applied to the letter `offset` places after every `t` (when there is one)."""
  marks = {i + offset for i, ch in enumerate(w) if ch == t}
  return "".join(fn(ch) if i in marks else ch for i, ch in enumerate(w))


def spell(w: str, gold: int, rng: random.Random, words: list[str]) -> Made:
  return _four(f'Spell out the word "{w}":', " ".join(w), [" ".join(mutate(w, rng)) for _ in range(3)], gold, rng, True)


def spell_inverse(w: str, gold: int, rng: random.Random, words: list[str]) -> Made:
  return _four(f'Write the word spelled "{" ".join(w)}":', w, [mutate(w, rng) for _ in range(3)], gold, rng)


def contains_char(w: str, gold: int, rng: random.Random, words: list[str]) -> Made:
  absent = [c for c in LETTERS if c not in w]
  c = rng.choice(sorted(set(w))) if gold == 0 else rng.choice(absent)
  return f'Is there a "{c}" in "{w}"?', [" Yes", " No"]


def contains_word(w: str, gold: int, rng: random.Random, words: list[str]) -> Made:
  others = rng.sample([x for x in words if x != w], 5)
  sentence = others[:4] + [w] if gold == 0 else others
  rng.shuffle(sentence)
  return f'Is there the word "{w}" in "{" ".join(sentence)}"?', [" Yes", " No"]


def orthographic(w: str, gold: int, rng: random.Random, words: list[str]) -> Made:
  pool = rng.sample([x for x in words if x != w], min(ORTH_CANDIDATES, len(words) - 1))
  dist = {x: levenshtein(w, x) for x in pool}
  best = min(dist.values())
  near = [x for x in pool if dist[x] == best]
  far = [x for x in pool if dist[x] >= best + 2]
  if len(near) != 1 or not far:
    return None
  pair = [near[0], rng.choice(far)] if gold == 0 else [rng.choice(far), near[0]]
  return f'Which word is spelled more like "{w}", "{pair[0]}" or "{pair[1]}"?', [" " + x for x in pair]


def insert(w: str, gold: int, rng: random.Random, words: list[str]) -> Made:
  t, c = rng.choice(sorted(set(w))), rng.choice(LETTERS)
  c2 = rng.choice(LETTERS.replace(c, ""))
  wrong = [
    w.replace(t, c + t),  # before instead of after
    w.replace(t, t + c, 1),  # only after the first
    _after_each(w, t, 1, lambda ch: ch + c),  # after the next letter
    w.replace(t, t + c2),  # another letter
    w + c,
  ]
  return _four(f'Add "{c}" after every "{t}" in "{w}":', w.replace(t, t + c), wrong, gold, rng)


def delete(w: str, gold: int, rng: random.Random, words: list[str]) -> Made:
  t = rng.choice(sorted(set(w)))
  answer = w.replace(t, "")
  if not answer:
    return None
  other = rng.choice(sorted(set(w) - {t}))
  wrong = [w.replace(t, "", 1), _after_each(w, t, 1, lambda ch: ""), _after_each(w, t, -1, lambda ch: ""), w]
  wrong.append(w.replace(other, ""))
  return _four(f'Delete every "{t}" from "{w}":', answer, wrong, gold, rng)


def substitute(w: str, gold: int, rng: random.Random, words: list[str]) -> Made:
  if len(set(w)) < 2:
    return None
  t = rng.choice(sorted(set(w)))
  c = rng.choice(LETTERS.replace(t, ""))
  other = rng.choice(sorted(set(w) - {t}))
  wrong = [w.replace(t, c, 1), _after_each(w, t, 1, lambda ch: c), w.replace(other, c), w, w.replace(t, c + t)]
  return _four(f'Replace every "{t}" with "{c}" in "{w}":', w.replace(t, c), wrong, gold, rng)


def swap(w: str, gold: int, rng: random.Random, words: list[str]) -> Made:
  once = [ch for ch in w if w.count(ch) == 1]
  if len(once) < 2:
    return None
  a, b = rng.sample(once, 2)
  i, j = sorted((w.index(a), w.index(b)))
  chars = list(w)
  chars[i], chars[j] = chars[j], chars[i]

  def swapped(p: int, q: int) -> str:
    out = list(w)
    out[p], out[q] = out[q], out[p]
    return "".join(out)

  wrong = [swapped(i, min(i + 1, len(w) - 1)), swapped(max(j - 1, 0), j), w, w[:j] + w[i] + w[j + 1 :], w[::-1]]
  return _four(f'Swap "{a}" and "{b}" in "{w}":', "".join(chars), wrong, gold, rng)


# name -> (number of choices, the probe)
PROBES: dict[str, tuple[int, ProbeFn]] = {
  "spell": (4, spell),
  "spell_inverse": (4, spell_inverse),
  "contains_char": (2, contains_char),
  "contains_word": (2, contains_word),
  "orthographic": (2, orthographic),
  "insert": (4, insert),
  "delete": (4, delete),
  "substitute": (4, substitute),
  "swap": (4, swap),
}


def balanced(n: int, k: int, rng: random.Random) -> list[int]:
  """`n` gold indices in [0, k), each as often as possible, in a random order."""
  golds = [i % k for i in range(n)]
  rng.shuffle(golds)
  return golds


def probe_records(name: str, words: list[str], n: int, rng: random.Random) -> list[dict[str, Any]]:
  """Up to `n` items of probe `name` (fewer when too few words fit it). `words`: the eligible words in a seeded
  order; its first DEMO_POOL words give the demonstrations, the rest the items (in an order `rng` draws)."""
  k, fn = PROBES[name]
  demo_pool, pool = words[:DEMO_POOL], words[DEMO_POOL:]
  demos: list[str] = []
  for w in demo_pool:
    made = fn(w, len(demos) % k, rng, pool)
    if made is not None:
      demos.append(made[0] + made[1][len(demos) % k])
    if len(demos) == N_DEMOS:
      break
  if len(demos) < N_DEMOS:
    return []
  prompt = "\n".join(demos) + "\n"
  pool = rng.sample(pool, len(pool))
  golds = balanced(min(n, len(pool)), k, rng)
  records: list[dict[str, Any]] = []
  for w in pool:
    if len(records) == len(golds):
      break
    gold = golds[len(records)]
    made = fn(w, gold, rng, pool)
    if made is None:
      continue
    question, choices = made
    records.append(
      dict(
        id=len(records), probe=name, word=w, query=prompt + question, choices=choices, gold=gold, answer=choices[gold]
      )
    )
  return records
