"""`chunklm bench compile`: the abstract state and batch, clear errors, and (with the tpu extra, libtpu) the real
thing: hnet_1stage_S with the Pallas TPU kernels compiled for two small slices. The HLO counters: tests/test_hlo.py."""

import importlib.util
import subprocess
import sys

import jax
import numpy as np
import pytest

from chunklm.bench import compile as bc
from chunklm.config import load_config
from chunklm.errors import UserError
from chunklm.train.trainer import setup_state
from conftest import TINY

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def test_abstract_state_allocates_nothing_and_matches_the_real_one():
  cfg = load_config("hnet_1stage_tiny", ["model.d_model=[32,48]", "model.n_heads=[2,2]", "model.mamba.head_dim=16"])
  _, _, abstract, n_abstract = setup_state(cfg, abstract=True)
  _, _, real, n_real = setup_state(cfg)
  assert n_abstract == n_real
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
  assert jax.tree.structure(abstract) == jax.tree.structure(real)
  assert [(x.shape, x.dtype) for x in jax.tree.leaves(abstract)] == [
    (np.shape(x), x.dtype) for x in jax.tree.leaves(real)
  ]


def test_abstract_batch_has_the_pipelines_fields():
  cfg = load_config(None, TINY)
  batch = bc.abstract_batch(cfg, None)
  assert set(batch) == {"ids", "targets", "segment_ids", "positions", "loss_mask", "target_bytes"}
  assert batch["ids"].shape == (cfg.train.batch_size, cfg.data.seq_len) and batch["ids"].dtype == np.uint8


def test_the_report_prints_bytes_and_the_kernels_beside_the_table_row(capsys):
  plain = {"count": 0, "bytes": 0, "max_bytes": 0, "as_all_reduce": 0}
  r = bc.CompileReport(
    topology="v5p:2x2x1",
    mesh={"data": 1, "fsdp": 4, "tensor": 1},
    processes=1,
    params=1000,
    lower_s=1.0,
    compile_s=2.0,
    memory={"arguments": 2**30, "temporaries": 2**30, "outputs": 0, "aliased": 0, "peak": 2**31},
    hbm_bytes=95 * bc.GIB,
    flops_per_chip=4e12,
    nominal_flops_per_chip=2e12,
    bytes_accessed_per_chip=4 * bc.GIB,
    code_bytes=2**20,
    collectives={
      k: dict(plain) for k in ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
    },
    custom_calls={"kernels": {"chunk_ema_scan": 1, "chunk_upsample": 2}, "other": {}},
    largest_param_bytes=2**20,
  )
  bc.print_report(r, "hnet_1stage_S", "pallas")
  lines = capsys.readouterr().out.splitlines()
  assert "bytes per chip   : 4.00 GiB accessed (XLA cost analysis): 931 FLOPs/byte" in lines
  assert "Pallas kernels   : 3 calls: chunk_ema_scan 1, chunk_upsample 2" in lines
  assert "other custom-call: none" in lines
  assert lines[-1].startswith("| hnet_1stage_S | pallas | v5p:2x2x1 |") and lines[-1].count("|") == 12  # the row


def test_bad_topologies_are_one_line_errors():
  with pytest.raises(UserError, match="expected KIND:SHAPE"):
    bc.topology_devices("v5p-64")
  with pytest.raises(UserError, match="cannot describe it here"):
    bc.topology_devices("gpu:8")  # no GPU plugin on the test machines


@pytest.mark.skipif(HAS_LIBTPU, reason="checks the message shown without the tpu extra")
def test_without_libtpu_the_command_says_which_extra_to_install():
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "chunklm.cli",
      "bench",
      "compile",
      "--config",
      "hnet_1stage_tiny",
      "--topology",
      "v5p:2x2x1",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
    "chunklm: error: chunklm bench compile needs libtpu for TPU topologies: pip install 'chunklm[tpu]' (~700 MB)"
  ]


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs the tpu extra (libtpu) to compile for TPU topologies")
@pytest.mark.parametrize("topology,mesh", [("v5e:2x2", ["mesh.data=4"]), ("v5p:2x2x1", ["mesh.data=1", "mesh.fsdp=4"])])
def test_hnet_S_with_pallas_kernels_compiles_for_small_tpu_slices(topology, mesh):
  cfg = load_config("hnet_1stage_S", ["kernels.impl=pallas", "train.batch_size=8", *mesh])
  r = bc.compile_step(cfg, topology)
  assert r.memory["peak"] < r.hbm_bytes
  assert r.flops_per_chip > 0.5 * r.nominal_flops_per_chip
  assert r.bytes_accessed_per_chip > r.memory["arguments"]  # the step reads at least its weights and state
  assert {"chunk_ema_scan", "chunk_ema_scan_bwd", "chunk_upsample"} <= set(r.custom_calls["kernels"])  # Mosaic
  if "mesh.fsdp=4" in mesh:  # FSDP: weights gathered, gradients reduce-scattered
    assert r.collectives["all-gather"]["count"] > 0 and r.collectives["reduce-scatter"]["count"] > 0
