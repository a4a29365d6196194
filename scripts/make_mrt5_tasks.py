"""Build MrT5's diagnostic tasks (Kallini et al. 2025) as JSONL {"input", "target"} files for `chunklm mrt5 train
--set seq2seq.objective=seq2seq`, deterministically, as the paper's data code defines them:

  vowel_removal          target = input without its vowels (aeiouAEIOU)
  contextual_vowel       pairs "consonant vowel" are planted in the input; a vowel is removed only where it follows
                         a lowercase consonant
  sequence_merge         "ABC" is planted a few times; every "ABC" becomes "D" in the target

Inputs are random ASCII letters (the paper's setting), or, with --text FILE, the letters of windows of a text
(everything but ASCII letters dropped first), so the tasks can also be built from real text.

  python scripts/make_mrt5_tasks.py --out runs/mrt5_tasks --length 64 --train 20000 --test 1000

writes OUT/{task}_{train,test}.jsonl for the three tasks (train and test drawn from separate random streams).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
from pathlib import Path

VOWELS = "aeiouAEIOU"
LETTERS = string.ascii_lowercase + string.ascii_uppercase
LOWER_CONSONANTS = "".join(c for c in string.ascii_lowercase if c not in VOWELS)
CONSONANTS = "".join(c for c in LETTERS if c not in VOWELS)


def _insert_at(text: str, piece: str, count: int, rng: random.Random) -> str:
  """`piece` written over `count` non-overlapping random positions of `text` (fewer if they do not fit)."""
  starts: list[int] = []
  for _ in range(500):
    if len(starts) >= count or len(text) <= len(piece):
      break
    s = rng.randrange(len(text) - len(piece))
    if all(abs(s - o) >= len(piece) for o in starts):
      starts.append(s)
  for s in starts:
    text = text[:s] + piece + text[s + len(piece):]
  return text


def vowel_removal(text: str, rng: random.Random) -> tuple[str, str]:
  del rng
  return text, re.sub(f"[{VOWELS}]", "", text)


def contextual_vowel(text: str, rng: random.Random, mean_pairs: float = 25.0) -> tuple[str, str]:
  count = max(1, int(rng.gauss(mean_pairs, mean_pairs / 2)))
  for _ in range(count):
    text = _insert_at(text, rng.choice(CONSONANTS) + rng.choice(VOWELS), 1, rng)
  return text, re.sub(f"([{LOWER_CONSONANTS}])[{VOWELS}]", r"\1", text)


def sequence_merge(text: str, rng: random.Random, mean_count: float = 5.0) -> tuple[str, str]:
  text = _insert_at(text, "ABC", max(1, int(rng.gauss(mean_count, mean_count / 2))), rng)
  return text, text.replace("ABC", "D")


TASKS = {"vowel_removal": vowel_removal, "contextual_vowel": contextual_vowel, "sequence_merge": sequence_merge}


def letters_source(length: int, rng: random.Random, text: str | None):
  """Random letters, or letter windows of `text`."""
  if text is None:
    return "".join(rng.choice(LETTERS) for _ in range(length))
  start = rng.randrange(max(len(text) - length, 1))
  return text[start:start + length]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--length", type=int, default=64, help="input letters per record (default: %(default)s)")
  p.add_argument("--train", type=int, default=20000, help="training records per task (default: %(default)s)")
  p.add_argument("--test", type=int, default=1000, help="test records per task (default: %(default)s)")
  p.add_argument("--text", default=None, help="take the letters from this text file instead of random letters")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.length < 8 or args.train < 1 or args.test < 1:
    p.error("--length must be >= 8, --train and --test >= 1")
  text = None
  if args.text:
    text = re.sub(f"[^{LETTERS}]", "", Path(args.text).read_text(errors="ignore"))
    if len(text) < 2 * args.length:
      p.error(f"--text {args.text}: only {len(text)} ASCII letters")
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for name, make in TASKS.items():
    for split, n, offset in (("train", args.train, 0), ("test", args.test, 1)):
      rng = random.Random(f"{args.seed}-{name}-{offset}")
      with (out / f"{name}_{split}.jsonl").open("w") as f:
        for _ in range(n):
          inp, tgt = make(letters_source(args.length, rng, text), rng)
          f.write(json.dumps({"input": inp, "target": tgt}) + "\n")
    print(f"wrote {out}/{name}_{{train,test}}.jsonl ({args.train:,} + {args.test:,} records)")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
