"""chunklm: byte-level hierarchical language models (H-Net dynamic chunking) in JAX / Flax NNX."""


def load(workdir, overrides=()):
  """A trained, converted or imported run as a `chunklm.api.Model`: `m = chunklm.load("runs/default")`, then
  `m.score(texts)` (bits per byte), `m.generate(prompts, max_bytes=...)`, `m.boundaries(text)`, `m.config`,
  `m.params`."""
  # start-up: the package root stays light (importing chunklm.config must not load jax); lint-imports still sees it
  from chunklm.api import load as load_run

  return load_run(workdir, overrides)


def generate(workdir, prompts, **kwargs):
  """Continuations from a trained run: `chunklm.generate("runs/default", "def ", max_bytes=100, temperature=0.7)`.

  `prompts` is a str/bytes (returns bytes) or a list of them (returns a list, generated as one batch). Keyword
  arguments: max_bytes, temperature, top_k, top_p, stop (a string or a list of strings), seed, stop_at_eos (stop at
  the model's end-of-sequence id where it has one; default True).
  """
  # start-up: the package root stays light (importing chunklm.config must not load jax); lint-imports still sees it
  from chunklm.eval.generate import generate_from_workdir

  return generate_from_workdir(workdir, prompts, **kwargs)
