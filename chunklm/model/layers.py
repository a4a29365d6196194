"""Basic layers: parameters with logical axes, Linear, Embed, RMSNorm, SwiGLU MLP, RoPE attention with segment masks.

Logical axis names (mapped to mesh axes by `chunklm.mesh.rules`):
  vocab, embed (model width), embed_out (a second model-width axis of a square matrix), mlp (MLP hidden), heads,
  kv (head dim), ssm_inner, ssm_heads, ssm_state, conv, norm.
Parameters are float32; each layer computes in `dtype` (float32 or bfloat16) and norms/softmax run in float32.
Under a mesh with an `fsdp` axis, weight matrices are stored sharded and gathered where they are used (`with_weight`).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from chunklm.kernels import splash
from chunklm.mesh.context import gathered_apply, per_shard, platform

AttentionBackend = Literal["cudnn", "splash", "xla"]  # what attention_backend picks


def param(key: jax.Array | None, init, shape: tuple[int, ...], axes: tuple[str | None, ...]) -> nnx.Param:
  """A float32 parameter annotated with logical axis names (not sharded until a mesh rule places it). `key` is None
  for deterministic initialisers (constant, identity), which ignore it."""
  if len(axes) != len(shape):
    raise ValueError(f"axes {axes} do not match shape {shape}")
  return nnx.Param(init(key, shape, jnp.float32), out_sharding=axes, eager_sharding=False)


def with_weight(fn, x: jax.Array, var: nnx.Param, dtype=None) -> jax.Array:
  """fn(x, w) for the parameter `var` (cast to `dtype` first, so FSDP gathers the compute dtype): under a mesh with
  an `fsdp` axis the weight is gathered where it is used and its gradient reduce-scattered (`gathered_apply`)."""
  w = var[...] if dtype is None else var[...].astype(dtype)
  return gathered_apply(fn, x, w, var.get_metadata().get("out_sharding") or (None,) * w.ndim)


def normal(std: float):
  return lambda key, shape, dtype: std * jax.random.normal(key, shape, dtype)


def constant(value: float):
  return lambda key, shape, dtype: jnp.full(shape, value, dtype)


class Linear(nnx.Module):
  """y = x @ W (no bias); W has shape in_shape + out_shape so heads can stay a separate axis."""

  def __init__(
    self,
    in_dim: int,
    out_shape: tuple[int, ...],
    axes: tuple[str | None, ...],
    *,
    rngs: nnx.Rngs,
    std: float = 0.02,
    dtype=jnp.float32,
  ):
    self.kernel = param(rngs.params(), normal(std), (in_dim, *out_shape), axes)
    self.dtype = dtype

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    return with_weight(lambda x, w: jnp.tensordot(x, w, axes=1), x_BxLxD.astype(self.dtype), self.kernel, self.dtype)


class Embed(nnx.Module):
  def __init__(self, vocab: int, dim: int, *, rngs: nnx.Rngs, std: float = 1.0, dtype=jnp.float32):
    self.table = param(rngs.params(), normal(std), (vocab, dim), ("vocab", "embed"))
    self.dtype = dtype

  def __call__(self, ids_BxL: jax.Array) -> jax.Array:
    return with_weight(lambda ids, t: jnp.take(t, ids, axis=0), ids_BxL.astype(jnp.int32), self.table).astype(
      self.dtype
    )


class RMSNorm(nnx.Module):
  def __init__(self, dim: int, *, eps: float = 1e-5):
    self.scale = param(None, constant(1.0), (dim,), ("norm",))
    self.eps = eps

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    x = x_BxLxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    scale_1xD = self.scale[...].reshape((1,) * (x.ndim - 1) + self.scale.shape)  # any leading axes (B, L or B)
    return (x * scale_1xD).astype(x_BxLxD.dtype)


class SwiGLU(nnx.Module):
  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, std: float, out_std: float, dtype=jnp.float32):
    self.w_in = Linear(dim, (2, hidden), ("embed", None, "mlp"), rngs=rngs, std=std, dtype=dtype)
    self.w_out = Linear(hidden, (dim,), ("mlp", "embed"), rngs=rngs, std=out_std, dtype=dtype)

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    h_BxLx2xF = self.w_in(x_BxLxD)
    return self.w_out(jax.nn.silu(h_BxLx2xF[..., 0, :]) * h_BxLx2xF[..., 1, :])


def rope(x_BxLxHxK: jax.Array, positions_BxL: jax.Array, rotary_dim: int, theta: float) -> jax.Array:
  """Rotates the first `rotary_dim` dims of each head (split-half convention); the rest pass through."""
  if rotary_dim == 0:
    return x_BxLxHxK
  half = rotary_dim // 2
  freq_R = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_BxLx1xR = (positions_BxL.astype(jnp.float32)[..., None] * freq_R[None, None, :])[:, :, None, :]
  sin, cos = jnp.sin(angle_BxLx1xR), jnp.cos(angle_BxLx1xR)
  x = x_BxLxHxK.astype(jnp.float32)
  x1, x2, rest = x[..., :half], x[..., half:rotary_dim], x[..., rotary_dim:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)
  return out.astype(x_BxLxHxK.dtype)


def attention_mask(segment_ids_BxL: jax.Array, window: int = 0, rows: jax.Array | None = None) -> jax.Array:
  """mask_Bx1xQxL: causal, same document (segment), within `window` keys back when window > 0.

  `rows` selects the query positions (default: all L, so Q = L).
  """
  length = segment_ids_BxL.shape[1]
  q = (jnp.arange(length) if rows is None else rows)[:, None]
  k = jnp.arange(length)[None, :]
  allowed_QxL = k <= q
  if window:
    allowed_QxL &= q - k <= window
  q_seg_BxQ = segment_ids_BxL if rows is None else segment_ids_BxL[:, rows]
  same_BxQxL = q_seg_BxQ[:, :, None] == segment_ids_BxL[:, None, :]
  return (same_BxQxL & allowed_QxL[None])[:, None]


def attention_backend(impl: str, dtype, head_dim: int, length: int, has_key_bias: bool) -> AttentionBackend:
  """'cudnn', 'splash' or 'xla' for `kernels.attention` on the target platform (the traced mesh's, `platform()`).

  auto takes cuDNN's flash attention on a GPU when it applies (bfloat16/float16, head_dim a multiple of 8 up to 128,
  an even length, as cuDNN needs with a mask; no learned key bias: its gradient would be a full B x 1 x L x L bias
  gradient), and Splash attention (kernels/splash.py) on a TPU when it applies (no key bias: Splash has no bias
  input; head_dim up to splash.MAX_HEAD_DIM; length at least 128, as shorter ones would be padded to 128 for
  nothing), else XLA. An explicit 'cudnn' or 'splash' that does not apply is an error. Explicit 'splash' also runs
  on CPU, in the Pallas interpreter (for tests and debugging, as `kernels.impl=interpret` for the chunk ops)."""
  target = platform()
  splash_fits = not has_key_bias and head_dim <= splash.MAX_HEAD_DIM
  if impl == "splash":
    if not splash_fits or target not in ("tpu", "cpu"):
      raise ValueError(
        f"kernels.attention splash needs a TPU (or CPU, where it runs interpreted; the target is {target}), "
        f"head_dim up to {splash.MAX_HEAD_DIM} (got {head_dim}) and no key bias (delete_gate)"
      )
    return "splash"
  if impl == "auto" and target == "tpu":
    return "splash" if splash_fits and length >= splash.LANES else "xla"
  fits = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128 and length % 2 == 0
  if impl == "cudnn":
    if not fits or has_key_bias or target != "gpu":
      raise ValueError(
        f"kernels.attention cudnn needs a GPU, bfloat16 or float16 (got {jnp.dtype(dtype)}), "
        f"head_dim a multiple of 8 up to 128 (got {head_dim}), an even length (got {length}) and "
        "no key bias (delete_gate)"
      )
    return "cudnn"
  if impl == "auto" and fits and not has_key_bias and target == "gpu":
    return "cudnn"
  return "xla"


def fused_attention(
  q_BxLxHxK: jax.Array,
  k_BxLxHxK: jax.Array,
  v_BxLxHxK: jax.Array,
  segment_ids_BxL: jax.Array,
  window: int,
  implementation: Literal["cudnn", "xla"],
) -> jax.Array:
  """The attention of `masked_attention` in the form a fused kernel takes: causal mask and window as flags (so the
  kernel skips the masked blocks), only the document mask as an array (cuDNN adds it as a bias). With
  implementation 'xla' it runs anywhere, which is how the CPU tests check this form against the plain one."""
  same_doc_Bx1xLxL = (segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :])[:, None]
  return jax.nn.dot_product_attention(
    q_BxLxHxK,
    k_BxLxHxK,
    v_BxLxHxK,
    mask=same_doc_Bx1xLxL,
    scale=1.0 / math.sqrt(q_BxLxHxK.shape[-1]),
    is_causal=True,
    local_window_size=(window, 0) if window else None,
    implementation=implementation,
  )


def masked_attention(
  q_BxLxHxK: jax.Array,
  k_BxLxHxK: jax.Array,
  v_BxLxHxK: jax.Array,
  segment_ids_BxL: jax.Array,
  window: int,
  block: int = 0,
  key_bias_BxL: jax.Array | None = None,
  impl: str = "xla",
) -> jax.Array:
  """Softmax attention with the causal/document/window mask; with `block`, queries go `block` at a time (each block
  recomputed in the backward pass), so memory grows as block x L instead of L x L. `key_bias_BxL` is added to the
  logits of each key (every head and query). impl 'cudnn' (see attention_backend) runs cuDNN's flash attention with
  the causal mask and window as its own mask type and the document mask as an additive bias; impl 'splash' runs
  Splash attention (kernels/splash.py: causal mask and window static, documents as segment ids, no key bias),
  compiled on a TPU target and interpreted elsewhere, per device's rows under a mesh (`per_shard`: Pallas kernels
  cannot be partitioned automatically). `block` is moot for both (flash attention never holds L x L scores)."""
  length, head_dim = q_BxLxHxK.shape[1], q_BxLxHxK.shape[-1]
  scale = 1.0 / math.sqrt(head_dim)
  if impl == "cudnn":
    return fused_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segment_ids_BxL, window, "cudnn")
  if impl == "splash":
    if key_bias_BxL is not None:
      raise ValueError("attention impl 'splash' takes no key bias (delete_gate); use 'xla'")
    run = functools.partial(splash.splash_attention, window=window, interpret=platform() != "tpu")
    return per_shard(run, q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, segment_ids_BxL)
  bias = None if key_bias_BxL is None else key_bias_BxL.astype(q_BxLxHxK.dtype)[:, None, None, :]
  if not block or block >= length:
    mask = attention_mask(segment_ids_BxL, window)
    return jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, bias=bias, mask=mask, scale=scale)
  pad = -length % block
  q_pad = jnp.pad(q_BxLxHxK, ((0, 0), (0, pad), (0, 0), (0, 0)))
  blocks_NxBxQxHxK = q_pad.reshape(q_pad.shape[0], -1, block, *q_pad.shape[2:]).swapaxes(0, 1)

  @jax.checkpoint
  def one_block(args):
    q_BxQxHxK, i = args
    rows = jnp.minimum(i * block + jnp.arange(block), length - 1)  # padded rows repeat the last (then dropped)
    mask = attention_mask(segment_ids_BxL, window, rows)
    return jax.nn.dot_product_attention(q_BxQxHxK, k_BxLxHxK, v_BxLxHxK, bias=bias, mask=mask, scale=scale)

  out_NxBxQxHxK = jax.lax.map(one_block, (blocks_NxBxQxHxK, jnp.arange(blocks_NxBxQxHxK.shape[0])))
  out = out_NxBxQxHxK.swapaxes(0, 1).reshape(q_pad.shape)
  return out[:, :length]


class Attention(nnx.Module):
  """Multi-head causal self-attention with partial RoPE and document (segment) masking."""

  def __init__(
    self,
    dim: int,
    n_heads: int,
    *,
    rngs: nnx.Rngs,
    rotary_fraction: float,
    rope_theta: float,
    window: int,
    std: float,
    out_std: float,
    dtype=jnp.float32,
    block: int = 0,
    impl: str = "auto",
  ):
    head_dim = dim // n_heads
    self.n_heads, self.head_dim, self.window, self.rope_theta, self.block = n_heads, head_dim, window, rope_theta, block
    self.impl = impl
    self.rotary_dim = 2 * int(head_dim * rotary_fraction // 2)
    self.w_qkv = Linear(dim, (3, n_heads, head_dim), ("embed", None, "heads", "kv"), rngs=rngs, std=std, dtype=dtype)
    self.w_out = Linear(n_heads * head_dim, (dim,), ("heads", "embed"), rngs=rngs, std=out_std, dtype=dtype)

  def __call__(
    self,
    x_BxLxD: jax.Array,
    segment_ids_BxL: jax.Array,
    positions_BxL: jax.Array,
    key_bias_BxL: jax.Array | None = None,
  ) -> jax.Array:
    qkv_BxLx3xHxK = self.w_qkv(x_BxLxD)
    q, k, v = (qkv_BxLx3xHxK[:, :, i] for i in range(3))
    q = rope(q, positions_BxL, self.rotary_dim, self.rope_theta)
    k = rope(k, positions_BxL, self.rotary_dim, self.rope_theta)
    backend = attention_backend(self.impl, q.dtype, self.head_dim, q.shape[1], key_bias_BxL is not None)
    out_BxLxHxK = masked_attention(q, k, v, segment_ids_BxL, self.window, self.block, key_bias_BxL, backend)
    b, length = x_BxLxD.shape[:2]
    return self.w_out(out_BxLxHxK.reshape(b, length, -1))
