"""The mesh: parameter placement rules, and a sharded training run on 8 CPU devices equal to a 1-device run."""

import subprocess
import sys
import textwrap

import pytest
from jax.sharding import PartitionSpec as P

from chunklm.config import MeshConfig
from chunklm.errors import ConfigError
from chunklm.train import sharding


class FakeMesh:
  shape = {"data": 2, "fsdp": 2, "tensor": 2}


def test_spec_rules_drop_axes_that_do_not_divide_or_repeat():
  m = FakeMesh()
  assert sharding.spec_for(("embed", "mlp"), (64, 128), m) == P("fsdp", "tensor")
  assert sharding.spec_for(("embed", "mlp"), (63, 128), m) == P(None, "tensor")
  assert sharding.spec_for(("embed", None, "heads", "kv"), (64, 3, 4, 16), m) == P("fsdp", None, "tensor", None)
  assert sharding.spec_for(("heads", "mlp"), (4, 8), m) == P("tensor", None)  # tensor used once only
  assert sharding.spec_for(("norm",), (64,), m) == P(None)


def test_mesh_must_match_devices():
  with pytest.raises(ConfigError, match="does not match the 1 available device"):
    sharding.make_mesh(MeshConfig(data=2))
  assert sharding.make_mesh(MeshConfig()).shape == {"data": 1, "fsdp": 1, "tensor": 1}


SCRIPT = textwrap.dedent("""
    import jax, sys, json
    jax.config.update("jax_num_cpu_devices", 8)
    sys.path.insert(0, "tests")
    from conftest import tiny_config, write_corpus
    from pathlib import Path
    from chunklm.run.metrics import read_jsonl
    from chunklm.train import trainer
    root = Path(sys.argv[1])
    corpus = write_corpus(root / "corpus")
    out = {}
    for name, mesh in [("one", ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"]),
                       ("eight", ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])]:
      devices = jax.devices()[:1] if name == "one" else jax.devices()
      cfg = tiny_config("train.steps=6", "train.batch_size=8", "model.n_heads=2", *mesh, data=corpus)
      if name == "one":
        import chunklm.train.sharding as sh
        real = sh.make_mesh
        trainer.make_mesh = lambda c: real(c, devices)
      else:
        import chunklm.train.sharding as sh
        trainer.make_mesh = sh.make_mesh
      res = trainer.train(cfg, root / name, progress=False, log=lambda *a, **k: None)
      out[name] = {"losses": [r["loss"] for r in read_jsonl(root / name / "metrics.jsonl") if r["split"] == "train"],
                   "bpb": res.valid["bpb"]}
    print(json.dumps(out))
""")


def test_sharded_training_matches_single_device(tmp_path):
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["one"]["losses"] == pytest.approx(out["eight"]["losses"], rel=2e-4)
  assert out["one"]["bpb"] == pytest.approx(out["eight"]["bpb"], rel=2e-4)
