"""Boundary predictors other than the H-Net router: exact boundaries of the rule-based ones, causality and gradients
of every router in a 1-stage H-Net (and of mean pooling), generation steps, config and data refusals, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chunklm.config import SCRIPTS
from chunklm.errors import ConfigError, DataError
from chunklm.model.cache import GenerationUnsupported
from chunklm.model.functional import forward, split_model
from chunklm.model.lm import build_model
from chunklm.model.plan import ChunkPlan
from chunklm.model.rule_routers import check_router_data
from chunklm.model.scripts import script_classes
from chunklm.train.optim import make_optimizer
from chunklm.train.step import init_train_state, loss_fn, train_step
from conftest import tiny_config
from test_generation import step_all
from test_hnet import HNET1, make_batch

ROUTER_CASES = {
  "stride": ["model.router=[stride]"],
  "whitespace": ["model.router=[whitespace]"],
  "gumbel": ["model.router=[gumbel]"],
  "entropy": ["model.router=[entropy]", "model.entropy.d_model=16", "model.entropy.layout=T1"],
  "delete_gate": ["model.router=[delete_gate]"],
  "cosine_mean": ["model.pooling=[mean]"],
}
TEXT = b"def f(x):\n    return x * 2 + 1\nclass A:\n    pass\n  y = f(3)  # ok\n" * 3


def primed(case, cfg, ids, seg):
  """(graphdef, params) of a fresh model whose router makes some boundaries already: the gumbel logit moved to 0,
  the entropy threshold set by one training-mode forward (as the first training step would)."""
  graphdef, params = split_model(build_model(cfg, 0))
  if case == "gumbel":
    params["backbone"]["router"]["c"][...] = jnp.zeros(())
  if case == "entropy":
    _, _, stats = forward(graphdef, params, make_batch(ids, seg), train=True, with_stats=True)
    model = nnx.merge(graphdef, params)
    nnx.update(model, stats)
    graphdef, params = split_model(model)
  return graphdef, params


def route(name, text, seg=None, valid=None, *extra):
  cfg = tiny_config(*HNET1, f"model.router=[{name}]", *extra)
  model = build_model(cfg, 0)
  ids = jnp.asarray(np.frombuffer(text, np.uint8).astype(np.int32))[None]
  seg = jnp.ones_like(ids) if seg is None else jnp.asarray(seg)[None]
  valid = seg > 0 if valid is None else jnp.asarray(valid)[None]
  h = jnp.zeros((1, ids.shape[1], cfg.model.d_model[0]))
  r = model.backbone.router(h, ids, seg, valid)
  return np.flatnonzero(np.asarray(r.b_BxL[0])).tolist(), np.asarray(r.p_BxL[0])


def test_stride_boundaries_restart_at_documents_and_skip_padding():
  seg = [1] * 7 + [2] * 6 + [0] * 3
  got, p = route("stride", bytes(16), seg)
  assert got == [0, 3, 6, 7, 10]  # target_ratio 3: every 3rd byte from each document start, none on padding
  np.testing.assert_array_equal(p, np.isin(np.arange(16), got).astype(np.float32))  # p = b exactly


@pytest.mark.parametrize(
  "mode, text, expected",
  [
    ("space", "ab cd\u3000ef\u00a0g\th", [0, 3, 8, 12, 14]),  # ideographic space, NBSP, tab
    ("space", "a  x\n\n yz", [0, 3, 7]),  # a whitespace run starts one chunk
    ("space", "a \u3000b", [0, 2, 5]),  # a multi-byte space after a space starts its own chunk (documented)
    ("space", "\u00e9t\u00e9 caf\u00e9", [0, 6]),  # continuation bytes never start a chunk
    ("punct", "f(x), y", [0, 1, 2, 3, 4, 6]),
    ("regex:[\\s,]+", "a, b,c", [0, 1, 4]),
    ("regex:[\\s,]", "a, b,c", [0, 1, 2, 4]),
  ],
)
def test_word_starts_on_fixed_strings(mode, text, expected):
  got, _ = route("whitespace", text.encode(), None, None, f"model.whitespace.boundary={mode}")
  assert got == expected


def test_word_starts_respect_documents_and_padding():
  text = b"ab cd\xc2\xa0e fz"
  seg = [1] * 6 + [2] * 4 + [0] * 1  # document 2 starts at byte 6 (the A0 of a split NBSP)
  got, _ = route("whitespace", text, seg)
  assert got == [0, 3, 6, 9]  # 6: document start; nothing from document 1's C2 leaks into it; no padding boundary


def test_script_classes():
  text = "aé Жλ漢かカ한ب".encode()
  names = [SCRIPTS[i] for i in np.asarray(script_classes(jnp.asarray(list(text))[None]))[0]]
  expected = (
    ["latin"] * 4
    + ["cyrillic"] * 2
    + ["greek"] * 2
    + ["han"] * 3
    + ["hiragana"] * 3
    + ["katakana"] * 3
    + ["hangul"] * 3
    + ["arabic"] * 2
  )
  assert names == expected


@pytest.mark.parametrize(
  "case", [pytest.param(c, marks=pytest.mark.slow) if c == "entropy" else c for c in sorted(ROUTER_CASES)]
)  # entropy: the slowest, slow suite (CI budget)
def test_causality_gradient_and_perturbation(case):
  cfg = tiny_config(*HNET1, *ROUTER_CASES[case], "model.capacity=[10]")
  length = 32
  ids = jnp.asarray(np.frombuffer(TEXT[:length], np.uint8).astype(np.int32))[None]
  seg = jnp.ones((1, length), jnp.int32)
  graphdef, params = primed(case, cfg, ids, seg)
  train = case in ("gumbel", "delete_gate", "entropy")  # noise, soft deletion, statistics must be causal too

  def per_position_nll(emb_1xLxD):
    model = nnx.merge(graphdef, jax.tree.map(lambda x: x, params))  # variables of this trace: stats may update
    h, _ = model.backbone(
      emb_1xLxD,
      seg,
      seg > 0,
      ChunkPlan((10,), cfg.data.doc_slots, train=train),
      ids_BxL=ids,
      rng=jax.random.key(3) if train else None,
    )
    logp = jax.nn.log_softmax(model.head(h))
    return -logp[0, jnp.arange(length), jnp.roll(ids, -1, 1)[0]]

  jac = np.asarray(jax.jit(jax.jacobian(per_position_nll))(nnx.merge(graphdef, params).embed(ids)))[:, 0]
  dep = np.abs(jac).sum(-1) > 0
  assert not np.triu(dep, 1).any(), "the loss at t depends on a later input"
  run = jax.jit(lambda ids: forward(graphdef, params, make_batch(ids, seg)))
  logits, stages = run(ids)
  assert int(np.asarray(stages[0].boundaries_BxL).sum()) > 1, "the test should cross chunk boundaries"
  for t in (5, 17):
    future = ids.at[0, t + 1 :].set((ids[0, t + 1 :] * 7 + 13) % 256)
    np.testing.assert_allclose(logits[0, : t + 1], run(future)[0][0, : t + 1], atol=1e-5)


LEARNED = {
  "gumbel": ("router/w", "router/c"),
  "delete_gate": ("router/w", "router/c"),
  "entropy": ("router/embed", "router/head"),
  "cosine_mean": ("backbone/null",),
}


@pytest.mark.slow  # ~8 s per router on 2 cores; causality (above) stays in the default suite
@pytest.mark.parametrize("case", sorted(ROUTER_CASES))
def test_gradients_are_finite_and_learned_routers_learn(case):
  cfg = tiny_config(*HNET1, *ROUTER_CASES[case])
  ids = np.stack([np.frombuffer(TEXT[i : i + 32], np.uint8) for i in (0, 17, 40, 61)]).astype(np.int32)
  seg = np.ones_like(ids)
  seg[1, 20:] = 2
  seg[2, 28:] = 0  # padding
  graphdef, params = primed(case, cfg, ids, seg)
  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), static_argnums=1)
  (loss, metrics), grads = grad_fn(params, graphdef, make_batch(ids, seg), jax.random.key(0))
  assert np.isfinite(float(loss))
  leaves = {jax.tree_util.keystr(p): np.asarray(g) for p, g in jax.tree_util.tree_leaves_with_path(grads)}
  assert all(np.isfinite(g).all() for g in leaves.values())
  zero = [
    k
    for k, g in leaves.items()
    if not np.any(g) and "threshold" not in k and "updates" not in k and "acc" not in k and "alpha" not in k
  ]
  assert not zero, f"parameters without gradient: {zero}"
  for part in LEARNED.get(case, ()):
    a, b = part.split("/")
    assert any(a in k and b in k for k in leaves), part  # the learned part exists and got a gradient above
  b = np.asarray(forward(graphdef, params, make_batch(ids, seg))[1][0].boundaries_BxL)
  assert b[:, 0].all() and b[1, 20] and not b[2, 28:].any(), "document starts are boundaries, padding never"
  if case != "cosine_mean":  # routers without a learnable p get no H-Net ratio loss
    assert float(metrics["ratio_loss_s0"]) == 0.0


@pytest.mark.parametrize("case", ["stride", "whitespace", "gumbel"])
def test_generation_steps_equal_the_full_forward(case):
  cfg = tiny_config(*HNET1, *ROUTER_CASES[case])
  length = 30
  ids = jnp.asarray(np.stack([np.frombuffer(TEXT[i : i + length], np.uint8) for i in (0, 9)]).astype(np.int32))
  ids = ids.at[:, 0].set(0)
  graphdef, params = primed(case, cfg, ids, jnp.ones_like(ids))
  batch = {"ids": ids, "segment_ids": jnp.ones_like(ids), "positions": jnp.broadcast_to(jnp.arange(length), ids.shape)}
  full, stages = jax.jit(lambda p: forward(graphdef, p, batch, exact=True))(params)
  stepped, bounds, _ = step_all(graphdef, params, ids)
  np.testing.assert_allclose(stepped, full, atol=2e-5)
  b0 = np.asarray(bounds[0])
  np.testing.assert_array_equal(b0, np.asarray(stages[0].boundaries_BxL))
  assert 2 < b0.sum() < b0.size - 2


@pytest.mark.parametrize("case", ["entropy", "delete_gate", "cosine_mean"])
def test_generation_refuses_what_it_cannot_step(case):
  from chunklm.eval.generate import generate_many

  graphdef, params = split_model(build_model(tiny_config(*HNET1, *ROUTER_CASES[case]), 0))
  with pytest.raises(GenerationUnsupported, match="pooling|entropy|delete gate"):
    generate_many(graphdef, params, [b"x"], max_new_bytes=2)


@pytest.mark.parametrize(
  "override, message",
  [
    (["model.router=[sparkle]"], "unknown router 'sparkle'"),
    (["model.router=[stride]", "model.target_ratio=[2.5]"], "integer"),
    (["model.router=[stride]", "model.target_ratio=[0.5]"], "must be > 1"),
    (["model.router=[whitespace]", "model.whitespace.boundary=tabs"], "whitespace.boundary"),
    (["model.router=[whitespace]", "model.whitespace.boundary=regex:ab|cd"], "one byte class"),
    (["model.router=[whitespace]", "model.whitespace.boundary=regex:[a-"], "cannot compile"),
    (["model.pooling=[max]"], "unknown pooling"),
    (["model.router=[gumbel]", "model.gumbel.script_ratios={klingon: 3}"], "unknown script"),
    (["model.router=[gumbel]", "model.gumbel.script_ratios={latin: 1}"], "> 1"),
    (["model.gumbel.script_ratios={latin: 4}"], "gumbel router only"),
    (["model.router=[delete_gate]", "model.delete_gate.scale=5"], "negative"),
    (["model.router=[entropy]", "model.entropy.mode=sideways"], "entropy.mode"),
  ],
)
def test_router_configs_that_cannot_work_fail_at_load(override, message):
  with pytest.raises(ConfigError, match=message):
    tiny_config(*HNET1, *override)


@pytest.mark.parametrize("router", ["whitespace", "entropy"])
def test_byte_routers_refuse_inner_stages(router):
  from test_hnet import HNET2

  with pytest.raises(ConfigError, match="stage 0"):
    tiny_config(*HNET2, f"model.router=[cosine, {router}]")


def test_script_ratios_load_from_a_mapping():
  cfg = tiny_config(*HNET1, "model.router=[gumbel]", "model.gumbel.script_ratios={latin: 5, han: 2}").model
  assert cfg.script_targets() == {"default": 3.0, "latin": 5.0, "han": 2.0}


def test_whitespace_refuses_dna_and_text_without_spaces(tmp_path):
  from chunklm.data.corpus import load_splits

  (tmp_path / "dna").mkdir()
  (tmp_path / "dna" / "a.fa").write_text(">chr1\n" + "ACGTNACGGT" * 40 + "\n>chr2\n" + "TTGACCA" * 40 + "\n")
  cfg = tiny_config(*HNET1, "model.router=[whitespace]", data=tmp_path / "dna")
  splits = load_splits(cfg.data, cache_dir=tmp_path / "cache")
  with pytest.raises(DataError, match="nucleotides.*router=\\[stride\\]"):
    check_router_data(cfg.model, splits.train)
  (tmp_path / "words").mkdir()
  for i in range(4):
    (tmp_path / "words" / f"{i}.txt").write_text("onelongwordwithoutspaces" * 20)
  cfg = tiny_config(*HNET1, "model.router=[whitespace]", data=tmp_path / "words")
  with pytest.raises(DataError, match="no word start"):
    check_router_data(cfg.model, load_splits(cfg.data, cache_dir=tmp_path / "cache2").train)
  check_router_data(tiny_config(*HNET1, "model.router=[stride]", data=tmp_path / "dna").model, splits.train)


@pytest.mark.parametrize(
  "case,extra",
  [
    pytest.param("entropy", (), marks=pytest.mark.slow),
    pytest.param("gumbel", (), marks=pytest.mark.slow),
    ("delete_gate", ()),
    pytest.param("delete_gate", ("model.delete_gate.two_sided=false",), marks=pytest.mark.slow),
  ],
)
def test_train_step_updates_router_statistics(case, extra):
  cfg = tiny_config(*HNET1, *ROUTER_CASES[case], *extra)
  graphdef, params = split_model(build_model(cfg, 0))
  tx = make_optimizer(cfg.train, cfg.model, params)
  state = init_train_state(params, tx, 0)
  ids = np.stack([np.frombuffer(TEXT[i : i + 32], np.uint8) for i in (0, 17, 40, 61)]).astype(np.int32)
  batch = make_batch(ids, np.ones_like(ids))
  step = jax.jit(lambda s, b: train_step(graphdef, tx, s, b))
  state, m1 = step(state, batch)
  state, m2 = step(state, batch)
  router = state["params"]["backbone"]["router"]
  if case in ("entropy", "gumbel"):
    assert float(router["updates"][...]) == 2.0
    assert np.isfinite(float(router["threshold"][...]))
    if case == "entropy":
      assert float(router["threshold"][...]) > 0
  else:  # MrT5's PI controller, from the deletion rates the two steps achieved
    delta = 1 - 1 / 3
    err1, err2 = (delta - (1 - 1 / float(m["bytes_per_chunk_s0"])) for m in (m1, m2))
    p_acc = 0.9 * (0.1 * 0.5 * err1) + 0.1 * 0.5 * err2
    i_acc = 1e-5 * (err1 + err2)
    np.testing.assert_allclose(float(router["p_acc"][...]), p_acc, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(float(router["i_acc"][...]), i_acc, rtol=1e-4, atol=1e-9)
    alpha = p_acc + i_acc if not extra else max(0.0, p_acc + i_acc)
    np.testing.assert_allclose(float(router["alpha"][...]), alpha, rtol=1e-4, atol=1e-7)
    assert err1 != 0


def test_delete_gate_controller_pushes_back_both_ways():
  """Over-deleting drives alpha below 0 (a reward for keeping) unless MrT5's clamp is asked for; under-deleting
  drives it above 0."""
  ids = np.stack([np.frombuffer(TEXT[i : i + 32], np.uint8) for i in (0, 17)]).astype(np.int32)
  seg = jnp.ones(ids.shape, jnp.int32)
  for two_sided, bias, sign in ((True, 20.0, -1), (False, 20.0, 0), (True, -20.0, 1)):
    router = build_model(
      tiny_config(*HNET1, "model.router=[delete_gate]", f"model.delete_gate.two_sided={str(two_sided).lower()}"), 0
    ).backbone.router
    router.c[...] = jnp.asarray(bias)  # +20: G ~ k everywhere (delete all); -20: keep all
    h = jax.random.normal(jax.random.key(0), (*ids.shape, router.w[...].shape[0]))
    router(h, jnp.asarray(ids), seg, seg > 0, train=True)
    assert np.sign(float(router.alpha[...])) == sign, (two_sided, bias)


def test_running_quantile_threshold():
  from chunklm.model.routing import RouterStat, update_running_quantile

  threshold, updates = RouterStat(jnp.zeros(())), RouterStat(jnp.zeros(()))
  stat = jnp.arange(10.0)[None]
  decide = jnp.ones((1, 10), bool).at[0, 9].set(False)  # 0..8 decided
  update_running_quantile(threshold, updates, stat, decide, jnp.float32(0.25), 0.9)
  first = float(np.quantile(np.arange(9.0), 0.75))
  assert float(threshold[...]) == pytest.approx(first) and float(updates[...]) == 1
  update_running_quantile(threshold, updates, stat + 10, decide, jnp.float32(0.25), 0.9)
  assert float(threshold[...]) == pytest.approx(0.9 * first + 0.1 * (first + 10)) and float(updates[...]) == 2
  update_running_quantile(threshold, updates, stat, jnp.zeros((1, 10), bool), jnp.float32(0.25), 0.9)
  assert float(threshold[...]) == pytest.approx(0.9 * first + 0.1 * (first + 10)) and float(updates[...]) == 2


def test_gumbel_evaluation_keeps_the_training_rate():
  """Logits far below 0 everywhere (unpolarised, as in short runs): the sampled training rate is set by the noise,
  and evaluation must keep about that rate rather than only the document starts."""
  cfg = tiny_config(*HNET1, "model.router=[gumbel]")
  router = build_model(cfg, 0).backbone.router
  router.c[...] = jnp.asarray(-1.6)  # sigmoid(-1.6) ~ 1/6
  d = router.w[...].shape[0]
  h = jax.random.normal(jax.random.key(1), (8, 256, d))
  seg = jnp.ones((8, 256), jnp.int32)
  ids = jnp.zeros((8, 256), jnp.int32)
  before = float(router(h, ids, seg, seg > 0).b_BxL[:, 1:].mean())
  trained = []
  for i in range(20):
    trained.append(float(router(h, ids, seg, seg > 0, train=True, rng=jax.random.key(i)).b_BxL[:, 1:].mean()))
  after = float(router(h, ids, seg, seg > 0).b_BxL[:, 1:].mean())
  assert before < 0.01  # the sigmoid > 1/2 rule: no boundaries
  assert abs(after - np.mean(trained)) < 0.25 * np.mean(trained)
