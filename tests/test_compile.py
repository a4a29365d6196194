"""`chunklm bench compile`: the collective counter on HLO text, the abstract state and batch, clear errors, and (with
the tpu extra, libtpu) the real thing: hnet_1stage_S with the Pallas TPU kernels compiled for two small slices."""

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

HLO = """
%all-reduce-scatter.3 (input: f32[128,580]) -> f32[32,580] {
  %input = f32[128,580]{1,0:T(8,128)} parameter(0)
  %all-reduce.133 = f32[128,580]{1,0:T(8,128)} all-reduce(%input), channel_id=39, replica_groups={{0,1,2,3}}
  ROOT %dynamic-slice.496 = f32[32,580]{1,0} dynamic-slice(%all-reduce.133, %m, %c), dynamic_slice_sizes={32,580}
}

ENTRY %main.249_spmd (param: f32[32,580]) -> f32[] {
  %ag = bf16[1024,256]{1,0} all-gather(bf16[256,256]{1,0} %p), channel_id=1, dimensions={0}
  %ags = (bf16[64,256]{1,0}, bf16[256,256]{1,0}) all-gather-start(bf16[64,256]{1,0} %q), channel_id=2
  %agd = bf16[256,256]{1,0} all-gather-done(%ags)
  %ar = (f32[]{:T(128)}, f32[4,64]{1,0:T(4,128)}) all-reduce(%a, %b), channel_id=5, to_apply=%add
  %f = f32[32,580]{1,0} fusion(%x), kind=kCustom, calls=%all-reduce-scatter.3
  ROOT %r = f32[] reduce(%f, %z), dimensions={0,1}, to_apply=%add
}
"""


def test_collectives_are_counted_with_their_bytes_and_the_tpu_reduce_scatter_fusion():
  c = bc.count_collectives(HLO)
  assert c["all-gather"] == {"count": 2, "bytes": 2 * 1024 * 256 + 2 * 256 * 256, "max_bytes": 2 * 1024 * 256}
  assert c["reduce-scatter"] == {"count": 1, "bytes": 4 * 32 * 580, "max_bytes": 4 * 32 * 580}
  assert c["all-reduce"] == {"count": 1, "bytes": 4 + 4 * 4 * 64, "max_bytes": 4 + 4 * 4 * 64}
  assert c["all-to-all"]["count"] == c["collective-permute"]["count"] == 0


def test_abstract_state_allocates_nothing_and_matches_the_real_one():
  cfg = load_config("hnet_1stage_tiny", ["model.d_model=[32,48]", "model.n_heads=[2,2]", "model.mamba.head_dim=16"])
  _, _, abstract, n_abstract = setup_state(cfg, abstract=True)
  _, _, real, n_real = setup_state(cfg)
  assert n_abstract == n_real
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
  assert jax.tree.structure(abstract) == jax.tree.structure(real)
  assert [(x.shape, x.dtype) for x in jax.tree.leaves(abstract)] == \
      [(np.shape(x), x.dtype) for x in jax.tree.leaves(real)]


def test_abstract_batch_has_the_pipelines_fields():
  cfg = load_config(None, TINY)
  batch = bc.abstract_batch(cfg, None)
  assert set(batch) == {"ids", "targets", "segment_ids", "positions", "loss_mask", "target_bytes"}
  assert batch["ids"].shape == (cfg.train.batch_size, cfg.data.seq_len) and batch["ids"].dtype == np.uint8


def test_bad_topologies_are_one_line_errors():
  with pytest.raises(UserError, match="expected KIND:SHAPE"):
    bc.topology_devices("v5p-64")
  with pytest.raises(UserError, match="cannot describe it here"):
    bc.topology_devices("gpu:8")  # no GPU plugin on the test machines


@pytest.mark.skipif(HAS_LIBTPU, reason="checks the message shown without the tpu extra")
def test_without_libtpu_the_command_says_which_extra_to_install():
  proc = subprocess.run([sys.executable, "-m", "chunklm.cli", "bench", "compile", "--config", "hnet_1stage_tiny",
                         "--topology", "v5p:2x2x1"], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "chunklm: error: chunklm bench compile needs libtpu for TPU topologies: pip install 'chunklm[tpu]' (~700 MB)"]


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs the tpu extra (libtpu) to compile for TPU topologies")
@pytest.mark.parametrize("topology,mesh", [("v5e:2x2", ["mesh.data=4"]), ("v5p:2x2x1", ["mesh.data=1", "mesh.fsdp=4"])])
def test_hnet_S_with_pallas_kernels_compiles_for_small_tpu_slices(topology, mesh):
  cfg = load_config("hnet_1stage_S", ["kernels.impl=pallas", "train.batch_size=8", *mesh])
  r = bc.compile_step(cfg, topology)
  assert r.memory["peak"] < r.hbm_bytes
  assert r.flops_per_chip > 0.5 * r.nominal_flops_per_chip
  if "mesh.fsdp=4" in mesh:  # FSDP: weights gathered, gradients reduce-scattered
    assert r.collectives["all-gather"]["count"] > 0 and r.collectives["reduce-scatter"]["count"] > 0

