"""Three untrained tiny runs of each model kind (H-Net, byte Transformer, BPE Transformer) with a 64-byte window,
for the scoring and harness tests: written as parameters-only runs, so no training is needed."""

from __future__ import annotations

import numpy as np

import chunklm
from chunklm.config import load_config
from chunklm.data.corpus import Documents
from chunklm.data.tokenizer import train_tokenizer
from chunklm.model.functional import split_model
from chunklm.model.lm import build_model
from chunklm.run.imported import write_params_run

SEQ = 64
WORDS = "the cat sat on a mat and then it ran off to see what the dog had found under an old red tree".split()


def text_of(n_words: int, seed: int) -> str:
  rng = np.random.default_rng(seed)
  return " ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), n_words)) + ".\n"


def _run(root, name: str, config: str, *sets: str, tokenizer: bytes | None = None):
  cfg = load_config(config, [f"data.seq_len={SEQ}", *sets])
  _, params = split_model(build_model(cfg, seed=3))
  return write_params_run(root / name, cfg, params, 0, {"what": "test"}, tokenizer_bytes=tokenizer)


def make_models(root) -> dict:
  """{"hnet", "bytes", "bpe": chunklm.Model} written under `root`."""
  text = "".join(text_of(40, s) for s in range(60)).encode()
  docs = Documents(np.frombuffer(text, np.uint8), np.array([0]), np.array([len(text)]), ("t",))
  tok = train_tokenizer(docs, 300, root / "t.model", log=lambda *a: None)
  return {
    "hnet": chunklm.load(_run(root, "hnet", "hnet_1stage_tiny")),
    "bytes": chunklm.load(_run(root, "bytes", "byte_transformer_tiny")),
    "bpe": chunklm.load(
      _run(
        root,
        "bpe",
        "bpe_transformer_tiny",
        "model.vocab_size=300",
        f"data.tokenizer={root / 't.model'}",
        tokenizer=tok.path.read_bytes(),
      )
    ),
  }
