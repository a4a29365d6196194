import numpy as np

from chunklm.eval.boundaries import _routing, boundary_levels, picture
from chunklm.model.functional import split_model
from chunklm.model.lm import build_model
from test_hnet import hnet_config


def test_picture_marks_chunk_starts():
  data = b"def main(args):"
  b0 = np.zeros(len(data), bool)
  b0[[0, 3, 8, 13]] = True
  b1 = np.zeros(len(data), bool)
  b1[[0, 8]] = True
  assert picture(data, [b0]) == "def│ main│(args│):"
  assert picture(data, [b0, b1]) == "def│ main┃(args│):"
  assert picture(b"a\nb\tc", [np.array([1, 0, 1, 0, 1], bool)]) == "a↵│b→│c"


def test_boundary_inside_a_utf8_character_is_drawn_before_it():
  data = "añb".encode()  # ñ is 2 bytes
  b = np.array([1, 0, 1, 1], bool)  # a boundary on the continuation byte of ñ
  assert picture(data, [b]) == "a│ñ│b"


def test_boundary_levels_from_a_model():
  """Shapes, nesting, and agreement with the model's own boundary counts (BOS excluded)."""
  for stages in (1, 2):
    cfg = hnet_config(stages)
    graphdef, params = split_model(build_model(cfg, 0))
    data = b"def f(x): return x"
    levels = boundary_levels(graphdef, params, data, stages, cfg.data.seq_len)
    assert len(levels) == stages and all(lv.shape == (len(data),) for lv in levels)
    if stages == 2:
      assert not (levels[1] & ~levels[0]).any(), "a stage-1 boundary is always a stage-0 boundary"
    ids = np.zeros((1, cfg.data.seq_len), np.int32)
    ids[0, 0], ids[0, 1 : len(data) + 1] = 0xFE, list(data)
    seg = (np.arange(cfg.data.seq_len) <= len(data)).astype(np.int32)[None]
    stages = _routing(graphdef, params, ids, seg)
    assert int(levels[0].sum()) == int(stages[0].boundaries_BxL[0, 1 : len(data) + 1].sum())
