"""Synthetic FineWeb-like shards of a requested size of text, for benchmarking the data pipeline at scale (issue 35).

  python scripts/make_shards.py --out /tmp/shards_0.5 --gb 0.5 [--shard-mb 256] [--seed 0]

writes OUT/shard-00000.jsonl.gz, ... : gzipped JSONL records {"text", "id", "url"} as FineWeb-Edu has them, holding
--gb x 10^9 bytes of UTF-8 text in all (--shard-mb x 10^6 per shard; each shard ends within a sentence of its share).
Documents have lognormal lengths (median ~1.8 KB, a heavy tail clipped at 300 KB) and read like English prose:
Zipf-distributed words from a generated vocabulary of a few thousand (with some non-ASCII words and numbers),
sentences with commas, quotes and brackets, paragraphs split by blank lines. The files are the same bytes for the
same --seed, --gb and --shard-mb, whatever --workers.

Speed (the 8 GB case must not take an hour): a pool of random sentences is built once with NumPy, already
JSON-escaped, and each document is a slice of it between two sentence boundaries, so no text is encoded per document;
the shards are compressed with gzip level 1 by a process pool.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

from chunklm.progress import bar

GB, MB = 10**9, 10**6
POOL_BYTES = 48 * MB  # text in the sentence pool every document is a slice of
MEDIAN_DOC, SIGMA_DOC = 1800, 1.1  # lognormal document length in bytes: median and log-space spread
MIN_DOC, MAX_DOC = 100, 300_000
ZIPF_SHIFT = 2.7  # word of rank r (from 0) has probability ~ 1 / (r + ZIPF_SHIFT)
PHRASES, PHRASE_SHIFT = 20_000, 5.0  # the phrases text is drawn from, and their Zipf shift
BATCH_DOCS = 4096  # documents drawn per NumPy batch
WRITE_BYTES = 4 * MB  # records gathered before each write to the compressor

FUNCTION_WORDS = (
  "the of and to a in is that for it as with was on be by this are or from at which an not have has but can their "
  "more one its also they were been other these than all into may about some such most time when would only new "
  "there first who two many used between over each made use through what however where both during under three "
  "people since well those our after we you he she his her if so no because very how"
).split()
ONSETS = "b c d f g h j k l m n p r s t v w y z br cl dr fl gr pl st str th sh ch tr sp".split()
VOWELS = "a e i o u ai ea ee oo ou ie io".split()
CODAS = [""] * 6 + "n r s t l m nd st ng rt ck ss".split()
NON_ASCII = (
  "café naïve résumé façade über Zürich São Paulo señor año Ångström Øresund crème brûlée jalapeño coöperation "
  "Málaga Köln Kraków Ελλάδα λόγος Москва город 東京 日本語 北京 서울 €20 £5 ±3 °C — …"
).split()
FORMS = ("{}", "{},", "{};", '"{}"', "({})", "{}.", "{}?", "{}!")  # how a word appears: plain, ..., sentence ends
FORM_P = (0.895, 0.08, 0.005, 0.012, 0.008)  # inside a sentence
END_P = (0.9, 0.06, 0.04)  # at its end: . ? !
SEPARATORS = (" ", "\n\n", "\n")
END_SEP_P = (0.78, 0.18, 0.04)  # after a sentence: same paragraph, new paragraph, line break
TLDS = ("com", "org", "net", "edu", "co.uk", "de", "io", "info")


def vocabulary(rng: np.random.Generator, size: int = 4000) -> list[str]:
  """Words in rank order (most frequent first): English function words, then generated ones, numbers and a few
  non-ASCII words spread through the ranks."""
  seen = set(FUNCTION_WORDS)
  made: list[str] = []
  while len(made) < size - len(FUNCTION_WORDS):
    n = 1 + int(rng.choice(4, p=(0.35, 0.4, 0.2, 0.05)))
    w = "".join(ONSETS[rng.integers(len(ONSETS))] + VOWELS[rng.integers(len(VOWELS))] for _ in range(n))
    w += CODAS[rng.integers(len(CODAS))]
    if w not in seen:
      seen.add(w)
      made.append(w)
  noise = rng.normal(0, 2, len(made))  # shorter words tend to be the more frequent, as in English
  words = list(FUNCTION_WORDS) + [made[i] for i in np.argsort([len(w) + x for w, x in zip(made, noise)])]
  for i, extra in enumerate(NON_ASCII + [str(y) for y in range(1990, 2025)] + ["3.5%", "10", "100", "$20", "1,000"]):
    words[len(FUNCTION_WORDS) + 7 + 37 * i] = extra
  return words


def _pieces(vocab: list[str]) -> tuple[list[bytes], np.ndarray, np.ndarray]:
  """The JSON-escaped bytes of every (word, capitalised, form) piece, then of every separator; with each piece's
  length as text (UTF-8 bytes) and as escaped JSON."""
  texts = [f.format(w[:1].upper() + w[1:] if cap else w) for w in vocab for cap in (0, 1) for f in FORMS]
  texts += list(SEPARATORS)
  escaped = [json.dumps(t, ensure_ascii=False)[1:-1].encode() for t in texts]
  return escaped, np.array([len(t.encode()) for t in texts]), np.array([len(e) for e in escaped])


def _concatenate(flat: np.ndarray, lengths: np.ndarray, codes: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
  """The pieces `codes` of `flat` one after another, where piece i is the next `lengths[i]` items of `flat` after
  piece i - 1: `b"".join(pieces[c] for c in codes)` with NumPy (five times faster for tens of millions of codes)."""
  first = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # where each piece starts in `flat`
  ends = np.cumsum(lengths[codes])
  out = np.empty(int(ends[-1]), flat.dtype)
  for i in range(0, len(codes), chunk):
    c = codes[i : i + chunk]
    start = int(ends[i - 1]) if i else 0
    n = int(ends[i + len(c) - 1]) - start
    at = ends[i : i + len(c)] - lengths[c] - start  # where each piece goes in this chunk of `out`
    out[start : start + n] = flat[np.repeat(first[c] - at, lengths[c]) + np.arange(n)]
  return out


def _zipf(rng: np.random.Generator, n: int, size: int, shift: float) -> np.ndarray:
  """`size` ranks in [0, n) with probability ~ 1 / (rank + shift) (Zipf-Mandelbrot), by inverting the continuous
  CDF."""
  return (shift * ((n + shift) / shift) ** rng.random(size) - shift).astype(np.int64).clip(0, n - 1)


def _word_stream(rng: np.random.Generator, vocab_size: int, n_words: int) -> np.ndarray:
  """`n_words` word ranks, drawn as a Zipf stream of phrases of 1-4 Zipf-drawn words: text repeats word sequences
  as prose does, so it compresses about as well as web text (and gzip runs faster on it than on words drawn one by
  one)."""
  length = 1 + rng.choice(4, PHRASES, p=(0.3, 0.35, 0.25, 0.1))
  words = _zipf(rng, vocab_size, int(length.sum()), ZIPF_SHIFT)
  phrases = _zipf(rng, PHRASES, n_words // 2 + 1000, PHRASE_SHIFT)  # 2.15 words a phrase on average
  stream = _concatenate(words, length, phrases)
  assert len(stream) >= n_words
  return stream[:n_words]


class SentencePool:
  """Random sentences as one JSON-escaped byte string, with each sentence's start and end offset both in the text
  (UTF-8 bytes, for counting) and in the escaped string (for slicing); built once per seed."""

  def __init__(self, seed: int, size: int = POOL_BYTES):
    if size < 4 * MAX_DOC:
      raise ValueError(f"a pool of {size} bytes is too small for documents of up to {MAX_DOC}")
    rng = np.random.default_rng([seed, 0xF1])
    vocab = vocabulary(rng)
    escaped, text_len, esc_len = _pieces(vocab)
    n_words = size // 6
    sent_len = 3 + rng.poisson(14, n_words // 12)
    sent_len = sent_len[: int(np.searchsorted(np.cumsum(sent_len), n_words)) + 1]
    ends = np.cumsum(sent_len) - 1  # index of each sentence's last word
    n_words = int(ends[-1]) + 1
    word = _word_stream(rng, len(vocab), n_words)
    form = rng.choice(len(FORM_P), n_words, p=FORM_P)
    form[ends] = len(FORM_P) + rng.choice(len(END_P), len(ends), p=END_P)
    cap = np.zeros(n_words, np.int64)
    cap[ends[:-1] + 1] = cap[0] = 1
    sep = np.zeros(n_words, np.int64)
    sep[ends] = rng.choice(len(SEPARATORS), len(ends), p=END_SEP_P)
    codes = np.empty(2 * n_words, np.int64)  # word piece, separator, word piece, separator, ...
    codes[0::2] = (word * 2 + cap) * len(FORMS) + form
    codes[1::2] = len(vocab) * 2 * len(FORMS) + sep
    self.text = _concatenate(np.frombuffer(b"".join(escaped), np.uint8), esc_len, codes).tobytes()
    first = np.concatenate([[0], ends[:-1] + 1])
    text_at, esc_at = (np.concatenate([[0], np.cumsum(lengths[codes])]) for lengths in (text_len, esc_len))
    self.text_start, self.esc_start = text_at[2 * first], esc_at[2 * first]
    # a sentence ends after its last word, before the separator that follows
    self.text_end, self.esc_end = text_at[2 * ends + 1], esc_at[2 * ends + 1]
    self.domains = [f"{vocab[i]}{vocab[j]}.{TLDS[i % len(TLDS)]}" for i, j in rng.integers(60, 3000, (500, 2))]
    self.vocab = vocab
    # documents start early enough that the longest one fits before the pool ends
    self.max_start = int(np.searchsorted(self.text_start, self.text_end[-1] - 2 * MAX_DOC))

  def documents(self, rng: np.random.Generator, budget: int):
    """(first, last) sentence indices of documents, in batches, whose text adds up to `budget` bytes (the last one cut
    short to fit, so the total overshoots by less than a sentence)."""
    left = budget
    while left > 0:
      want = np.exp(rng.normal(np.log(MEDIAN_DOC), SIGMA_DOC, BATCH_DOCS)).clip(MIN_DOC, MAX_DOC).astype(np.int64)
      first = rng.integers(0, self.max_start, BATCH_DOCS)
      last: np.ndarray = np.searchsorted(self.text_end, self.text_start[first] + want)
      total = np.cumsum(self.text_end[last] - self.text_start[first])
      k = int(np.searchsorted(total, left))  # documents before the one that reaches the budget
      if k >= BATCH_DOCS:
        left -= int(total[-1])
        yield first, last
        continue
      short = left - (int(total[k - 1]) if k else 0)
      last[k] = np.searchsorted(self.text_end, self.text_start[first[k]] + short)
      yield first[: k + 1], last[: k + 1]
      left = 0


def _records(pool: SentencePool, rng: np.random.Generator, first: np.ndarray, last: np.ndarray) -> tuple[bytes, int]:
  """JSONL lines of a batch of documents, and the bytes of text they hold."""
  ids = rng.bytes(16 * len(first)).hex()
  dom = rng.integers(0, len(pool.domains), len(first)).tolist()
  slug = rng.integers(0, len(pool.vocab), (len(first), 2)).tolist()
  page = rng.integers(1, 100_000, len(first)).tolist()
  es, ee = pool.esc_start[first].tolist(), pool.esc_end[last].tolist()
  text = pool.text
  lines = []
  for i in range(len(first)):
    u = ids[32 * i : 32 * i + 32]
    url = f"https://www.{pool.domains[dom[i]]}/{pool.vocab[slug[i][0]]}-{pool.vocab[slug[i][1]]}/{page[i]}"
    tail = f'", "id": "<urn:uuid:{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}>", "url": {json.dumps(url)}}}\n'
    lines.append(b'{"text": "' + text[es[i] : ee[i]] + tail.encode())
  return b"".join(lines), int((pool.text_end[last] - pool.text_start[first]).sum())


_POOL: SentencePool | None = None  # built in the parent, inherited by the forked workers
_DONE = None  # a shared counter of text bytes written, for the progress bar


def write_shard(job: tuple[Path, int, int, int, int]) -> tuple[int, int, int]:
  """Write one shard (`budget` bytes of text) atomically; return its documents, text bytes and file bytes."""
  path, index, budget, seed, level = job
  assert _POOL is not None and _DONE is not None
  rng = np.random.default_rng([seed, index + 1])
  docs = text_bytes = 0
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0) as gz:
    chunk: list[bytes] = []
    size = 0
    for first, last in _POOL.documents(rng, budget):
      lines, n = _records(_POOL, rng, first, last)
      chunk.append(lines)
      size += len(lines)
      docs, text_bytes = docs + len(first), text_bytes + n
      with _DONE.get_lock():
        _DONE.value += n
      if size >= WRITE_BYTES:
        gz.write(b"".join(chunk))
        chunk, size = [], 0
    gz.write(b"".join(chunk))
  os.replace(tmp, path)
  return docs, text_bytes, path.stat().st_size


def _init(pool: SentencePool, done) -> None:
  global _POOL, _DONE
  _POOL, _DONE = pool, done


def make_shards(out: Path, gb: float, shard_mb: float, seed: int, workers: int, level: int) -> tuple[int, int, int]:
  """Write the shards of `gb` x 10^9 bytes of text under `out`; return documents, text bytes and gzip bytes."""
  total, per_shard = int(gb * GB), int(shard_mb * MB)
  budgets = [per_shard] * (total // per_shard) + ([total % per_shard] if total % per_shard else [])
  jobs = [(out / f"shard-{i:05d}.jsonl.gz", i, b, seed, level) for i, b in enumerate(budgets)]
  out.mkdir(parents=True, exist_ok=True)
  ctx = mp.get_context("fork")
  done = ctx.Value("q", 0)
  pool = SentencePool(seed, min(POOL_BYTES, max(4 * MB, 2 * total)))  # small outputs need no big pool
  results: list[tuple[int, int, int]] = []
  with (
    bar(enabled=True, desc="text", total=round(total / MB), unit="MB") as progress,
    ctx.Pool(min(workers, len(jobs)), initializer=_init, initargs=(pool, done)) as procs,
  ):
    pending = procs.map_async(write_shard, jobs, chunksize=1, callback=results.extend)
    while not pending.ready():
      pending.wait(0.5)
      progress.update(round(done.value / MB) - progress.n)
    pending.get()  # raises a worker's error
    progress.update(round(total / MB) - progress.n)
  return sum(r[0] for r in results), sum(r[1] for r in results), sum(r[2] for r in results)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--out", type=Path, required=True, help="directory for shard-NNNNN.jsonl.gz (must hold no shards)")
  p.add_argument("--gb", type=float, required=True, help="text in all, in 10^9 bytes (e.g. 0.5, 2, 8)")
  p.add_argument("--shard-mb", type=float, default=256, help="text per shard, in 10^6 bytes (default: %(default)s)")
  p.add_argument("--seed", type=int, default=0, help="the same seed gives the same files (default: %(default)s)")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: the CPU count)")
  p.add_argument("--level", type=int, default=1, choices=range(1, 10), metavar="1-9", help="gzip level (default: 1)")
  args = p.parse_args(argv)
  if not (args.gb > 0 and args.shard_mb > 0 and args.workers > 0):
    p.error("--gb, --shard-mb and --workers must be positive")
  if int(args.gb * GB) < MIN_DOC:
    p.error(f"--gb {args.gb}: less than one document of text")
  if args.out.exists() and any(args.out.glob("shard-*.jsonl.gz*")):
    p.error(f"--out {args.out} already holds shards: choose an empty directory")
  start = time.perf_counter()
  docs, text_bytes, gz_bytes = make_shards(args.out, args.gb, args.shard_mb, args.seed, args.workers, args.level)
  seconds = time.perf_counter() - start
  n = len(list(args.out.glob("shard-*.jsonl.gz")))
  print(
    f"{n} shards in {args.out}: {docs:,} documents, {text_bytes:,} bytes of text, {gz_bytes:,} bytes gzipped; "
    f"{seconds:.1f} s ({text_bytes / MB / seconds:.0f} MB/s of text)"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
