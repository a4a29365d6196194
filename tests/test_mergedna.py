"""MergeDNA: local-window merging against a per-row loop, the exact round trip at ratio 1, the window bound through
both merging blocks, gradients into the merge scores, non-causality only where intended, the masking rule, exact
resume, classification from a MergeDNA run, its merge pictures, and bad settings as one line."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from chunklm.classify.records import Record
from chunklm.classify.trainer import ClassifySettings, load_classifier, predict_probs, train_classifier
from chunklm.cli import main
from chunklm.config.mergedna import MergeDNAConfig, MergeDNAObjective
from chunklm.errors import CheckpointError, ConfigError, UserError
from chunklm.model.flops import mergedna_train_flops_per_base
from chunklm.model.functional import named_leaves
from chunklm.model.mergedna import MergeDNA
from chunklm.model.merging import allowed_edges, compose, merge, unmerge
from chunklm.train.mergedna_loss import losses, mask_windows, select_masked, window_losses
from chunklm.train.mergedna_trainer import load_mergedna_config, open_mergedna, train_mergedna

QUIET = dict(progress=False, log=lambda *a, **k: None)
CFG = MergeDNAConfig(d_model=32, n_heads=2, window=8, latent_layers=2)
TINY = [
  "mergedna.d_model=32",
  "mergedna.n_heads=2",
  "mergedna.window=8",
  "mergedna.latent_layers=2",
  "data.seq_len=64",
  "data.min_doc_bytes=4",
  "data.dna.reverse_complement=0.5",
  "train.batch_size=3",
  "train.schedule=constant",
  "train.warmup_steps=1",
  "train.log_every=1",
  "train.checkpoint_every=3",
]


def _jitted(model: MergeDNA):
  """model with `tokenize`, `latent`, `decode`, `pooled` compiled (eager dispatch of every op is slower)."""
  graphdef, state = nnx.split(model)

  class Compiled:
    mask_id = model.mask_id

    def __getattr__(self, name):
      fn = jax.jit(lambda st, *a: getattr(nnx.merge(graphdef, st), name)(*a))
      return lambda *a: fn(state, *a)

  return Compiled()


def _dna(rng, b, n):
  return jnp.asarray(rng.choice(np.frombuffer(b"ACGT", np.uint8), (b, n)).astype(np.int32))


def _loop_merge(x, valid, start, size, m, window, capacity):
  """The hard merge, one row at a time: runs of tokens joined where m >= 1/2 inside a window, size-weighted means."""
  b, n, d = x.shape
  out = np.zeros((b, capacity, d)), np.zeros((b, capacity), int), np.zeros((b, capacity), int)
  group, overflow = np.full((b, n), capacity), np.zeros(b, int)
  for r in range(b):
    groups: list[list[int]] = []
    for i in range(n):
      if not valid[r, i]:
        continue
      if groups and i > 0 and valid[r, i - 1] and start[r, i] % window and m[r, i] >= 0.5:
        groups[-1].append(i)
      else:
        groups.append([i])
    for g, members in enumerate(groups):
      if g >= capacity:
        overflow[r] += len(members)
        continue
      w = size[r, members]
      out[0][r, g] = (x[r, members] * w[:, None]).sum(0) / w.sum()
      out[1][r, g], out[2][r, g] = start[r, members[0]], w.sum()
      group[r, members] = g
  return (*out, group, overflow)


@pytest.mark.parametrize("capacity", [16, 6])
def test_merging_is_the_per_row_loop_including_the_overflow(capacity):
  rng = np.random.default_rng(0)
  b, n, d, window = 3, 16, 5, 4
  x = rng.normal(size=(b, n, d)).astype(np.float32)
  valid = np.ones((b, n), bool)
  valid[1, 11:] = False
  start = np.broadcast_to(np.arange(n) * 2, (b, n)).copy()  # tokens of 2 bases each
  size = np.where(valid, 2, 0)
  m = rng.uniform(size=(b, n)).astype(np.float32)
  out = merge(
    jnp.asarray(x),
    jnp.asarray(valid),
    jnp.asarray(start),
    jnp.asarray(size),
    jnp.asarray(m),
    allowed_edges(jnp.asarray(valid), jnp.asarray(start), window),
    capacity,
  )
  want_x, want_start, want_size, want_group, want_overflow = _loop_merge(x, valid, start, size, m, window, capacity)
  np.testing.assert_allclose(np.asarray(out.x_BxMxD), want_x, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out.start_BxM), want_start)
  np.testing.assert_array_equal(np.asarray(out.size_BxM), want_size)
  np.testing.assert_array_equal(np.asarray(out.group_BxN), want_group)
  np.testing.assert_array_equal(np.asarray(out.overflow_B), want_overflow)
  assert (capacity == 6) == bool(want_overflow.any())  # the small capacity does drop groups


def test_the_straight_through_gradient_is_the_soft_merge_derivative():
  """dL/dm_i for L = sum_g v_g . z_g: each side of edge i lends the other side's token with weight 1/2 x its size,
  so the derivative is 1/2 sum over the two sides of w (x_lent - z_g) . v_g / size_g (dropped groups: nothing)."""
  rng = np.random.default_rng(6)
  b, n, d, window, capacity = 2, 12, 3, 4, 5
  x = rng.normal(size=(b, n, d)).astype(np.float32)
  valid = np.ones((b, n), bool)
  start = np.broadcast_to(np.arange(n), (b, n)).copy()
  size = rng.integers(1, 4, size=(b, n))
  m = rng.uniform(size=(b, n)).astype(np.float32)
  v = rng.normal(size=(b, capacity, d)).astype(np.float32)
  allowed = allowed_edges(jnp.asarray(valid), jnp.asarray(start), window)

  def loss(m_):
    out = merge(jnp.asarray(x), jnp.asarray(valid), jnp.asarray(start), jnp.asarray(size), m_, allowed, capacity)
    return jnp.sum(out.x_BxMxD * v)

  got = np.asarray(jax.grad(loss)(jnp.asarray(m)))
  z, _, zsize, group, _ = _loop_merge(x, valid, start, size, m, window, capacity)
  want = np.zeros((b, n))
  for r in range(b):
    for i in np.flatnonzero(np.asarray(allowed[r])):
      for lent, g in ((i, group[r, i - 1]), (i - 1, group[r, i])):
        if g < capacity:
          want[r, i] += 0.5 * size[r, lent] * (x[r, lent] - z[r, g]) @ v[r, g] / zsize[r, g]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert np.count_nonzero(np.abs(want) > 1e-6) >= 8  # most allowed edges have a gradient (some groups dropped)


def test_raising_a_merge_score_moves_the_left_token_the_way_merging_does():
  x = jnp.asarray([[[1.0, 0.0], [0.0, 1.0], [0.2, 0.2]]])  # tokens 0 and 1 merged; token 2 not
  valid, pos = jnp.ones((1, 3), bool), jnp.arange(3)[None]

  def left(m_):
    out = merge(x, valid, pos, valid.astype(jnp.int32), m_, jnp.asarray([[False, True, True]]), 3)
    return jnp.sum(out.x_BxMxD[0, 0])  # 1.0 now; 0.8 if token 2 joined

  assert float(jax.grad(left)(jnp.asarray([[0.0, 0.9, 0.2]]))[0, 2]) < 0


def test_dropped_groups_unmerge_to_zeros_and_the_rest_to_their_token():
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(size=(1, 16, 4)).astype(np.float32))
  valid, pos = jnp.ones((1, 16), bool), jnp.arange(16)[None]
  m = jnp.asarray(rng.uniform(size=(1, 16)).astype(np.float32))
  out = merge(x, valid, pos, valid.astype(jnp.int32), m, allowed_edges(valid, pos, 4), 3)
  back = np.asarray(unmerge(out.x_BxMxD, compose(pos, out.group_BxN, 3)))
  group = np.asarray(out.group_BxN[0])
  assert int(out.overflow_B[0]) == int((group == 3).sum()) > 0
  np.testing.assert_array_equal(back[0, group == 3], 0.0)
  np.testing.assert_array_equal(back[0, group < 3], np.asarray(out.x_BxMxD[0])[group[group < 3]])


def test_pooling_and_window_losses_ignore_padding():
  model = _jitted(MergeDNA(CFG, rngs=nnx.Rngs(params=0)))
  ids = _dna(np.random.default_rng(8), 2, 48)
  padded = jnp.concatenate([ids, _dna(np.random.default_rng(9), 2, 16)], axis=1)  # junk past each record's end
  a, _ = model.pooled(ids, jnp.asarray([48, 30]))
  b, _ = model.pooled(padded, jnp.asarray([48, 30]))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  ce = jnp.asarray(np.random.default_rng(10).uniform(size=(2, 48)).astype(np.float32))
  valid = jnp.arange(48)[None] < jnp.asarray([[48], [30]])
  per, ok = (np.asarray(a) for a in window_losses(ce * valid, valid, 8))
  assert ok.tolist() == [[True] * 6, [True] * 4 + [False] * 2]
  np.testing.assert_allclose(per[1, 3], np.asarray(ce[1, 24:30]).mean(), rtol=1e-6)  # the valid bases only


@pytest.mark.parametrize("single", [False, True])  # masked_tokens: merged | bases
def test_a_masked_window_tokenizes_and_predicts_the_same_whatever_its_bases_were(single):
  # room for every token (single masked bases need more than the default capacity of an untrained model gives)
  model = _jitted(MergeDNA(dataclasses.replace(CFG, capacity=4.0), rngs=nnx.Rngs(params=0)))
  valid = jnp.ones((1, 64), bool)
  mask = jnp.asarray([[False, True, False, False, False, False, True, False]])  # windows 1 and 6 of 8 bases
  outs = []
  for seed in (11, 12):  # the same bases outside the masked windows, others inside
    ids = _dna(np.random.default_rng(11), 1, 64)
    inside = jnp.repeat(mask, 8, axis=1)
    ids = jnp.where(inside, _dna(np.random.default_rng(seed), 1, 64), ids)
    masked_ids, masked = mask_windows(ids, valid, mask, 8, model.mask_id)
    tok = model.tokenize(masked_ids, valid, masked if single else None)
    outs.append((np.asarray(tok.src_BxL), np.asarray(model.decode(model.latent(tok), tok, valid))))
  assert int(masked.sum()) == 16 and (outs[0][0] == outs[1][0]).all() and int(tok.overflow_K.sum()) == 0
  np.testing.assert_array_equal(outs[0][1], outs[1][1])
  tokens_of_masked = np.unique(outs[0][0][np.asarray(masked)]).size
  assert tokens_of_masked == (16 if single else 2)  # a token per masked base, or one per masked window (all alike)
  others = outs[0][0][~np.asarray(masked)]
  assert np.unique(others).size < others.size  # the other bases still merge


def test_merge_then_unmerge_is_exact_at_ratio_1():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 24, 7)).astype(np.float32))
  valid = jnp.ones((2, 24), bool)
  pos = jnp.broadcast_to(jnp.arange(24), (2, 24))
  out = merge(x, valid, pos, valid.astype(jnp.int32), jnp.zeros((2, 24)), allowed_edges(valid, pos, 8), 24)
  back = unmerge(out.x_BxMxD, compose(pos, out.group_BxN, 24))
  assert np.asarray(back).tobytes() == np.asarray(x).tobytes()


def test_no_merged_token_spans_two_windows_after_both_blocks():
  model = _jitted(MergeDNA(CFG, rngs=nnx.Rngs(params=0)))
  ids = _dna(np.random.default_rng(2), 4, 64)
  valid = jnp.ones((4, 64), bool).at[3, 37:].set(False)
  tok = model.tokenize(ids, valid)
  src, start, size = (np.asarray(a) for a in (tok.src_BxL, tok.start_BxM, tok.size_BxM))
  ok = np.asarray(tok.valid_BxM)
  end = start + size - 1
  assert (start[ok] // CFG.window == end[ok] // CFG.window).all()
  assert (size[ok] > 1).any()  # something merged
  for r in range(4):  # the source map: each token's bases are exactly [start, start + size)
    for t in np.flatnonzero(ok[r]):
      np.testing.assert_array_equal(np.flatnonzero(src[r] == t), np.arange(start[r, t], end[r, t] + 1))
  assert int(tok.overflow_K.sum()) == 0 and (src[3, 37:] == tok.valid_BxM.shape[1]).all()


@pytest.mark.slow  # two gradient compilations of the whole model (.ci/run runs it)
def test_both_objectives_reach_the_merge_scores():
  model = MergeDNA(dataclasses.replace(CFG, ratio_loss_weight=0.0), rngs=nnx.Rngs(params=0))
  graphdef, params = nnx.split(model, nnx.Param)
  batch = {"ids": _dna(np.random.default_rng(3), 2, 64), "valid": jnp.ones((2, 64), bool)}
  for obj in (MergeDNAObjective(masked_weight=0.0), MergeDNAObjective(reconstruction_weight=0.0)):

    def loss(p, obj=obj):
      return losses(nnx.merge(graphdef, p), batch, jax.random.key(0), obj)[0]

    grads = jax.jit(jax.grad(loss))(params)
    for scorer in grads["scorers"].values():  # without the ratio loss: through the straight-through merge only
      assert float(jnp.abs(scorer["w_q"][...]).sum()) > 0 and float(jnp.abs(scorer["w_k"][...]).sum()) > 0


def test_local_stacks_see_their_window_and_the_latent_stacks_everything():
  model = _jitted(MergeDNA(CFG, rngs=nnx.Rngs(params=0)))
  ids = _dna(np.random.default_rng(4), 1, 64)
  valid = jnp.ones((1, 64), bool)
  changed = ids.at[0, 60].set(ord("A") if int(ids[0, 60]) != ord("A") else ord("C"))  # in the last window only
  a, b = model.tokenize(ids, valid), model.tokenize(changed, valid)
  before = np.asarray(a.start_BxM[0] < 56) & np.asarray(a.valid_BxM[0])  # tokens of the first seven windows
  np.testing.assert_array_equal(np.asarray(a.x_BxMxD[0][before]), np.asarray(b.x_BxMxD[0][before]))
  la, lb = model.latent(a), model.latent(b)
  assert not np.allclose(np.asarray(la[0, 0]), np.asarray(lb[0, 0]))  # the first token sees the last window
  da, db = model.decode(la, a, valid), model.decode(lb, b, valid)
  assert not np.allclose(np.asarray(da[0, 0]), np.asarray(db[0, 0]))  # and so does the first base's prediction


def test_masking_takes_the_rate_of_valid_tokens_and_follows_the_loss():
  valid = jnp.ones((2, 40), bool).at[1, 20:].set(False)
  score = jnp.zeros((2, 40)).at[:, :4].set(30.0)
  obj = MergeDNAObjective(mask_rate=0.1, temperature=1.0)
  mask = np.asarray(select_masked(score, valid, jax.random.key(0), obj))
  assert mask.sum(1).tolist() == [4, 2] and not mask[1, 20:].any()
  assert mask[0, :4].all() and mask[1, :4].sum() == 2  # the high-loss tokens first
  uniform = np.asarray(
    select_masked(score, valid, jax.random.key(0), MergeDNAObjective(mask_rate=0.1, select="uniform"))
  )
  assert uniform.sum(1).tolist() == [4, 2] and not uniform[0, :4].all()


def test_flops_count_each_stack_at_its_level():
  cfg = MergeDNAConfig(
    d_model=64, n_heads=2, window=8, merge_ratios=(2.0,), latent_layers=1, latent_dec_layers=0, local_dec_layers=1
  )
  d, ff, vocab = 64, cfg.ff_dim(), 256

  def block(keys):
    return 8 * d * d + 4 * d * keys + 6 * d * ff

  local = block(8) + 4 * d * d  # window of 8 bases; the scorer's two projections
  latent = block(32) / 2  # 32 tokens of 2 bases over a 64-base window
  decoder = block(8) + 2 * d * vocab
  want = 3 * 2 * (local + latent + decoder)  # both passes run the whole model
  assert mergedna_train_flops_per_base(cfg, 64) == pytest.approx(want)
  assert mergedna_train_flops_per_base(cfg, 64, (4.0,)) < want  # fewer, longer tokens: a cheaper latent
  executed = 3 * 2 * (local + block(48) * 48 / 64 + decoder)  # the latent at its capacity, 1.5 x 64 / 2 = 48
  assert mergedna_train_flops_per_base(cfg, 64, executed=True) == pytest.approx(executed)
  # masked_tokens: bases, a quarter of the bases single in the masked pass: 0.75 / 2 + 0.25 latent tokens per base
  masked_pass = 3 * (local + block(40) * 0.625 + decoder)
  assert mergedna_train_flops_per_base(cfg, 64, single=0.25) == pytest.approx(want / 2 + masked_pass)
  assert mergedna_train_flops_per_base(cfg, 64, executed=True, single=0.25) == pytest.approx(executed)


def _motif_rows(rng, n: int) -> jax.Array:
  """n rows of 64 bases: a random 16-base motif repeated four times, so every base is known from 16 bases away."""
  return jnp.asarray(np.tile(rng.choice(np.frombuffer(b"ACGT", np.uint8), (n, 16)).astype(np.int32), (1, 4)))


@pytest.mark.slow  # about 90 s each alone (.ci/run runs them)
@pytest.mark.parametrize("masked_tokens", ["merged", "bases"])
def test_masked_windows_are_predicted_from_the_rest_of_the_row(masked_tokens, record_property):
  """Context reaches a masked window through the latent stacks: on rows where the bases 16 away give every masked
  base, the masked loss falls well below the 2 bits per base that base composition alone allows."""
  model = MergeDNA(CFG, rngs=nnx.Rngs(params=0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt, obj = optax.adamw(3e-3), MergeDNAObjective(masked_tokens=masked_tokens)
  state = opt.init(params)

  def metrics(p, ids, key):
    return losses(nnx.merge(graphdef, p, rest), {"ids": ids, "valid": jnp.ones(ids.shape, bool)}, key, obj)

  @jax.jit
  def step(p, state, ids, key):
    g = jax.grad(lambda p: metrics(p, ids, key)[0])(p)
    u, state = opt.update(g, state, p)
    return optax.apply_updates(p, u), state

  rng = np.random.default_rng(0)
  for i in range(800):
    params, state = step(params, state, _motif_rows(rng, 16), jax.random.key(i))
  held_out = _motif_rows(np.random.default_rng(1), 64)
  masked = np.mean([float(jax.jit(metrics)(params, held_out, jax.random.key(k))[1]["amtm_bpb"]) for k in range(4)])
  record_property("masked_bits_per_base", round(masked, 4))
  assert masked < 1.6, f"masked loss {masked:.3f} bits per base on bases its context gives away"


@pytest.mark.slow  # about 45 s alone (.ci/run runs it)
def test_pretraining_resumes_exactly_and_classifies_and_draws_its_merges(tmp_path, capsys):
  rng = np.random.default_rng(5)
  fasta = tmp_path / "g.fa"
  fasta.write_text("".join(f">g{i}\n{''.join(rng.choice(list('ACGT'), 3000))}\n" for i in range(3)))
  cfg = lambda steps: load_mergedna_config(
    "mergedna_tiny", [*TINY, f"data.sources=[{fasta}]", f"data.valid_sources=[{fasta}]", f"train.steps={steps}"]
  )
  straight = train_mergedna(cfg(4), tmp_path / "straight", **QUIET)
  train_mergedna(cfg(2), tmp_path / "resumed", **QUIET)
  resumed = train_mergedna(cfg(4), tmp_path / "resumed", **QUIET)
  a, b = named_leaves(open_mergedna(tmp_path / "straight")[1]), named_leaves(open_mergedna(tmp_path / "resumed")[1])
  assert all(np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)
  assert straight == {**resumed, "workdir": straight["workdir"]}
  rows = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "mtr_bpb" in r] == [1, 2, 3, 4]
  assert 1 <= straight["bases_per_token"] <= 8 and straight["amtm_bpb"] > 0
  with pytest.raises(CheckpointError, match="mergedna.d_model"):  # a state change is refused on resume
    train_mergedna(
      load_mergedna_config(tmp_path / "resumed" / "config.yaml", ["mergedna.d_model=64"]), tmp_path / "resumed", **QUIET
    )

  seqs = [bytes(rng.choice(list(b"ACGT"), 48)) for _ in range(12)]
  records = [Record(s if i % 2 else s.replace(b"A", b"G"), "a" if i % 2 else "b") for i, s in enumerate(seqs)]
  settings = ClassifySettings(steps=3, batch_size=4, eval_every=3, seq_len=48)
  res = train_classifier(records, records, tmp_path / "clf", settings, init_from=str(tmp_path / "straight"), **QUIET)
  graphdef, params, classes, s, meta = load_classifier(tmp_path / "clf")
  assert meta["backbone"] == "mergedna" and classes == ["a", "b"] and 0 <= res["accuracy"] <= 1
  assert predict_probs(graphdef, params, records, s).shape == (12, 2)
  scratch = train_classifier(
    records, records, tmp_path / "clf3", settings, config="mergedna_tiny", overrides=TINY[:4], **QUIET
  )
  assert load_classifier(tmp_path / "clf3")[4]["backbone"] == "mergedna" and 0 <= scratch["accuracy"] <= 1
  with pytest.raises(UserError, match="pooled by mean"):
    train_classifier(
      records,
      records,
      tmp_path / "clf2",
      ClassifySettings(steps=1, pooling="last"),
      init_from=str(tmp_path / "straight"),
      **QUIET,
    )

  assert (
    main(
      [
        "mergedna",
        "boundaries",
        "--workdir",
        str(tmp_path / "straight"),
        "--data",
        str(fasta),
        "--max-bases",
        "500",
        "--show",
        "40",
        "--out",
        str(tmp_path / "pics"),
      ]
    )
    == 0
  )
  assert main(["mergedna", "eval", "--workdir", str(tmp_path / "straight"), "--no-progress"]) == 0
  out = capsys.readouterr().out
  assert "masked token modelling" in out and "FLOPs per base" in out
  assert "bases per token: mean" in out and "after each 2-mer" in out and (tmp_path / "pics" / "tokens.png").is_file()


@pytest.mark.parametrize(
  ("overrides", "match"),
  [
    (["mergedna.window=3"], "mergedna.window: 3 bases cannot hold"),
    (["mergedna.merge_ratios=[1.0]"], "merge_ratios: one ratio > 1"),
    (["data.seq_len=100"], "not a multiple of mergedna.window"),
    (["objective.mask_rate=1.5"], "objective.mask_rate"),
    (["mergedna.capacity=0.5"], "mergedna.capacity"),
    (["objective.masked_tokens=tokens"], "objective.masked_tokens: 'tokens' is not one of"),
  ],
)
def test_bad_settings_are_one_line(overrides, match):
  with pytest.raises(ConfigError, match=match) as e:
    load_mergedna_config("mergedna_tiny", overrides)
  assert "\n" not in str(e.value)
