"""Which kinds of input byte an MrT5 gate deletes: vowels, consonants, digits, whitespace, punctuation (ASCII) and
every other byte; `class_counts` tallies positions and deleted positions per kind for the evaluation."""

from __future__ import annotations

import numpy as np

BYTE_CLASSES = {
    "vowel": set(b"aeiouAEIOU"),
    "consonant": set(b"bcdfghjklmnpqrstvwxyzBCDFGHJKLMNPQRSTVWXYZ"),
    "digit": set(b"0123456789"),
    "whitespace": set(b" \t\n\r\x0b\x0c"),
    "punctuation": set(b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
}
_CLASS_OF = np.full(256, len(BYTE_CLASSES), np.int64)  # the last class: every other byte (non-ASCII, sentinels)
for _i, _members in enumerate(BYTE_CLASSES.values()):
  _CLASS_OF[list(_members)] = _i
CLASS_NAMES = (*BYTE_CLASSES, "other")


def class_counts(ids_BxL: np.ndarray, valid_BxL: np.ndarray, keep_BxL: np.ndarray) -> np.ndarray:
  """[positions, deleted] per byte class (CLASS_NAMES order) of the valid positions: int array (classes, 2)."""
  cls = _CLASS_OF[np.asarray(ids_BxL)[valid_BxL]]
  deleted = ~np.asarray(keep_BxL)[valid_BxL]
  n = len(CLASS_NAMES)
  return np.stack([np.bincount(cls, minlength=n), np.bincount(cls[deleted], minlength=n)], axis=1)
