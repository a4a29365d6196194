"""The HLO counters of `chunklm bench compile` (bench/hlo.py) on HLO cut from real TPU compiles: collectives by what
they do, custom-calls by kind with the Pallas kernels by name."""

from chunklm.bench.hlo import count_collectives, count_custom_calls

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


# The TPU compiler fuses a reduce-scatter with its slice, and may combine several tensors in one such fusion (cut down
# from hnet_1stage_S on v5p:2x2x2, data 2 x fsdp 4: two weights' gradients, each as blocks of this chip's shard).
COMBINED_FUSION_HLO = """
%all-reduce-scatter.15 (input_0.2: bf16[4,1152,128], input_1.2: bf16[4,3456,128]) -> (bf16[144,8,128], bf16[432,8,128]) {
  %input_0.2 = bf16[4,1152,128]{2,1,0:T(8,128)(2,1)S(1)} parameter(0)
  %bitcast.1633 = bf16[576,8,128]{2,1,0:T(8,128)(2,1)} bitcast(%input_0.2)
  %input_1.2 = bf16[4,3456,128]{2,1,0:T(8,128)(2,1)} parameter(1)
  %bitcast.1634 = bf16[1728,8,128]{2,1,0:T(8,128)(2,1)} bitcast(%input_1.2)
  %all-reduce.100 = (bf16[576,8,128]{2,1,0:T(8,128)(2,1)}, bf16[1728,8,128]{2,1,0:T(8,128)(2,1)}) all-reduce(%bitcast.1633, %bitcast.1634), channel_id=1, replica_groups={{0,1,2,3},{4,5,6,7}}, use_global_device_ids=true, to_apply=%region_94.126.clone
  %get-tuple-element.1932 = bf16[576,8,128]{2,1,0:T(8,128)(2,1)} get-tuple-element(%all-reduce.100), index=0
  %dynamic-slice.363 = bf16[144,8,128]{2,1,0:T(8,128)(2,1)} dynamic-slice(%get-tuple-element.1932, %multiply.522, %constant.3671, %constant.3671), dynamic_slice_sizes={144,8,128}
  %get-tuple-element.1933 = bf16[1728,8,128]{2,1,0:T(8,128)(2,1)} get-tuple-element(%all-reduce.100), index=1
  %dynamic-slice.364 = bf16[432,8,128]{2,1,0:T(8,128)(2,1)} dynamic-slice(%get-tuple-element.1933, %multiply.523, %constant.3671, %constant.3671), dynamic_slice_sizes={432,8,128}
  ROOT %tuple.448 = (bf16[144,8,128]{2,1,0:T(8,128)(2,1)}, bf16[432,8,128]{2,1,0:T(8,128)(2,1)}) tuple(%dynamic-slice.363, %dynamic-slice.364)
}

ENTRY %main.4_spmd (p0: bf16[4,1152,128], p1: bf16[4,3456,128]) -> (bf16[144,8,128], bf16[432,8,128]) {
  ROOT %fusion.732 = (bf16[144,8,128]{2,1,0:T(8,128)(2,1)}, bf16[432,8,128]{2,1,0:T(8,128)(2,1)}) fusion(%p0, %p1), kind=kCustom, calls=%all-reduce-scatter.15
}
"""


def test_a_reduce_scatter_fusion_over_several_tensors_counts_each():
  shards = [2 * 144 * 8 * 128, 2 * 432 * 8 * 128]
  expected = {"count": 2, "bytes": sum(shards), "max_bytes": max(shards), "as_all_reduce": 0}
  assert count_collectives(COMBINED_FUSION_HLO)["reduce-scatter"] == expected
  assert count_collectives(COMBINED_FUSION_HLO)["all-reduce"]["count"] == 0


# Custom-calls of hnet_2stage_S compiled for v5p:2x2x2 (the Mosaic kernels' serialized bodies cut short): XLA names a
# kernel's call after the kernel, and its metadata ends in ".../<kernel>/pallas_call"; the last kernel lost its
# metadata (as when a pass clones a call), so its instruction name says which it is.
CUSTOM_CALLS_HLO = """
%fused_computation.7 (param_0: s32[2048]) -> s32[2048] {
  %param_0 = s32[2048]{0:T(1024)} parameter(0)
  ROOT %custom-call.65 = s32[2048]{0:T(1024)} custom-call(%param_0), custom_call_target="AssumeGatherIndicesInBound", operand_layout_constraints={s32[2048]{0:T(1024)}}, metadata={op_name="jit(train_step)/jvp()/shard_map/jit(_take)/gather" stack_frame_id=246}
}

ENTRY %main.249_spmd (param: f32[1,2048,512]) -> f32[1,792,512] {
  %custom-call.18 = f32[1,16,64,64]{3,2,1,0:T(8,128)} custom-call(), custom_call_target="AllocateBuffer", backend_config={"flag_configs":[],"scoped_memory_configs":[]}
  %chunk_gather_rows.2 = f32[1,792,512]{2,1,0:T(8,128)} custom-call(%bitcast.136, %copy-done.1877, %multiply_multiply_fusion.8), custom_call_target="tpu_custom_call", operand_layout_constraints={s32[1]{0}, s32[1,1,792]{2,1,0}, f32[1,2048,512]{2,1,0}}, frontend_attributes={kernel_metadata={}}, metadata={op_name="jit(train_step)/jvp()/shard_map/jit(gather_rows)/chunk_gather_rows/pallas_call" stack_frame_id=1406}, backend_config={"flag_configs":[],"scoped_memory_configs":[],"custom_call_config":{"body":"TUzvUgFN","cost_estimate":{"flops":"0","transcendentals":"0","bytes_accessed":"3247200","remote_bytes_transferred":"0"},"needs_layout_passes":true}}
  %chunk_upsample.4 = f32[1,792,640]{2,1,0:T(8,128)} custom-call(%copy-done.2222, %copy-done.2194, %copy-done.2193, %copy-done.1139, %chunk_ema_scan.2), custom_call_target="tpu_custom_call", operand_layout_constraints={s32[1,4]{1,0}, s32[1,4]{1,0}, s32[1,4]{1,0}, s32[1,792,1]{2,1,0}, f32[1,292,640]{2,1,0}}, frontend_attributes={kernel_metadata={}}, metadata={op_name="jit(train_step)/jvp()/shard_map/jit(upsample)/chunk_upsample/pallas_call" stack_frame_id=1431}, backend_config={"flag_configs":[],"scoped_memory_configs":[],"custom_call_config":{"body":"TUzvUgFN"}}
  %chunk_ema_scan_bwd.2 = (f32[1,792,512]{2,1,0:T(8,128)}, f32[1,1,792,1]{3,2,1,0:T(8,128)}) custom-call(%chunk_segment_pool.2, %copy.4971, %copy-done.827, %copy-done.384, %copy-done.582, /*index=5*/%pad_bitcast_fusion.10), custom_call_target="tpu_custom_call", operand_layout_constraints={f32[1,792,512]{2,1,0}, f32[1,792,1]{2,1,0}, f32[1,792,1]{2,1,0}, f32[1,792,512]{2,1,0}, f32[1,792,512]{2,1,0}, f32[1,13,1,512]{3,2,1,0}}, frontend_attributes={kernel_metadata={}}, metadata={op_name="jit(train_step)/transpose(jvp())/shard_map/jit(ema_scan_bwd)/chunk_ema_scan_bwd/pallas_call" stack_frame_id=263}, backend_config={"flag_configs":[],"scoped_memory_configs":[],"custom_call_config":{"body":"TUzvUgFN"}}
  %chunk_upsample.7.clone = f32[1,2048,512]{2,1,0:T(8,128)} custom-call(%copy-done.2230, %copy-done.2231), custom_call_target="tpu_custom_call", backend_config={"flag_configs":[],"scoped_memory_configs":[],"custom_call_config":{"body":"TUzvUgFN"}}
  %fusion.9 = s32[2048]{0:T(1024)} fusion(%ids), kind=kLoop, calls=%fused_computation.7
  ROOT %prepare_start_scatter_offload_async_start = s32[]{:S(2)} custom-call(), custom_call_target="PrepareAsyncCallStart", backend_config={"flag_configs":[],"scoped_memory_configs":[]}
}
"""


def test_custom_calls_count_the_pallas_kernels_by_name_and_the_rest_by_target():
  assert count_custom_calls(CUSTOM_CALLS_HLO) == {
    "kernels": {"chunk_ema_scan_bwd": 1, "chunk_gather_rows": 1, "chunk_upsample": 2},
    "other": {"AllocateBuffer": 1, "AssumeGatherIndicesInBound": 1, "PrepareAsyncCallStart": 1},
  }
  assert count_custom_calls(HLO) == {"kernels": {}, "other": {}}  # no custom-call: none of either
  assert count_custom_calls(V5E_CHAIN_HLO)["other"] == {"AsyncCollectiveDone": 1, "AsyncCollectiveStart": 1}
