"""What is shown of a trained run at a glance: a readable valid snippet, a generated sample, its chunk boundaries.

`show_bytes` renders any bytes as one readable string (invalid UTF-8 as replacement characters, control bytes
escaped); `snippet_of` picks a piece of the valid documents that starts at a definition or a paragraph.
"""

from __future__ import annotations

from chunklm.data.corpus import Documents
from chunklm.eval.boundaries import boundary_levels, picture
from chunklm.eval.generate import generate_run
from chunklm.model.cache import unsupported
from chunklm.run.trained import TrainedRun


def show_bytes(data: bytes) -> str:
  """Bytes as readable text: invalid UTF-8 shown with replacement characters, control bytes escaped."""
  text = data.decode("utf-8", errors="replace")
  return "".join(c if c.isprintable() or c in "\n\t" else f"\\x{ord(c):02x}" if ord(c) < 256 else c for c in text)


def snippet_of(docs: Documents, size: int = 96) -> bytes:
  """A readable piece of the first valid documents: from the first line starting a definition, if any."""
  for i in range(min(len(docs), 50)):
    text = docs.doc(i)
    for marker in (b"\ndef ", b"\nclass ", b"\n\n"):
      at = text.find(marker)
      if at >= 0:
        return text[at + 1 : at + 1 + size]
  return docs.doc(0)[:size]


def sample_and_picture(run: TrainedRun, valid: Documents) -> tuple[bytes, str, str]:
  """(prompt + sample, boundary picture, why there is no sample) of a run, as its `eval` settings ask: the sample
  continues `eval.sample_prompt` (or a valid snippet); the picture marks an H-Net's chunk starts on the snippet."""
  cfg = run.cfg
  snippet = snippet_of(valid)
  why_not = unsupported(run.model()) if cfg.eval.sample_bytes else ""
  sample = b""
  if cfg.eval.sample_bytes and not why_not:
    prompt = (cfg.eval.sample_prompt.encode() or snippet[:32])[-(cfg.data.seq_len - 1) :]  # what the model reads
    sample = (
      prompt
      + generate_run(
        run,
        [prompt],
        max_bytes=cfg.eval.sample_bytes,
        temperature=cfg.eval.temperature,
        top_p=cfg.eval.top_p,
        seed=cfg.train.seed,
      )[0]
    )
  pic = ""
  if cfg.model.num_stages:
    levels = boundary_levels(run.graphdef, run.params, snippet, cfg.model.num_stages, cfg.data.seq_len)
    pic = picture(snippet[: len(levels[0])], levels)
  return sample, pic, why_not
