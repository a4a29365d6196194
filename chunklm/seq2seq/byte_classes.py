"""Which kinds of input byte an MrT5 gate deletes: vowels, consonants, digits, whitespace, punctuation (ASCII) and
every other byte; `class_counts` tallies positions and deleted positions per kind for the evaluation."""

from __future__ import annotations

import numpy as np

BYTE_CLASSES = {
  "vowel": b"aeiouAEIOU",
  "consonant": b"bcdfghjklmnpqrstvwxyzBCDFGHJKLMNPQRSTVWXYZ",
  "digit": b"0123456789",
  "whitespace": b" \t\n\r\x0b\x0c",
  "punctuation": b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
}
CLASS_NAMES = (*BYTE_CLASSES, "other")  # "other": every byte in no class above (non-ASCII, sentinels)


def _class_of_byte() -> np.ndarray:
  table = np.full(256, len(BYTE_CLASSES), np.int64)
  for index, members in enumerate(BYTE_CLASSES.values()):
    table[list(members)] = index
  return table


CLASS_OF_BYTE = _class_of_byte()


def class_counts(ids_BxL: np.ndarray, valid_BxL: np.ndarray, keep_BxL: np.ndarray) -> np.ndarray:
  """[positions, deleted] per byte class (CLASS_NAMES order) of the valid positions: int array (classes, 2)."""
  valid_BxL = np.asarray(valid_BxL, bool)
  cls = CLASS_OF_BYTE[np.asarray(ids_BxL)[valid_BxL]]
  deleted = ~np.asarray(keep_BxL, bool)[valid_BxL]
  n = len(CLASS_NAMES)
  return np.stack([np.bincount(cls, minlength=n), np.bincount(cls[deleted], minlength=n)], axis=1)
