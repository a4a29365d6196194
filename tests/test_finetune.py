"""Fine-tuning: a run started from another run's parameters (--init-from), frozen parts, per-part learning rates."""

import jax
import numpy as np
import pytest

from chunklm.cli import main
from chunklm.config import load_config
from chunklm.errors import CheckpointError, ConfigError
from chunklm.run.trained import abstract_params, open_run
from chunklm.train import trainer
from chunklm.train.init_from import check_compatible, load_init, params_sha256
from chunklm.train.parts import count_frozen, frozen_mask, matches, named_parts, names_of
from conftest import tiny_config, write_corpus

QUIET = dict(progress=False, log=lambda *a, **k: None)
SMALL = ["train.checkpoint_every=2"]  # on conftest's tiny byte Transformer (compiles in seconds)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def source(tmp_path_factory, corpus):
  """A trained tiny run, the source of the fine-tuning runs."""
  run = tmp_path_factory.mktemp("ft") / "source"
  trainer.train(tiny_config(*SMALL, "train.steps=2", data=corpus), run, **QUIET)
  return run


@pytest.mark.parametrize(
  "config, stages",
  [("hnet_1stage_tiny", 1), ("hnet_2stage_tiny", 2), ("byte_transformer_tiny", 0), ("hnet_2stage_tiny compat", 2)],
)
def test_named_parts_own_every_parameter_exactly_once(config, stages):
  name, _, compat = config.partition(" ")
  cfg = load_config(name, ["model.compat=official"] if compat else [])
  params = abstract_params(cfg)[1]
  parts = named_parts(cfg.model)
  expected = {"embed", "head", "main"} | {
    f"{k}.s{s}" for k in ("encoder", "decoder", "router", "residual") for s in range(stages)
  }
  assert set(parts) == expected
  owners = {n: [p for p in parts if matches(n, p, parts)] for n in names_of(params)}
  assert all(len(v) == 1 for v in owners.values()), {n: v for n, v in owners.items() if len(v) != 1}
  inner = "backbone." + "main." * stages
  assert all(
    o == ["main"]
    for n, o in owners.items()
    if n.startswith(inner)
    and "router" not in n[len(inner) :]
    and not n[len(inner) :].startswith(("encoder.", "decoder.", "residual_proj.", "residual_bias", "pad"))
  )
  if compat:
    assert sorted(o for n, o in owners.items() if n.endswith("residual_bias")) == [["residual.s0"], ["residual.s1"]]


def test_init_from_is_exact_freezing_keeps_parts_and_resume_is_exact(source, corpus, tmp_path):
  src = open_run(source, log=lambda *a, **k: None)
  params, init = load_init(str(source), tiny_config(*SMALL, data=corpus), src.params, None)
  jax.tree.map(np.testing.assert_array_equal, params, src.params)  # bit-identical at step 0
  assert init.step == 2 and init.sha256 == params_sha256(src.params)
  cfg = tiny_config(
    *SMALL,
    "train.steps=4",
    "train.freeze=[main]",
    "train.lr_scale={head: 0.1}",
    f"train.init_from={source}",
    "model.init_std=0.5",
    data=corpus,
  )
  stopped = trainer.train(cfg, tmp_path / "ft", stop_after=2, **QUIET)
  assert stopped.step == 2 and not stopped.finished
  resumed = trainer.train(cfg, tmp_path / "ft", **QUIET)  # re-run: resumes, does not initialise again
  straight = trainer.train(cfg, tmp_path / "straight", **QUIET)
  jax.tree.map(np.testing.assert_array_equal, resumed.run.params, straight.run.params)
  frozen = frozen_mask(src.params, cfg.model, cfg.train.freeze)
  for name, was, now, f in zip(
    names_of(src.params), jax.tree.leaves(src.params), jax.tree.leaves(resumed.run.params), jax.tree.leaves(frozen)
  ):
    if f:
      np.testing.assert_array_equal(now, was, err_msg=name)
  assert any(
    not f and not np.array_equal(now, was)
    for was, now, f in zip(jax.tree.leaves(src.params), jax.tree.leaves(resumed.run.params), jax.tree.leaves(frozen))
  )
  header = (tmp_path / "ft" / "config.yaml").read_text()
  assert f"# init_from: {source} (step 2, parameters sha256 {init.sha256[:16]})" in header  # kept on resume
  trained, n_frozen = count_frozen(src.params, cfg.model, cfg.train.freeze)
  assert trained > 0 and n_frozen > 0


def test_info_counts_trained_and_frozen(source, capsys):
  assert main(["info", "--workdir", str(source), "--set", "train.freeze=[main]", "--params"]) == 0
  out = capsys.readouterr().out
  assert "trained / frozen    :" in out and "(train.freeze ['main'])" in out
  rows = [line.split() for line in out.splitlines() if line.startswith("    ")]
  assert any(r[0].startswith("backbone.blocks.") and r[-2:] == ["main", "frozen"] for r in rows)
  assert any(r[0].startswith("head.") and r[-1] == "head" for r in rows)


@pytest.mark.parametrize(
  "case, error, message",
  [
    (["model.d_model=[48]"], CheckpointError, r"model\.d_model is \[32\] there and \[48\] here"),
    (["train.freeze=[encoder.s7]"], ConfigError, r"train\.freeze: 'encoder\.s7' matches no parameter; named parts"),
    (['train.freeze=["*"]'], ConfigError, r"selects every parameter"),
    (["train.lr_scale={mian: 2}"], ConfigError, r"train\.lr_scale: 'mian' matches no parameter"),
  ],
)
def test_bad_fine_tuning_settings_are_one_line(source, corpus, tmp_path, case, error, message):
  cfg = tiny_config(*SMALL, *case, f"train.init_from={source}", data=corpus)
  with pytest.raises(error, match=message):
    trainer.train(cfg, tmp_path / "ft", **QUIET)
  assert not (tmp_path / "ft" / "checkpoints").exists()


def test_bad_sources_are_one_line(source, corpus, tmp_path):
  cfg = tiny_config(*SMALL, data=corpus)
  abstract = open_run(source, log=lambda *a, **k: None).params
  with pytest.raises(CheckpointError, match="no such run directory"):
    load_init(str(tmp_path / "nothing"), cfg, abstract, None)
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="is an empty directory; this takes a language-model run"):
    load_init(str(tmp_path / "empty"), cfg, abstract, None)
  with pytest.raises(CheckpointError, match=r"no checkpoint of step 7; it has steps \[2\]"):
    load_init(str(source / "checkpoints" / "7"), cfg, abstract, None)
  params, init = load_init(str(source / "checkpoints" / "2"), cfg, abstract, None)  # one checkpoint by path
  assert init.step == 2
  with pytest.raises(CheckpointError, match="reads bytes, this run its tokenizer"):
    check_compatible("runs/x", cfg, cfg, b"a tokenizer", None)
  with pytest.raises(CheckpointError, match="reads another tokenizer"):
    check_compatible("runs/x", cfg, cfg, b"one tokenizer", b"another")


def test_grad_norm_is_over_the_trained_parameters(source, corpus):
  """With train.freeze the reported grad_norm leaves the frozen parameters' gradients out."""
  from chunklm.bench.timing import real_batches
  from chunklm.train.step import loss_fn, train_step
  from chunklm.train.trainer import setup_state

  cfg = tiny_config(*SMALL, "train.freeze=[main, embed]", data=corpus)
  graphdef, tx, state, _ = setup_state(cfg)
  batch = real_batches(cfg, 1)[0]
  frozen = frozen_mask(state["params"], cfg.model, cfg.train.freeze)
  grads = jax.grad(lambda p: loss_fn(p, graphdef, batch, jax.random.key(0))[0])(state["params"])
  trained = [g for g, f in zip(jax.tree.leaves(grads), jax.tree.leaves(frozen)) if not f]
  _, metrics = jax.jit(lambda s, b: train_step(graphdef, tx, s, b, frozen=frozen))(state, batch)
  _, unmasked = jax.jit(lambda s, b: train_step(graphdef, tx, s, b))(state, batch)
  want = np.sqrt(sum(float(np.sum(np.square(g))) for g in trained))
  np.testing.assert_allclose(float(metrics["grad_norm"]), want, rtol=1e-4)
  assert float(unmasked["grad_norm"]) > float(metrics["grad_norm"])
