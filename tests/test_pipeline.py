import numpy as np
import pytest

from chunklm.data import pipeline
from chunklm.data.corpus import Documents
from chunklm.data.pipeline import BOS, PackedWindows


def make_docs(lengths, seed=0):
  rng = np.random.default_rng(seed)
  data = rng.integers(0, 200, size=sum(lengths)).astype(np.uint8)
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
  return Documents(data, starts, np.asarray(lengths, np.int64), tuple(f"d{i}" for i in range(len(lengths))))


def test_in_order_windows_tile_the_stream_and_predict_every_byte_once():
  docs = make_docs([5, 40, 1, 17, 64, 3])
  w = PackedWindows(docs, 16, shuffle=False, pad_last=True)
  stream = np.concatenate([np.concatenate([[BOS], docs.data[s : s + n]]) for s, n in zip(docs.starts, docs.lengths)])
  ids = np.concatenate([w[i]["ids"] for i in range(len(w))])
  targets = np.concatenate([w[i]["targets"] for i in range(len(w))])
  assert np.array_equal(ids[: len(stream) - 1], stream[:-1])
  assert np.array_equal(targets[: len(stream) - 1], stream[1:])
  masked = np.concatenate([w[i]["targets"][w[i]["loss_mask"]] for i in range(len(w))])
  assert len(masked) == docs.num_bytes  # every byte predicted exactly once, no BOS as target
  assert np.array_equal(masked, docs.data)


def test_segments_positions_and_mask_within_a_window():
  docs = make_docs([3, 4, 20])
  item = PackedWindows(docs, 12, shuffle=False, pad_last=True)[0]
  # stream: BOS a a a BOS b b b b BOS c c c ...
  assert item["segment_ids"].tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3]
  assert item["positions"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2]
  assert item["ids"][[0, 4, 9]].tolist() == [BOS] * 3
  # the last byte of a document does not predict the next document's BOS
  assert item["loss_mask"].tolist() == [1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1]
  nxt = PackedWindows(docs, 12, shuffle=False, pad_last=True)[1]
  assert nxt["positions"][0] == 3 and nxt["segment_ids"][0] == 1  # a document continued from the last window


def test_last_window_is_padded_and_masked():
  docs = make_docs([10])
  w = PackedWindows(docs, 8, shuffle=False, pad_last=True)
  assert len(w) == 2
  last = w[1]
  assert last["segment_ids"].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
  assert last["loss_mask"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]  # 8 + 2 = 10 bytes predicted


def test_shuffle_is_seeded_and_changes_per_epoch():
  docs = make_docs([30] * 20)
  a = PackedWindows(docs, 16, seed=3, num_epochs=2)
  b = PackedWindows(docs, 16, seed=3, num_epochs=2)
  c = PackedWindows(docs, 16, seed=4, num_epochs=2)
  e = a.windows_per_epoch
  assert all(np.array_equal(a[i]["ids"], b[i]["ids"]) for i in range(len(a)))
  assert not all(np.array_equal(a[i]["ids"], c[i]["ids"]) for i in range(5))
  assert not all(np.array_equal(a[i]["ids"], a[i + e]["ids"]) for i in range(5))


def test_eval_batches_have_fixed_shape():
  docs = make_docs([100, 7])
  batches = list(pipeline.eval_batches(docs, 16, 4))
  assert all(b["ids"].shape == (4, 16) for b in batches)
  assert sum(int(b["loss_mask"].sum()) for b in batches) == 107


def test_leading_bytes_cuts_the_last_document_at_a_character():
  docs = make_docs([5, 7, 4])
  docs = Documents(docs.data % 128, docs.starts, docs.lengths, docs.names)  # ASCII: every byte starts a character
  assert pipeline.leading_bytes(docs, 0) is docs and pipeline.leading_bytes(docs, 16) is docs
  first = pipeline.leading_bytes(docs, 9)  # 5 + the first 4 bytes of the second document
  assert first.lengths.tolist() == [5, 4] and first.starts.tolist() == [0, 5] and first.names == ("d0", "d1")
  assert pipeline.leading_bytes(docs, 5).lengths.tolist() == [5]  # the cap on a document end: no empty document
  assert pipeline.leading_bytes(docs, 3).lengths.tolist() == [3]  # one long document is cut too
  text = "ab€cd".encode()  # € = 3 bytes at positions 2..4
  utf8 = Documents(np.frombuffer(text, np.uint8), np.array([0]), np.array([len(text)]), ("u",))
  for cap, kept in [(2, b"ab"), (3, b"ab"), (4, b"ab"), (5, "ab€".encode()), (6, "ab€c".encode())]:
    cut = pipeline.leading_bytes(utf8, cap)
    assert cut.doc(0) == kept, cap


def _mixed_docs(n=400, seed=0):
  rng = np.random.default_rng(seed)
  return make_docs(rng.choice([1, 2, 4, 7, 15, 40, 130], size=n), seed=seed)


@pytest.mark.parametrize("max_docs", [2, 3, 5])
def test_the_cap_holds_in_every_window_of_every_epoch(max_docs):
  w = PackedWindows(_mixed_docs(), 32, seed=5, num_epochs=3, max_docs=max_docs)
  assert all(w[i]["segment_ids"].max() <= max_docs for i in range(len(w)))
  assert len(w) > 3 * PackedWindows(_mixed_docs(), 32, seed=5).windows_per_epoch  # padding made epochs longer
  assert min(w.padding) > 0


def test_the_cap_loses_no_byte_and_pads_only_window_ends():
  docs = _mixed_docs(200)
  seq = 16
  w = PackedWindows(docs, seq, shuffle=False, pad_last=True, max_docs=2)
  stream = b"".join(bytes([BOS]) + docs.doc(i) for i in range(len(docs)))
  inputs = b"".join(bytes(w[k]["ids"][w[k]["segment_ids"] > 0]) for k in range(len(w)))
  assert len(inputs) >= len(stream) - 1 and inputs == stream[: len(inputs)]  # every byte once, in order
  assert sum(int(w[k]["loss_mask"].sum()) for k in range(len(w))) == docs.num_bytes
  for k in range(len(w)):
    seg = w[k]["segment_ids"]
    pads = np.flatnonzero(seg == 0)
    assert not len(pads) or (pads == np.arange(seq - len(pads), seq)).all()  # padding only at a window's end


def test_capped_offsets_move_only_what_overflows():
  sizes = np.array([5, 3, 3, 3, 20, 2, 2, 2, 2], np.int64)
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  assert list(pipeline.documents_per_window(offsets, sizes, 8)) == [2, 3, 1, 1, 4, 1]
  capped = pipeline.capped_offsets(offsets, sizes, 8, 2)
  assert pipeline.documents_per_window(capped, sizes, 8).max() <= 2
  assert (np.diff(capped) >= sizes[:-1]).all() and capped[0] == 0
  gaps = np.flatnonzero(capped[1:] > capped[:-1] + sizes[:-1]) + 1
  assert len(gaps) and all(capped[i] % 8 == 0 for i in gaps)  # padding only before a document that starts a window
  assert (pipeline.capped_offsets(offsets, sizes, 8, 4) == offsets).all()  # nothing to do under a loose cap


def test_doc_cap_is_the_quantile_of_what_windows_touch():
  docs = _mixed_docs()
  cap = pipeline.doc_cap(docs, 64, seed=0, quantile=1.0)
  assert cap.max_docs == cap.most >= 2 and cap.padding == 0
  loose = pipeline.doc_cap(docs, 64, seed=0, quantile=0.5)
  assert 2 <= loose.max_docs <= cap.max_docs and loose.padding > 0
  assert "documents per window" in loose.describe()
