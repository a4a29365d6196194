"""Generation with caches: step-by-step logits equal the full forward for every model kind (across chunk
boundaries and stages), and cached sampling equals recomputing the whole window."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chunklm.data.pipeline import BOS
from chunklm.errors import UserError
from chunklm.eval.generate import check_sampling, eos_id, generate_many, padded_length, sample_logits, stop_list
from chunklm.model import cache
from chunklm.model.functional import forward, split_model
from chunklm.model.lm import build_model
from conftest import tiny_config
from test_hnet import HNET1, HNET2

MAMBA = ["model.layout=[m1M1]", "model.mamba.d_state=8", "model.mamba.head_dim=16", "model.mamba.chunk_size=8"]
KINDS = {"transformer": [], "windowed": ["model.window=5"], "mamba": MAMBA, "hnet1": HNET1, "hnet2": HNET2}


def step_all(graphdef, params, ids_BxL):
  @jax.jit
  def run(params):
    model = nnx.merge(graphdef, params)
    state = cache.lm_init(model, ids_BxL.shape[0], ids_BxL.shape[1])

    def body(state, i):
      logits, state, bounds = cache.lm_step(model, ids_BxL[:, i], state)
      return state, (logits, bounds)

    state, (logits, bounds) = jax.lax.scan(body, state, jnp.arange(ids_BxL.shape[1]))
    return logits.swapaxes(0, 1), {k: v.T for k, v in bounds.items()}, state

  return run(params)


@pytest.mark.parametrize(
  "kind", [pytest.param(k, marks=pytest.mark.slow) if k == "hnet2" else k for k in sorted(KINDS)]
)
def test_steps_equal_the_full_forward(kind):
  cfg = tiny_config(*KINDS[kind])
  graphdef, params = split_model(build_model(cfg, 0))
  length = 28
  ids = jax.random.randint(jax.random.key(7), (2, length), 0, 256).at[:, 0].set(BOS)
  batch = {
    "ids": ids,
    "segment_ids": jnp.ones((2, length), jnp.int32),
    "positions": jnp.broadcast_to(jnp.arange(length), (2, length)),
  }
  full, stages = jax.jit(lambda p: forward(graphdef, p, batch, exact=True))(params)
  stepped, bounds, state = step_all(graphdef, params, ids)
  np.testing.assert_allclose(stepped, full, atol=2e-5)
  if kind.startswith("hnet"):
    b0 = np.asarray(bounds[0])
    np.testing.assert_array_equal(b0, np.asarray(stages[0].boundaries_BxL))
    assert 0 < b0.sum() < b0.size, "the test should cross chunk boundaries"
    main = state["main"]
    if kind == "hnet2":  # stage 1 sees one position per stage-0 chunk; its own main one per stage-1 chunk
      assert np.asarray(bounds[1]).sum() > 0
      main = main["main"]
      b0 = np.asarray(bounds[1])
    kv = next(c for c in main if isinstance(c, cache.KVCache))  # the main network advanced once per chunk
    np.testing.assert_array_equal(np.asarray(kv.length_B), b0.sum(axis=1))


def recompute_greedy(graphdef, params, prompt, n, seq_len=64):
  """Reference: the whole window recomputed for every new byte."""
  ids = [BOS] + list(prompt)
  for _ in range(n):
    arr = np.zeros((1, seq_len), np.int32)
    arr[0, : len(ids)] = ids
    batch = {
      "ids": arr,
      "segment_ids": (np.arange(seq_len) < len(ids)).astype(np.int32)[None],
      "positions": np.arange(seq_len)[None],
    }
    logits, _ = forward(graphdef, params, batch, exact=True)
    ids.append(int(jnp.argmax(logits[0, len(ids) - 1])))
  out = bytes(ids[1 + len(prompt) :])
  return out.split(bytes([BOS]))[0]  # a generated BOS ends the document


@pytest.mark.parametrize(
  "kind", ["transformer", pytest.param("hnet1", marks=pytest.mark.slow), pytest.param("hnet2", marks=pytest.mark.slow)]
)
def test_cached_greedy_equals_recompute_and_batches_are_independent(kind):
  cfg = tiny_config(*KINDS[kind])
  graphdef, params = split_model(build_model(cfg, 0))
  prompts = [b"def f(x):", b"x", b"class Foo(object):\n  "]
  together = generate_many(graphdef, params, prompts, max_new_bytes=12, temperature=0.0)
  alone = [generate_many(graphdef, params, [p], max_new_bytes=12, temperature=0.0)[0] for p in prompts]
  assert together == alone
  assert together[0] == recompute_greedy(graphdef, params, prompts[0], 12)


@pytest.mark.slow  # CI budget: the default suite stays under 15 minutes on 2 cores
def test_sampling_controls():
  logits = jnp.array([0.0, 3.0, 1.0, 2.5])
  keys = jax.random.split(jax.random.key(0), 200)

  def draw(temperature, top_p, top_k=0):
    ids = jax.jit(jax.vmap(sample_logits, (None, 0, None, None, None)), static_argnums=4)(
      logits, keys, temperature, top_p, top_k
    )
    return set(np.asarray(ids).tolist())

  assert draw(temperature=jnp.float32(0.0), top_p=jnp.float32(1.0)) == {1}
  assert draw(temperature=jnp.float32(1.0), top_p=jnp.float32(1.0), top_k=2) == {1, 3}
  assert draw(temperature=jnp.float32(1.0), top_p=jnp.float32(0.5)) == {1}
  assert len(draw(temperature=jnp.float32(1.0), top_p=jnp.float32(1.0))) == 4
  assert draw(temperature=jnp.float32(1.0), top_p=jnp.float32(0.8)) == {1, 3}  # 0.55 + 0.33 reaches 0.8
  rng = np.random.default_rng(0)
  for top_p in (0.3, 0.9, 0.99):  # the nucleus by bisection = by sorting
    logits_V = jnp.asarray(rng.normal(size=256) * 3, jnp.float32)
    probs = np.asarray(jax.nn.softmax(logits_V), np.float64)
    order = np.argsort(-probs)
    want = set(order[: int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1].tolist())
    ids = jax.jit(jax.vmap(sample_logits, (None, 0, None, None)))(
      logits_V, jax.random.split(jax.random.key(1), 4000), jnp.float32(1.0), jnp.float32(top_p)
    )
    assert set(np.asarray(ids).tolist()) <= want and len(set(np.asarray(ids).tolist())) > len(want) // 2
  cfg = tiny_config()
  graphdef, params = split_model(build_model(cfg, 0))
  a = generate_many(graphdef, params, [b"ab"], max_new_bytes=30, temperature=1.0, seed=3)[0]
  assert a == generate_many(graphdef, params, [b"ab"], max_new_bytes=30, temperature=1.0, seed=3)[0]
  assert len(a) <= 30
  stops = bytes(sorted(set(a)))[:3]
  cut = generate_many(graphdef, params, [b"ab"], max_new_bytes=30, temperature=1.0, seed=3, stop=stops)[0]
  assert not set(cut) & set(stops) and a.startswith(cut)


@pytest.mark.slow  # CI budget: the default suite stays under 15 minutes on 2 cores
def test_bench_generate_and_python_api(tmp_path, corpus_dir, capsys):
  import chunklm
  from chunklm.cli import main
  from conftest import TINY

  sets = [a for o in TINY + ["train.steps=2", "eval.sample_bytes=0"] for a in ("--set", o)]
  wd = tmp_path / "t"
  assert (
    main(
      [
        "train",
        "--config",
        "byte_transformer_tiny",
        "--no-progress",
        "--data",
        str(corpus_dir),
        "--workdir",
        str(wd),
        *sets,
      ]
    )
    == 0
  )
  capsys.readouterr()
  assert main(["bench", "generate", "--workdir", str(wd), "--batch", "1,2", "--units", "8", "--repeats", "1"]) == 0
  out = capsys.readouterr().out
  assert "| t | bytes | 1 |" in out and "| t | bytes | 2 |" in out
  one = chunklm.generate(wd, "def ", max_bytes=10, temperature=0.0)
  many = chunklm.generate(wd, ["def ", "x"], max_bytes=10, temperature=0.0)
  assert isinstance(one, bytes) and many[0] == one and len(many) == 2


@pytest.mark.parametrize("rows", [[], [5], [0, 7], [1, 2, 3], list(range(8))])
def test_run_rows_matches_masking_every_row(rows):
  """The main network's row scheduling (no group, one gathered group of 2 rows, or several) computes what running
  every row with the others masked computes, and leaves the other rows' state untouched."""
  update = jnp.zeros(8, bool).at[jnp.asarray(rows, jnp.int32)].set(True)
  x = jax.random.normal(jax.random.key(0), (8, 3))
  state = {"h": jax.random.normal(jax.random.key(1), (8, 3)), "n": jnp.arange(8)}

  def step(x, state, upd):
    y = jnp.tanh(x + state["h"])
    new = {"h": jnp.where(upd[:, None], y, state["h"]), "n": state["n"] + upd}
    return jnp.where(upd[:, None], y, 0.0), new, {1: upd & (y[:, 0] > 0)}

  y, new, inner = jax.jit(lambda x, s, u: cache.run_rows(step, x, s, u, [1]))(x, state, update)
  y_ref, new_ref, inner_ref = step(x, state, update)
  np.testing.assert_array_equal(y, y_ref)
  jax.tree.map(np.testing.assert_array_equal, new, new_ref)
  np.testing.assert_array_equal(inner[1], inner_ref[1])
  assert cache.compact_rows(8) == 2


@pytest.fixture(scope="module")
def tiny_transformer():
  return split_model(build_model(tiny_config(), 0))


def test_stop_strings_end_of_sequence_and_bounds(tiny_transformer):
  """One compiled loop for all of these (lengths padded, stop ids padded, a top-k past the vocabulary = all ids):
  a continuation ends before the EOS id or the first stop string to occur; a prompt longer than the model's window
  and empty work are answered without running the model."""
  graphdef, params = tiny_transformer

  def gen(**kw):  # sampled: the same draws with any stop, so each cut is a prefix of the full continuation
    return generate_many(graphdef, params, [b"ab"], max_new_bytes=24, temperature=1.0, seed=1, **kw)[0]

  full = gen()
  assert len(full) == 24
  assert gen(eos=full[5]) == full[: full.index(full[5])]
  two = full[7:9]
  assert gen(stop=[b"\x00\x01", two]) == full[: full.index(two)] and gen(stop=two) == gen(stop=[two])
  assert gen(top_k=10**6) == full
  with pytest.raises(UserError, match="a prompt has 70 bytes; this model reads documents of up to 63 bytes"):
    generate_many(graphdef, params, [b"x" * 70], max_new_bytes=4, max_prompt=63)
  assert generate_many(graphdef, params, [b"ab", b"c"], max_new_bytes=0) == [b"", b""]


def test_sampling_settings_and_lengths():
  assert [padded_length(n) for n in (1, 64, 65, 97, 129, 200, 257, 100_001)] == [64, 64, 96, 128, 192, 256, 384, 131072]
  ok = {"max_bytes": 10, "temperature": 0.8, "top_k": 0, "top_p": 0.95}
  check_sampling(**ok)
  for bad, message in (
    ({"top_p": 0.0}, r"--top-p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"--top-p must be in \(0, 1\]"),
    ({"temperature": -1.0}, "--temperature must be >= 0"),
    ({"temperature": float("nan")}, "--temperature must be a finite number"),
    ({"top_k": -1}, "--top-k must be >= 0"),
    ({"max_bytes": 0}, "--max-bytes must be between 1 and 1,048,576"),
    ({"max_bytes": 10**9}, "--max-bytes must be between 1 and 1,048,576"),
    ({"max_bytes": 2.5}, "--max-bytes must be an int"),
  ):
    with pytest.raises(UserError, match=message):
      check_sampling(**{**ok, **bad}, flags=True)
  with pytest.raises(TypeError, match="generate: top_k must be an int, got str"):
    check_sampling(**{**ok, "top_k": "5"})
  assert stop_list("\n") == [b"\n"] and stop_list(["a", b"bc", ""]) == [b"a", b"bc"]
  assert eos_id(tiny_config()) is None and eos_id(SimpleNamespace(model=SimpleNamespace(compat="official"))) == 0xFF
