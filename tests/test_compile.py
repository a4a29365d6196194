"""`chunklm bench compile`: the collective counter on HLO text, the abstract state and batch, clear errors, and (with
the tpu extra, libtpu) the real thing: hnet_1stage_S with the Pallas TPU kernels compiled for two small slices."""

import importlib.util
import subprocess
import sys

import jax
import numpy as np
import pytest

from chunklm.bench import compile as bc
from chunklm.bench.hlo import count_collectives
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
  c = count_collectives(HLO)
  plain = lambda n, total, largest: {"count": n, "bytes": total, "max_bytes": largest, "as_all_reduce": 0}
  assert c["all-gather"] == plain(2, 2 * 1024 * 256 + 2 * 256 * 256, 2 * 1024 * 256)
  assert c["reduce-scatter"] == plain(1, 4 * 32 * 580, 4 * 32 * 580)
  assert c["all-reduce"] == plain(2, 4 + 4 * 4 * 64, 4 * 4 * 64)  # one op combining two tensors counts two
  assert c["all-to-all"]["count"] == c["collective-permute"]["count"] == 0


# Over a whole v5p:4x4x4 torus the TPU compiler writes FSDP's all-gather and reduce-scatter as all-reduces (cut down
# from a real compile of a shard_map all_gather over 64 chips); the loss's own sum stays an all-reduce.
WHOLE_TORUS_HLO = """
%fused_computation.9 (param_0.17: f32[4096,1024], param_1.18: f32[64,1024], param_2.11: u32[]) -> f32[4096,1024] {
  ROOT %dynamic-update-slice.1 = f32[4096,1024]{1,0:T(8,128)} dynamic-update-slice(%param_0.17, %param_1.18, %c)
}

%fused_computation.8 (param_0.16: f32[4096,1024], param_1.17: u32[]) -> f32[64,1024] {
  ROOT %dynamic-slice.1 = f32[64,1024]{1,0:T(8,128)} dynamic-slice(%param_0.16, %param_1.17, %c), dynamic_slice_sizes={64,1024}
}

%fused_computation.7 (param_0: f32[64,64], param_1: f32[4096,64]) -> f32[64,64] {
  %param_0 = f32[64,64]{1,0} parameter(0)
  %param_1 = f32[4096,64]{1,0} parameter(1)
  %ds = f32[64,64]{1,0} dynamic-slice(%param_1, %o, %c), dynamic_slice_sizes={64,64}
  ROOT %upd7 = f32[64,64]{1,0} add(%param_0, %ds)
}

ENTRY %main.4_spmd (param.7: f32[64,1024], param.6: f32[8,4096]) -> (f32[64,1024], f32[]) {
  %constant_dynamic-update-slice_fusion = f32[4096,1024]{1,0:T(8,128)} fusion(%broadcast.1, %copy-done.1, %multiply.3), kind=kLoop, calls=%fused_computation.9
  %all-reduce = bf16[4096,1024]{1,0:T(8,128)(2,1)} all-reduce(%constant_dynamic-update-slice_fusion), channel_id=1, replica_groups={{0,1,2,3}}, to_apply=%add
  %convolution_tanh_fusion = f32[8,1024]{1,0:T(8,128)} fusion(%copy-done, %all-reduce), kind=kOutput, calls=%fused_computation.2
  %all-reduce.1 = f32[4096,1024]{1,0:T(8,128)} all-reduce(%fusion), channel_id=2, replica_groups={{0,1,2,3}}, to_apply=%add
  %loss-start = f32[]{:T(128)} all-reduce-start(%partial), channel_id=3, replica_groups={{0,1,2,3}}, to_apply=%add
  %loss = f32[]{:T(128)} all-reduce-done(%loss-start)
  %log = f32[]{:T(128)} log(%loss)
  %constant_dynamic-slice_fusion = f32[64,1024]{1,0:T(8,128)} fusion(%all-reduce.1, %multiply.5), kind=kLoop, calls=%fused_computation.8
  %dus = bf16[256,1024]{1,0} dynamic-update-slice(%zeros, %shard, %i, %c)
  %cs = (bf16[256,1024]{1,0:S(1)}, bf16[256,1024]{1,0}, u32[]{:S(2)}) copy-start(%dus)
  %cd = bf16[256,1024]{1,0:S(1)} copy-done(%cs)
  %combined = (bf16[256,1024]{1,0}, f32[512]{0:T(512)}, f32[4096,64]{1,0}) all-reduce(%cd, %norm_grad, %grad), channel_id=4, to_apply=%add
  %gte0 = bf16[256,1024]{1,0} get-tuple-element(%combined), index=0
  %gte1 = f32[512]{0:T(512)} get-tuple-element(%combined), index=1
  %gte2 = f32[4096,64]{1,0} get-tuple-element(%combined), index=2
  %use0 = f32[8,1024]{1,0} fusion(%x, %gte0), kind=kOutput, calls=%fused_computation.2
  %upd = f32[512]{0:T(512)} add(%gte1, %p)
  %adam = f32[64,64]{1,0} fusion(%m, %gte2), kind=kLoop, calls=%fused_computation.7
  ROOT %out = (f32[64,1024]{1,0:T(8,128)}, f32[]{:T(128)}) tuple(%constant_dynamic-slice_fusion, %log)
}
"""


def test_gathers_and_scatters_the_compiler_lowers_through_an_all_reduce_count_as_what_they_do():
  c = count_collectives(WHOLE_TORUS_HLO)
  # and in an op the compiler combined over several tensors, each tensor counts as what it does (here: one gathered
  # weight moved between memory spaces first, one gradient sliced inside the optimizer's fusion, one real sum)
  gathered = 2 * 4096 * 1024 + 2 * 256 * 1024
  assert c["all-gather"] == {"count": 2, "bytes": gathered, "max_bytes": 2 * 4096 * 1024, "as_all_reduce": 2}
  scattered = 4 * 64 * 1024 + 4 * 64 * 64
  assert c["reduce-scatter"] == {"count": 2, "bytes": scattered, "max_bytes": 4 * 64 * 1024, "as_all_reduce": 2}
  assert c["all-reduce"] == {"count": 2, "bytes": 4 + 4 * 512, "max_bytes": 4 * 512, "as_all_reduce": 0}  # kept whole


# On a v5e 2-D torus the TPU compiler overlaps a weight's all-gather with compute as a chain: an all-gather op in
# the fusion that starts it, one in each continuation fusion, one in the fusion that ends it, each with the whole
# result and the same chain_id (cut down from a real compile of a byte Transformer for v5e:4x4, fsdp 16).
V5E_CHAIN_HLO = """
%fused_computation.450 (param_0.1365: bf16[64,2,2752]) -> (bf16[64,2,2752], bf16[1024,2,2752], s32[2], u32[]) {
  %param_0.1365 = bf16[64,2,2752]{2,0,1:T(8,128)(2,1)S(1)} parameter(0)
  %all-gather.47 = bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)} all-gather(%param_0.1365), channel_id=1, replica_groups={{0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}}, dimensions={0}, use_global_device_ids=true, frontend_attributes={chain_id="1"}, backend_config={"barrier_config":{"barrier_type":"CUSTOM","id":"0"},"async_collective_fusion_config":{"flag_start":"-1","flag_end":"-1"}}
  ROOT %custom-call.9 = (bf16[64,2,2752]{2,0,1:T(8,128)(2,1)S(1)}, bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)S(1)}, s32[2]{0:S(4)}, u32[]{:S(2)}) custom-call(%all-gather.47), custom_call_target="AsyncCollectiveStart"
}

%async_collective_fusion.283 (param_0.1368: bf16[64,2,2752], param_1.1: bf16[1024,2,2752], param_2.1: f32[4,256,1024]) -> (f32[4,256,1024], bf16[64,2,2752], bf16[1024,2,2752], bf16[1024,2,2752]) {
  %param_0.1368 = bf16[64,2,2752]{2,0,1:T(8,128)(2,1)S(1)} parameter(0)
  %param_1.1 = bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)S(1)} parameter(1)
  %all-gather.49 = bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)S(1)} all-gather(%param_0.1368), channel_id=1, replica_groups={{0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}}, dimensions={0}, use_global_device_ids=true, frontend_attributes={chain_id="1"}
  %add.7 = f32[4,256,1024]{2,1,0:T(8,128)} add(%param_2.1, %param_2.1)
  ROOT %tuple.178 = (f32[4,256,1024]{2,1,0:T(8,128)}, bf16[64,2,2752]{2,0,1:T(8,128)(2,1)S(1)}, bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)S(1)}, bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)S(1)}) tuple(%add.7, %param_0.1368, %param_1.1, %all-gather.49)
}

%fused_computation.454 (param_0.1387: bf16[64,2,2752], param_1.1733: bf16[1024,2,2752]) -> bf16[1024,2,2752] {
  %param_0.1387 = bf16[64,2,2752]{2,0,1:T(8,128)(2,1)S(1)} parameter(0)
  %param_1.1733 = bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)S(1)} parameter(1)
  %all-gather.55 = bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)} all-gather(%param_0.1387), channel_id=1, replica_groups={{0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}}, dimensions={0}, use_global_device_ids=true, frontend_attributes={chain_id="1"}
  ROOT %custom-call.11 = bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)S(1)} custom-call(%param_0.1387, %param_1.1733, %all-gather.55), custom_call_target="AsyncCollectiveDone"
}

%fused_computation.460 (param.53: f32[16,1024]) -> f32[256,1024] {
  %param.53 = f32[16,1024]{0,1:T(8,128)S(1)} parameter(0)
  ROOT %all-gather.96 = f32[256,1024]{0,1:T(8,128)S(1)} all-gather(%param.53), channel_id=1, replica_groups={{0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}}, dimensions={1}, use_global_device_ids=true, frontend_attributes={async_collective_name="all-gather-start"}
}

ENTRY %main.4_spmd (p0: bf16[64,2,2752], p1: f32[4,256,1024], p2: f32[16,1024]) -> (bf16[1024,2,2752], f32[256,1024]) {
  %async-collective-start.1 = (bf16[64,2,2752]{2,0,1:T(8,128)(2,1)S(1)}, bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)S(1)}, s32[2]{0:S(4)}, u32[]{:S(2)}) fusion(%p0), kind=kCustom, calls=%fused_computation.450
  %gte.1 = bf16[64,2,2752]{2,0,1:T(8,128)(2,1)S(1)} get-tuple-element(%async-collective-start.1), index=0
  %gte.2 = bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)S(1)} get-tuple-element(%async-collective-start.1), index=1
  %fusion.283 = (f32[4,256,1024]{2,1,0:T(8,128)}, bf16[64,2,2752]{2,0,1:T(8,128)(2,1)S(1)}, bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)S(1)}, bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)S(1)}) fusion(%gte.1, %gte.2, %p1), kind=kOutput, calls=%async_collective_fusion.283
  %gte.3 = bf16[64,2,2752]{2,0,1:T(8,128)(2,1)S(1)} get-tuple-element(%fusion.283), index=1
  %gte.4 = bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)S(1)} get-tuple-element(%fusion.283), index=3
  %async-collective-done.1 = bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)S(1)} fusion(%gte.3, %gte.4), kind=kCustom, calls=%fused_computation.454
  %fusion.460 = f32[256,1024]{0,1:T(8,128)S(1)} fusion(%p2), kind=kCustom, calls=%fused_computation.460
  ROOT %out = (bf16[1024,2,2752]{2,0,1:T(8,128)(2,1)S(1)}, f32[256,1024]{0,1:T(8,128)S(1)}) tuple(%async-collective-done.1, %fusion.460)
}
"""


def test_a_chained_all_gather_counts_once_beside_a_plain_one():
  c = count_collectives(V5E_CHAIN_HLO)
  chained, plain = 2 * 1024 * 2 * 2752, 4 * 256 * 1024  # the chain's 3 ops are one gathered tensor
  assert c["all-gather"] == {"count": 2, "bytes": chained + plain, "max_bytes": chained, "as_all_reduce": 0}
  assert sum(c[k]["count"] for k in ("reduce-scatter", "all-reduce", "all-to-all", "collective-permute")) == 0
  other_chain = V5E_CHAIN_HLO.replace('chain_id="1"}\n  ROOT %custom-call.11', 'chain_id="2"}\n  ROOT %custom-call.11')
  assert count_collectives(other_chain)["all-gather"]["count"] == 3  # another chain_id is another tensor


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
  if "mesh.fsdp=4" in mesh:  # FSDP: weights gathered, gradients reduce-scattered
    assert r.collectives["all-gather"]["count"] > 0 and r.collectives["reduce-scatter"]["count"] > 0
