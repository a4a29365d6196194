"""The BPE baseline's tokenizer: sentencepiece BPE with byte fallback, exact on any bytes.

Training sees the training split only. Text is never normalised (identity rule, no dummy prefix, whitespace kept),
so decode(encode(b)) == b for every byte string: valid UTF-8 runs go through sentencepiece, and bytes that are not
valid UTF-8 become byte pieces <0xXX> directly. `piece_bytes[id]` is the number of text bytes a piece stands for,
which makes bits per byte exact: total NLL over a text's tokens / the text's bytes.
"""

from __future__ import annotations

import dataclasses
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import sentencepiece as spm

from chunklm import logs
from chunklm.config import DataConfig
from chunklm.data.corpus import Documents, Splits
from chunklm.data.feed import open_train_data
from chunklm.errors import ConfigError, DataError
from chunklm.storage.paths import ensure_dir, is_remote, location

SAMPLE_MB = 64  # MB of training documents `chunklm tokenizer train` reads (sentencepiece samples sentences of them)
_INVALID = re.compile("([\udc80-\udcff]+)")  # bytes that are not UTF-8, after decode(..., "surrogateescape")


class Tokenizer:
  def __init__(self, path: str | Path | None = None, *, model_proto: bytes | None = None):
    self.path = location(path, "tokenizer") if path is not None else None
    if model_proto is None:
      if self.path is None or not self.path.is_file():
        raise DataError(f"tokenizer {path} not found; train one with `chunklm tokenizer train --out {path}`")
      model_proto = self.path.read_bytes()
    try:
      self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    except Exception as e:  # noqa: BLE001  (sentencepiece raises RuntimeError/OSError with its own text for bad files)
      raise DataError(f"tokenizer {path}: not a sentencepiece model ({str(e).splitlines()[0]})") from None
    self.vocab_size = self.sp.get_piece_size()
    self.bos_id = self.sp.bos_id()
    if self.bos_id < 0:
      raise DataError(f"tokenizer {path}: has no BOS piece (train it with `chunklm tokenizer train`)")
    self.byte_ids = np.array([self.sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)], np.int32)
    if (self.byte_ids == self.sp.unk_id()).any():
      raise DataError(f"tokenizer {path}: was not trained with byte fallback, so it cannot encode every byte")
    self.piece_bytes = np.zeros(self.vocab_size, np.int32)
    self._pieces: list[bytes] = []
    for i in range(self.vocab_size):
      piece = self._piece_text(i)
      self._pieces.append(piece)
      self.piece_bytes[i] = len(piece)

  def _piece_text(self, i: int) -> bytes:
    if self.sp.is_byte(i):
      return bytes([int(self.sp.id_to_piece(i)[3:5], 16)])
    if self.sp.is_control(i) or self.sp.is_unknown(i):
      return b""
    return self.sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8")

  def encode(self, data: bytes) -> np.ndarray:
    """Token ids (int32) of `data`, without BOS."""
    out: list[int] = []
    for i, part in enumerate(_INVALID.split(data.decode("utf-8", errors="surrogateescape"))):
      if i % 2:  # a run of bytes that are not valid UTF-8
        out.extend(int(self.byte_ids[ord(c) - 0xDC00]) for c in part)
      elif part:
        out.extend(self.sp.encode(part))
    return np.asarray(out, np.int32)

  def decode(self, ids) -> bytes:
    return b"".join(self._pieces[int(i)] for i in ids)


def vocab_kwargs(tok: Tokenizer | None) -> dict:
  """How a model's vocabulary is described to the windowing pipelines: {} for bytes, else BOS id and bytes per id."""
  return {} if tok is None else {"bos": tok.bos_id, "piece_bytes": tok.piece_bytes}


def _sentences(docs: Documents, max_bytes: int = 8192) -> Iterator[str]:
  """Training text: documents cut at blank lines (so pieces can span newlines), long paragraphs cut further."""
  for i in range(len(docs)):
    text = docs.doc(i).decode("utf-8", errors="replace")
    for para in text.split("\n\n"):
      for lo in range(0, len(para), max_bytes // 4):
        if para[lo : lo + max_bytes // 4]:
          yield para[lo : lo + max_bytes // 4]


def train_tokenizer(
  docs: Documents, vocab_size: int, out: str | Path, *, sample_sentences: int = 300_000, log=print
) -> Tokenizer:
  """Trains BPE with byte fallback on `docs` and writes the model file atomically."""

  if vocab_size < 300:
    raise ConfigError(f"--vocab-size {vocab_size}: must be at least 300 (256 byte pieces + control pieces + merges)")
  dest = location(out, "--out")
  log(f"training a {vocab_size}-piece BPE tokenizer on {len(docs)} documents ({docs.num_bytes:,} bytes)...")
  t = time.perf_counter()
  buf = io.BytesIO()
  spm.set_random_generator_seed(0)  # the sentence sample, hence the vocabulary, is reproducible
  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=_sentences(docs),
      model_writer=buf,
      model_type="bpe",
      vocab_size=vocab_size,
      byte_fallback=True,
      character_coverage=0.9995,
      normalization_rule_name="identity",
      add_dummy_prefix=False,
      remove_extra_whitespaces=False,
      allow_whitespace_only_pieces=True,
      split_digits=False,
      max_sentence_length=8192,
      bos_id=1,
      eos_id=-1,
      unk_id=0,
      pad_id=-1,
      input_sentence_size=sample_sentences,
      shuffle_input_sentence=True,
      seed_sentencepiece_size=1_000_000,
      num_threads=2,
      minloglevel=2,
    )
  except RuntimeError as e:
    raise DataError(
      f"sentencepiece could not train a {vocab_size}-piece vocabulary on this data: {str(e).strip().splitlines()[-1]}"
    ) from None
  ensure_dir(dest.parent)
  if is_remote(dest):
    dest.write_bytes(buf.getvalue())  # one object: whole or absent
  else:
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(dest)  # atomic
  log(f"wrote {dest} in {time.perf_counter() - t:.1f} s")
  return Tokenizer(dest)


def tokenize(docs: Documents, tok: Tokenizer) -> Documents:
  """The same documents as token ids (int32); names and order unchanged."""
  ids = [tok.encode(docs.doc(i)) for i in range(len(docs))]
  lengths = np.array([len(x) for x in ids], np.int64)
  data = np.concatenate(ids).astype(np.int32) if ids else np.zeros(0, np.int32)
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(ids) else lengths
  return Documents(data, starts, lengths, docs.names)


def tokenize_splits(splits: Splits, tok: Tokenizer) -> Splits:
  return Splits(tokenize(splits.train, tok), tokenize(splits.valid, tok), splits.description, splits.skipped_short)


def bytes_per_token(byte_docs: Documents, token_docs: Documents) -> float:
  return byte_docs.num_bytes / max(token_docs.num_bytes, 1)


def check_vocab(tok: Tokenizer, vocab_size: int) -> None:
  if tok.vocab_size != vocab_size:
    raise ConfigError(
      f"tokenizer {tok.path} has {tok.vocab_size} pieces but model.vocab_size is {vocab_size}; "
      f"set model.vocab_size={tok.vocab_size} or train a tokenizer with --vocab-size {vocab_size}"
    )


@dataclasses.dataclass(frozen=True)
class TrainedTokenizer:
  tokenizer: Tokenizer
  valid_bytes: int  # bytes of the valid split
  valid_tokens: int  # its tokens
  exact: bool  # every valid document decodes back to its own bytes

  @property
  def bytes_per_token(self) -> float:
    return self.valid_bytes / max(self.valid_tokens, 1)


def train_on_splits(
  cfg: DataConfig,
  vocab_size: int,
  out: str | Path,
  *,
  valid_bytes: int = 0,
  sample_mb: int = SAMPLE_MB,
  log=logs.info,
) -> TrainedTokenizer:
  """BPE trained on a bounded sample of the training split of the data `cfg` configures (its first `sample_mb` MB
  of training documents, as training's first epoch reads them: `feed.open_train_data`), written to `out`, and
  measured on `valid_bytes` of the valid split (0 = all; the run's `split.valid_budget` holds out the same
  documents): bytes per token and whether every document round-trips exactly. Memory does not grow with the
  corpus."""
  data = open_train_data(dataclasses.replace(cfg, cap_sample_mb=sample_mb), valid_bytes)
  log(f"data: {data.description}")
  if not data.complete:
    log(f"tokenizer sample: the first {data.sample.num_bytes:,} bytes of training documents (of a larger corpus)")
  tok = train_tokenizer(data.sample, vocab_size, out, log=log)
  valid = tokenize(data.valid, tok)
  exact = all(
    tok.decode(valid.data[s : s + n]) == data.valid.doc(i) for i, (s, n) in enumerate(zip(valid.starts, valid.lengths))
  )
  return TrainedTokenizer(tok, data.valid.num_bytes, valid.num_bytes, exact)
