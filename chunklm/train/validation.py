"""The evaluations a training run makes: exact bits per byte on the first `max_bytes` bytes of the valid split (the
same text for byte and token models), on the run's mesh."""

from __future__ import annotations

import math

from jax.sharding import Mesh

from chunklm.data.corpus import Documents
from chunklm.data.pipeline import leading_bytes
from chunklm.data.tokenizer import tokenize
from chunklm.eval.bpb import combine, evaluate, make_eval_step
from chunklm.train.plan import RunPlan
from chunklm.train.sharding import batch_shards, local_rows, on_mesh, process_count, put_batch


class Validation:
  """`validation(params, max_bytes)` -> evaluate()'s result dict; the documents of each `max_bytes` are cut (and
  tokenized) once. With a mixture (`data.mixture`) each source's valid split is evaluated on its first `max_bytes`
  and the result is all of them together, with each source's bits per byte under "sources"."""

  def __init__(self, plan: RunPlan, graphdef, mesh: Mesh):
    self.plan, self.mesh = plan, mesh
    self.eval_fn = on_mesh(make_eval_step(graphdef), mesh)
    unit = math.lcm(batch_shards(mesh), process_count(mesh))  # every process holds whole rows of every shard
    self.batch_size = -(-plan.cfg.eval.batch_size // unit) * unit
    self.docs: dict[tuple[int, int], Documents] = {}

  def __call__(self, params, max_bytes: int, progress: bool = False) -> dict:
    p = self.plan
    results = [
      evaluate(
        self.eval_fn,
        params,
        self._docs(i, max_bytes),
        p.cfg.data.seq_len,
        self.batch_size,
        progress=progress,
        desc=f"eval {part.name}" if part.name else "eval",
        put=lambda batch: put_batch(local_rows(batch), self.mesh),
        **p.vocab,
      )
      for i, part in enumerate(p.data.parts)
    ]
    if len(results) == 1:
      return results[0]
    return {**combine(results), "sources": {part.name: r["bpb"] for part, r in zip(p.data.parts, results)}}

  def _docs(self, part: int, max_bytes: int) -> Documents:
    if (part, max_bytes) not in self.docs:
      valid = self.plan.data.parts[part].valid
      docs = leading_bytes(valid, max_bytes)
      if docs.num_bytes == valid.num_bytes:
        docs = self.plan.valid_units[part]
      elif self.plan.tokenizer is not None:
        docs = tokenize(docs, self.plan.tokenizer)
      self.docs[part, max_bytes] = docs
    return self.docs[part, max_bytes]


def valid_record(res: dict) -> dict:
  """What metrics.jsonl keeps of an evaluation."""
  out = {"bpb": res["bpb"], "bytes": res["bytes"], "predicted": res["predicted"]}
  out.update({k: v for k, v in res.items() if k.startswith(("bytes_per_chunk", "bytes_per_position"))})
  if "sources" in res:
    out["sources"] = res["sources"]
  return out
