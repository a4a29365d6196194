"""A test-only reference of the official H-Net forward (goombalab/hnet `HNetForCausalLM`), in plain PyTorch on the
official parameter names, written from the official modules' equations (no mamba_ssm / flash-attn: a sequential
Mamba2 recurrence, masked softmax attention). One document per row, as the official padded mode computes it.

`official_state_dict(config, seed)` (numpy only) draws every tensor of an official model with the shapes the official
modules create, so the converter's shape logic is checked against an independent statement of them.
"""

from __future__ import annotations

import math
import re

import numpy as np


def _layers(spec: str) -> list[str]:
  return [k for k, n in re.findall(r"([mMtT])(\d+)", spec) for _ in range(int(n))]


def _stage_layout(js: dict, stage: int):
  layout = js["arch_layout"]
  for _ in range(stage):
    layout = layout[1]
  return layout


def official_state_dict(js: dict, seed: int = 0, shapes_only: bool = False) -> dict:
  """Random float32 tensors for every parameter of the official model of `js` (values spread so that a swapped
  or transposed tensor changes the output); with shapes_only, {name: shape} without drawing anything."""
  rng = np.random.default_rng(seed)
  ssm = js["ssm_cfg"]
  out: dict = {}

  def normal(name, shape, std):
    shape = tuple(np.atleast_1d(shape)) if not isinstance(shape, tuple) else shape
    out[name] = shape if shapes_only else (std * rng.standard_normal(shape)).astype(np.float32)

  def around_one(name, n):
    out[name] = (n,) if shapes_only else (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

  def isotropic(prefix, spec, s):
    d = js["d_model"][s]
    for i, kind in enumerate(_layers(spec)):
      p = f"{prefix}.layers.{i}"
      around_one(f"{p}.norm1.weight", d)
      if kind in "tT":
        normal(f"{p}.mixer.Wqkv.weight", (3 * d, d), 0.1)
        normal(f"{p}.mixer.out_proj.weight", (d, d), 0.05)
      else:
        d_inner, n = ssm["expand"] * d, ssm["d_state"]
        heads = d_inner // 64
        normal(f"{p}.mixer.in_proj.weight", (2 * d_inner + 2 * n + heads, d), 0.1)
        normal(f"{p}.mixer.conv1d.weight", (d_inner + 2 * n, 1, ssm["d_conv"]), 0.4)
        normal(f"{p}.mixer.conv1d.bias", (d_inner + 2 * n,), 0.1)
        out[f"{p}.mixer.dt_bias"] = (
          (heads,) if shapes_only else np.log(np.expm1(rng.uniform(1e-3, 1e-1, heads))).astype(np.float32)
        )
        out[f"{p}.mixer.A_log"] = (heads,) if shapes_only else np.log(rng.uniform(1, 16, heads)).astype(np.float32)
        around_one(f"{p}.mixer.D", heads)
        around_one(f"{p}.mixer.norm.weight", d_inner)
        normal(f"{p}.mixer.out_proj.weight", (d, d_inner), 0.05)
      if kind.isupper():
        f = -(-js["d_intermediate"][s] // 128) * 128
        around_one(f"{p}.norm2.weight", d)
        normal(f"{p}.mlp.fc1.weight", (2 * f, d), 0.1)
        normal(f"{p}.mlp.fc2.weight", (d, f), 0.05)
    around_one(f"{prefix}.rmsnorm.weight", d)

  def hnet(prefix, s):
    layout, d = _stage_layout(js, s), js["d_model"][s]
    if s > 0 and d > js["d_model"][s - 1]:
      normal(f"{prefix}.pad_dimension", (d - js["d_model"][s - 1],), 0.5)
    if len(layout) == 1:
      isotropic(f"{prefix}.main_network", layout[0], s)
      return
    isotropic(f"{prefix}.encoder", layout[0], s)
    isotropic(f"{prefix}.decoder", layout[2], s)
    for proj in ("q_proj_layer", "k_proj_layer"):  # identity plus noise: boundaries neither all nor none
      out[f"{prefix}.routing_module.{proj}.weight"] = (
        (d, d) if shapes_only else (np.eye(d) + 0.3 * rng.standard_normal((d, d))).astype(np.float32)
      )
    normal(f"{prefix}.residual_proj.weight", (d, d), 0.05)
    normal(f"{prefix}.residual_proj.bias", (d,), 0.1)
    hnet(f"{prefix}.main_network", s + 1)

  normal("embeddings.weight", (js["vocab_size"], js["d_model"][0]), 1.0)
  normal("lm_head.weight", (js["vocab_size"], js["d_model"][0]), 0.05)
  hnet("backbone", 0)
  return out


class Reference:
  """forward(ids (L,) int) -> (logits (L, V), [(p, b) per stage, outermost first]) in float32 torch. bf16=False
  skips the dechunk's bfloat16 roundings (everything else unchanged)."""

  def __init__(self, state: dict, js: dict, bf16: bool = True):
    import torch

    self.torch = torch
    self.w = {k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in state.items()}
    self.js = js
    self.bf16 = bf16

  def rmsnorm(self, x, w):
    return x * self.torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5) * w

  def mamba2(self, p, x):
    t, F = self.torch, self.torch.nn.functional
    ssm = self.js["ssm_cfg"]
    length, d = x.shape
    d_inner, n = ssm["expand"] * d, ssm["d_state"]
    heads = d_inner // 64
    zxbcdt = x @ self.w[f"{p}.in_proj.weight"].T
    z, xbc, dt = zxbcdt[:, :d_inner], zxbcdt[:, d_inner : 2 * d_inner + 2 * n], zxbcdt[:, 2 * d_inner + 2 * n :]
    conv_w = self.w[f"{p}.conv1d.weight"]
    xbc = F.conv1d(xbc.T[None], conv_w, self.w[f"{p}.conv1d.bias"], padding=conv_w.shape[-1] - 1, groups=xbc.shape[1])[
      0, :, :length
    ].T
    xbc = F.silu(xbc)
    xs, bs, cs = xbc[:, :d_inner].reshape(length, heads, 64), xbc[:, d_inner : d_inner + n], xbc[:, d_inner + n :]
    dt = F.softplus(dt + self.w[f"{p}.dt_bias"])
    a = -t.exp(self.w[f"{p}.A_log"])
    h = t.zeros(heads, 64, n)
    ys = []
    for i in range(length):
      h = t.exp(dt[i] * a)[:, None, None] * h + (dt[i][:, None, None] * xs[i][:, :, None] * bs[i][None, None, :])
      ys.append((h * cs[i][None, None, :]).sum(-1) + self.w[f"{p}.D"][:, None] * xs[i])
    y = t.stack(ys).reshape(length, d_inner) * F.silu(z)
    return self.rmsnorm(y, self.w[f"{p}.norm.weight"]) @ self.w[f"{p}.out_proj.weight"].T

  def attention(self, p, x, s):
    t = self.torch
    length, d = x.shape
    heads = self.js["attn_cfg"]["num_heads"][s]
    rot, window = self.js["attn_cfg"]["rotary_emb_dim"][s], self.js["attn_cfg"]["window_size"][s]
    k_dim = d // heads
    qkv = (x @ self.w[f"{p}.Wqkv.weight"].T).reshape(length, 3, heads, k_dim)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    if rot:
      inv_freq = 1.0 / (10000.0 ** (t.arange(0, rot, 2, dtype=t.float32) / rot))
      ang = t.arange(length, dtype=t.float32)[:, None] * inv_freq[None]
      cos, sin = t.cat([ang.cos(), ang.cos()], -1)[:, None], t.cat([ang.sin(), ang.sin()], -1)[:, None]

      def rotate(u):
        r, rest = u[..., :rot], u[..., rot:]
        half = rot // 2
        return t.cat([r * cos + t.cat([-r[..., half:], r[..., :half]], -1) * sin, rest], -1)

      q, k = rotate(q), rotate(k)
    scores = t.einsum("qhk,shk->hqs", q, k) / math.sqrt(k_dim)
    i, j = t.arange(length)[:, None], t.arange(length)[None]
    allowed = (j <= i) & ((i - j <= window) if window >= 0 else t.ones_like(j <= i))
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    out = t.einsum("hqs,shk->qhk", scores.softmax(-1), v).reshape(length, d)
    return out @ self.w[f"{p}.out_proj.weight"].T

  def isotropic(self, prefix, spec, x, s):
    F = self.torch.nn.functional
    for i, kind in enumerate(_layers(spec)):
      p = f"{prefix}.layers.{i}"
      h = self.rmsnorm(x, self.w[f"{p}.norm1.weight"])
      x = x + (self.attention(f"{p}.mixer", h, s) if kind in "tT" else self.mamba2(f"{p}.mixer", h))
      if kind.isupper():
        h = self.rmsnorm(x, self.w[f"{p}.norm2.weight"]) @ self.w[f"{p}.mlp.fc1.weight"].T
        y, gate = h.chunk(2, dim=-1)
        x = x + (F.silu(gate) * y) @ self.w[f"{p}.mlp.fc2.weight"].T
    return self.rmsnorm(x, self.w[f"{prefix}.rmsnorm.weight"])

  def hnet(self, prefix, x, s, stages):
    t, F = self.torch, self.torch.nn.functional
    d_in = x.shape[-1]
    if f"{prefix}.pad_dimension" in self.w:
      x = t.cat([x, self.w[f"{prefix}.pad_dimension"].expand(x.shape[0], -1)], -1)
    layout = _stage_layout(self.js, s)
    if len(layout) == 1:
      return self.isotropic(f"{prefix}.main_network", layout[0], x, s)[:, :d_in]
    h = self.isotropic(f"{prefix}.encoder", layout[0], x, s)
    residual = h @ self.w[f"{prefix}.residual_proj.weight"].T + self.w[f"{prefix}.residual_proj.bias"]
    q = F.normalize(h[:-1] @ self.w[f"{prefix}.routing_module.q_proj_layer.weight"].T, dim=-1)
    k = F.normalize(h[1:] @ self.w[f"{prefix}.routing_module.k_proj_layer.weight"].T, dim=-1)
    p = F.pad(t.clamp((1 - (q * k).sum(-1)) / 2, 0.0, 1.0), (1, 0), value=1.0)
    b = p > 0.5  # argmax over (1 - p, p): a tie is not a boundary
    stages.append((p, b))
    z = self.hnet(f"{prefix}.main_network", h[b], s + 1, stages)
    # dechunk: the official EMA through Mamba2's scan kernel in bfloat16 (dt, x, B rounded; state in float32)
    pc = t.clamp(p, 1e-4, 1 - 1e-4)[b]
    bf16 = (lambda v: v.to(t.bfloat16).to(t.float32)) if self.bf16 else (lambda v: v)
    dt = bf16(t.log(1 / (1 - pc)))
    xs, bs = bf16(z / dt[:, None]), bf16(pc)
    state, outs = t.zeros(z.shape[-1]), []
    for c in range(z.shape[0]):
      state = t.exp(-dt[c]) * state + dt[c] * bs[c] * xs[c]
      outs.append(state)
    zbar = bf16(t.stack(outs))
    up = zbar[t.cumsum(b.long(), 0) - 1]
    y = up * 1.0 + residual  # the confidence STE is exactly 1 in the forward pass
    return self.isotropic(f"{prefix}.decoder", layout[2], y, s)[:, :d_in]

  def forward(self, ids: np.ndarray):
    t = self.torch
    with t.no_grad():
      x = self.w["embeddings.weight"][t.as_tensor(np.asarray(ids), dtype=t.long)]
      stages: list = []
      h = self.hnet("backbone", x, 0, stages)
      return (h @ self.w["lm_head.weight"].T).numpy(), [(p.numpy(), b.numpy()) for p, b in stages]
