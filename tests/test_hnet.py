"""H-Net end to end: causality (gradients and perturbations), documents, gradients, configs, LR multipliers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chunklm.errors import ConfigError
from chunklm.model.functional import forward, split_model
from chunklm.model.lm import build_model
from chunklm.model.plan import ChunkPlan
from chunklm.model.stage_output import StageOutput, stage_metrics
from chunklm.train.optim import level_multiplier, level_of, paper_lr_multipliers
from chunklm.train.step import loss_fn
from conftest import tiny_config

HNET1 = [
  "model.layout=[m1, [T1], m1]",
  "model.d_model=[32, 48]",
  "model.n_heads=[2, 2]",
  "model.mamba.d_state=8",
  "model.mamba.head_dim=16",
  "model.mamba.chunk_size=8",
  "model.target_ratio=[3]",
]
HNET2 = [
  "model.layout=[m1, [m1, [T1], m1], m1]",
  "model.d_model=[32, 48, 64]",
  "model.n_heads=[2, 2, 2]",
  "model.mamba.d_state=8",
  "model.mamba.head_dim=16",
  "model.mamba.chunk_size=8",
  "model.target_ratio=[2, 2]",
]


def hnet_config(stages, *extra):
  return tiny_config(*(HNET1 if stages == 1 else HNET2), *extra)


def make_batch(ids, seg):
  ids, seg = jnp.asarray(ids, jnp.int32), jnp.asarray(seg, jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  return {"ids": ids, "targets": jnp.roll(ids, -1, 1), "segment_ids": seg, "positions": pos, "loss_mask": seg > 0}


@pytest.mark.parametrize(
  "stages,exact",
  [
    (1, False),
    (1, True),
    pytest.param(2, False, marks=pytest.mark.slow),
    pytest.param(2, True, marks=pytest.mark.slow),
  ],
)
def test_causality_gradient_and_perturbation(stages, exact):
  cfg = hnet_config(stages, "model.capacity=[10]" if stages == 1 else "model.capacity=[12, 10]")
  model = build_model(cfg, 0)
  length = 32
  ids = jax.random.randint(jax.random.key(1), (1, length), 0, 256)
  seg = jnp.ones((1, length), jnp.int32)

  def per_position_nll(emb_1xLxD):
    plan = ChunkPlan((10,) if stages == 1 else (12, 10), cfg.data.doc_slots, exact=exact)
    h, _ = model.backbone(emb_1xLxD, seg, seg > 0, plan, ids_BxL=ids)
    logp = jax.nn.log_softmax(model.head(h))
    return -logp[0, jnp.arange(length), jnp.roll(ids, -1, 1)[0]]

  emb = model.embed(ids)
  jac = np.asarray(jax.jit(jax.jacobian(per_position_nll))(emb))[:, 0]  # [t, s, D]
  dep = np.abs(jac).sum(-1) > 0
  assert not np.triu(dep, 1).any(), "the loss at t depends on a later input"
  assert all(dep[t, : t + 1].any() for t in range(length))
  # discrete routing decisions must not leak the future either: change every byte after t, compare logits up to t
  graphdef, params = split_model(model)
  run = jax.jit(lambda ids: forward(graphdef, params, make_batch(ids, seg), exact=exact))
  logits, stages = run(ids)
  if not exact:
    assert float(stage_metrics(stages)["overflow_s0"]) > 0, "the test should exercise overflow"
  for t in (0, 9, 20):
    future = ids.at[0, t + 1 :].set((ids[0, t + 1 :] * 7 + 13) % 256)
    logits2, _ = run(future)
    np.testing.assert_allclose(logits[0, : t + 1], logits2[0, : t + 1], atol=1e-5)


@pytest.mark.parametrize("stages", [1, 2])
def test_documents_do_not_see_each_other(stages):
  cfg = hnet_config(stages)
  graphdef, params = split_model(build_model(cfg, 0))
  seg = jnp.array([[1] * 12 + [2] * 20])
  ids = jax.random.randint(jax.random.key(2), (1, 32), 0, 256)
  ids2 = ids.at[0, :12].set((ids[0, :12] + 5) % 256)
  run = jax.jit(lambda ids: forward(graphdef, params, make_batch(ids, seg))[0])
  a, b = run(ids), run(ids2)
  np.testing.assert_allclose(a[0, 12:], b[0, 12:], atol=1e-5)
  assert not np.allclose(a[0, :12], b[0, :12])


@pytest.mark.parametrize("stages", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_every_gradient_is_finite_and_nonzero(stages):
  """Including the router's: it learns through the dechunk smoothing, the confidence STE and the ratio loss."""
  cfg = hnet_config(stages)
  graphdef, params = split_model(build_model(cfg, 0))
  rng = np.random.default_rng(0)
  text = b"def f(x):\n    return x * 2 + 1\nclass A:\n    pass\n" * 4
  ids = np.stack([np.frombuffer(text[i : i + 32], np.uint8) for i in (0, 17, 40, 61)]).astype(np.int32)
  seg = np.ones_like(ids)
  seg[1, 20:] = 2
  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), static_argnums=1)
  (loss, metrics), grads = grad_fn(params, graphdef, make_batch(ids, seg))
  assert np.isfinite(float(loss))
  bad = [
    jax.tree_util.keystr(p)
    for p, g in jax.tree_util.tree_leaves_with_path(grads)
    if not np.isfinite(g).all() or not np.any(g)
  ]
  assert not bad, f"zero or non-finite gradients: {bad}"
  for s in range(stages):
    assert f"bytes_per_chunk_s{s}" in metrics and f"ratio_loss_s{s}" in metrics
  del rng


@pytest.mark.slow  # CI budget: the default suite stays under 15 minutes on 2 cores
def test_ratio_loss_pulls_the_boundary_rate_down():
  """With only the ratio loss, gradient steps on the router lower the boundary rate towards 1/N."""
  cfg = hnet_config(1, "model.target_ratio=[4]")
  graphdef, params = split_model(build_model(cfg, 0))
  ids = jax.random.randint(jax.random.key(3), (2, 32), 0, 256)
  batch = make_batch(ids, jnp.ones_like(ids))

  def ratio_only(p):
    _, m = loss_fn(p, graphdef, batch)
    return m["ratio_loss"], m

  (_, m0), g = jax.jit(jax.value_and_grad(ratio_only, has_aux=True))(params)
  params = jax.tree.map(lambda p, g: p - 2.0 * g, params, g)
  _, m1 = jax.jit(ratio_only)(params)
  assert float(m1["mean_p_s0"]) < float(m0["mean_p_s0"])


@pytest.mark.parametrize("kind,confidence", [("hnet", 0.0), ("hinge", 0.2)])
def test_loss_is_nll_plus_weighted_ratio_losses_plus_router_losses(kind, confidence):
  """The training step's loss, assembled from the stage records by hand: stage 0 (cosine router, learnable p) adds
  its ratio loss (under hinge only while F > 1/N) and the confidence term, stage 1 (gumbel router) none but its own
  prior loss."""
  cfg = hnet_config(
    2,
    "model.router=[cosine, gumbel]",
    "model.ratio_loss_weight=0.5",
    f"model.ratio_loss={kind}",
    f"model.confidence_loss_weight={confidence}",
    "model.target_ratio=[1.5, 2]",
  )  # F <= 1/N
  graphdef, params = split_model(build_model(cfg, 0))
  ids = jax.random.randint(jax.random.key(4), (2, 32), 0, 256)
  seg = jnp.array([[1] * 12 + [2] * 20, [1] * 28 + [0] * 4])
  batch, rng = make_batch(ids, seg), jax.random.key(5)
  loss, metrics = jax.jit(loss_fn, static_argnums=1)(params, graphdef, batch, rng)
  logits, stages = jax.jit(lambda p: forward(graphdef, p, batch, train=True, rng=rng))(params)
  assert len(stages) == 2 and [st.learnable_p for st in stages] == [True, False]
  logp = np.asarray(jax.nn.log_softmax(logits), np.float64)
  mask = np.asarray(seg > 0)
  nll = -np.take_along_axis(logp, np.asarray(batch["targets"])[..., None], -1)[..., 0][mask].mean()
  s0, s1 = stages
  assert float(s0.positions) == mask.sum() and float(s0.boundaries) == np.asarray(s0.boundaries_BxL)[mask].sum()
  assert float(s1.positions) == float(s0.kept)  # stage 1 runs on stage 0's kept chunks
  f, g, n = float(s0.boundaries) / float(s0.positions), float(s0.p_sum) / float(s0.positions), s0.target_ratio
  assert f <= 1 / n, "the hinge case should exercise the flat side"
  ratio0 = n / (n - 1) * ((n - 1) * f * g + (1 - f) * (1 - g)) * (kind == "hnet")
  p0 = np.asarray(s0.probs_BxL, np.float64)[mask]
  u0 = (4 * p0 * (1 - p0)).mean()
  assert float(s1.router_aux) != 0.0, "the test should exercise a router loss"
  extra = 0.5 * ratio0 + confidence * u0 + float(s1.router_aux)
  assert float(loss) == pytest.approx(nll + float(s0.router_aux) + extra, rel=1e-5)
  assert float(metrics["ratio_loss"]) == pytest.approx(extra, rel=1e-5)
  assert float(metrics["ratio_loss_s0"]) == pytest.approx(ratio0, rel=1e-5) and float(metrics["ratio_loss_s1"]) == 0
  assert float(metrics["uncertainty_s0"]) == pytest.approx(u0, rel=1e-5)


def test_hinge_ratio_loss_is_one_sided():
  """Under hinge the ratio loss and its gradient vanish while the router splits at most once per N positions."""

  def record(boundaries, p_sum, kind):
    return StageOutput(
      jnp.zeros((1, 1), bool),
      jnp.zeros((1, 1)),
      jnp.zeros((1, 1), jnp.int32),
      jnp.float32(60.0),
      jnp.float32(boundaries),
      jnp.float32(0.0),
      p_sum,
      jnp.float32(0.0),
      jnp.float32(0.0),
      learnable_p=True,
      target_ratio=6.0,
      ratio_loss_kind=kind,
    )

  for boundaries, active in ((20.0, True), (10.0, False), (6.0, False)):  # F = 1/3 > 1/6; F = 1/6; F = 1/10
    hnet = jax.value_and_grad(lambda g: record(boundaries, g, "hnet").ratio_loss())(jnp.float32(15.0))
    hinge = jax.value_and_grad(lambda g: record(boundaries, g, "hinge").ratio_loss())(jnp.float32(15.0))
    assert float(hnet[0]) > 0.5 and (boundaries == 10.0 or abs(float(hnet[1])) > 1e-4)  # at F = 1/N it is flat
    assert (float(hinge[0]), float(hinge[1])) == ((float(hnet[0]), float(hnet[1])) if active else (0.0, 0.0))


def test_lr_multipliers_follow_the_paper_and_the_levels():
  big = tiny_config(
    "model.layout=[m4, [T1m4, [T27], m4T1], m4]",
    "model.d_model=[1024, 1536, 2048]",
    "model.n_heads=16",
    "model.target_ratio=[3, 3]",
    "data.seq_len=8192",
  )
  assert paper_lr_multipliers(big.model) == pytest.approx((3.03, 1.43, 0.715), abs=0.01)
  cfg = hnet_config(2)
  _, params = split_model(build_model(cfg, 0))
  levels = {jax.tree_util.keystr(p): level_of(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  assert all(v == 0 for k, v in levels.items() if "embed" in k or "head" in k or "encoder" in k.split("main")[0])
  assert any(v == 2 for v in levels.values()) and any(v == 1 for v in levels.values())
  mult = jax.tree_util.tree_map_with_path(lambda p, _: level_multiplier(p, (3.0, 2.0, 1.0)), params)
  flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mult)}
  assert {flat[k] for k in flat if "'main']['main']" in k} == {1.0}


@pytest.mark.parametrize(
  "override, message",
  [
    ("model.target_ratio=[1.0]", "target compression N must be > 1"),
    ("model.capacity=[3]", "stage 0 holds 3 chunks, fewer than the 8 documents"),
    ("model.d_model=[48, 32]", "inner width 32 \\(level 1\\) is smaller than outer width 48"),
    ("model.layout=[m1, [Q2], m1]", "cannot parse layer string 'Q2'"),
    ("model.target_ratio=[2, 2]", "1 routing stage\\(s\\), got 2 values"),
  ],
)
def test_configs_that_cannot_work_fail_at_load(override, message):
  with pytest.raises(ConfigError, match=message):
    hnet_config(1, override)


def test_routing_loss_settings_are_checked():
  with pytest.raises(ConfigError, match="model.ratio_loss: 'nope' is not one of hnet, hinge"):
    hnet_config(1, "model.ratio_loss=nope")
  with pytest.raises(ConfigError, match="must be >= 0"):
    hnet_config(1, "model.confidence_loss_weight=-1")


@pytest.mark.slow  # CI budget: .ci/run runs both
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_chunk_ops_move_rows_in_the_compute_dtype_and_the_residual_stays_float32(dtype, monkeypatch):
  from chunklm.kernels import api
  from chunklm.model import chunking

  seen = []
  for name in ("downsample", "upsample", "ema_scan"):
    real = getattr(api, name)
    spy = lambda x, *a, real=real, name=name, **k: (seen.append((name, x.dtype)), real(x, *a, **k))[1]
    monkeypatch.setattr(api, name, spy)
  dechunked = []
  real_dechunk = chunking.dechunk
  monkeypatch.setattr(chunking, "dechunk", lambda *a, **k: dechunked.append(real_dechunk(*a, **k)) or dechunked[-1])
  cfg = tiny_config(*HNET1, f"model.dtype={dtype}")
  graphdef, params = split_model(build_model(cfg, 0))
  batch = {"ids": jnp.zeros((1, 16), jnp.int32), "segment_ids": jnp.ones((1, 16), jnp.int32)}
  batch["positions"] = jnp.arange(16)[None]
  logits, _ = forward(graphdef, params, batch)
  assert {name for name, _ in seen} == {"downsample", "upsample", "ema_scan"}
  assert all(d == jnp.dtype(dtype) for _, d in seen), seen
  assert dechunked[0].dtype == jnp.float32 and bool(jnp.isfinite(logits).all())  # y = dechunk * STE + W_res x_hat
