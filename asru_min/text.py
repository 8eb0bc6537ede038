"""Qwen3 text decoder used by Qwen3-VL (spec: docs QWEN3VL_SPEC.md §6).

h = embed(ids) (image rows already replaced by the glue model)
for each layer l:   h = h + o_proj(attn(RoPE(qnorm(q)), RoPE(knorm(k)), v))      (pre-norm, GQA, no biases)
                    h = h + down(SiLU(gate(B)) * up(B)),  B = RMS(h)
                    h[visual] += F_l            for the first K layers only (DeepStack, §6.4)
logits = RMS(h) W_lm^T   (the head lives in model.py)

`DecoderLayer.forward` returns the residual-stream tensor (B, L, D) itself, so a forward hook on
`layers[i]` reads or replaces it; DeepStack is added by `TextModel` *after* the layer (as in the reference).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 4096  # D
    intermediate_size: int = 12288
    num_hidden_layers: int = 36
    num_attention_heads: int = 32  # nq
    num_key_value_heads: int = 8  # nkv
    head_dim: int = 128  # d: read from the config, never D/nq (§10)
    max_position_embeddings: int = 262144
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5_000_000.0
    mrope_section: list[int] = field(default_factory=lambda: [24, 20, 20])
    mrope_interleaved: bool = True
    hidden_act: str = "silu"
    attention_bias: bool = False  # always false for Qwen3-VL; kept so config.json round-trips
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151645
    pad_token_id: int | None = None


class RMSNorm(nn.Module):
    """y = w * cast(x / sqrt(mean(x^2) + eps)): statistics in fp32, weight multiply after the cast (§6.1)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm without a weight is x / sqrt(mean(x^2) + eps) in one call; .float()/.to() are no-ops in fp32
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x' = x * cos(Theta) + rot(x) * sin(Theta), rot([x1, x2]) = [-x2, x1] (half-split pairs k, k + d/2).
    Written as x * cos + roll(x, d/2) * [-sin, sin]: roll gives [x2, x1] in one op and the sign lives in the
    precomputed sin_signed (negation is exact, so the result is bit-identical to the rotate_half form)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


def mrope_axis(head_dim: int, mrope_section: list[int]) -> torch.Tensor:
    """Which position axis (0=T, 1=H, 2=W) drives each of the d/2 frequency slots (interleaved MRoPE, §6.3):
    slot j -> H if j%3==1 and j < 3*s_h;  W if j%3==2 and j < 3*s_w;  else T."""
    j = torch.arange(head_dim // 2)
    axis = torch.zeros_like(j)
    axis[(j % 3 == 1) & (j < 3 * mrope_section[1])] = 1
    axis[(j % 3 == 2) & (j < 3 * mrope_section[2])] = 2
    return axis


def mrope_cos_sin(pos: torch.Tensor, cfg: TextConfig, dtype: torch.dtype):
    """pos (3, B, L) -> cos(Theta), [-sin(phi), sin(phi)] (B, 1, L, d) for `apply_rope`.
    phi_j = p_{axis(j)} * theta^(-2j/d), Theta = [phi, phi]; computed in fp32 and cast to the activation dtype
    (as the reference does). pos (B, L) means T = H = W (text tokens, e.g. decode steps): plain 1-D RoPE."""
    d = cfg.head_dim
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, d, 2, device=pos.device, dtype=torch.float32) / d)  # (d/2,)
    if pos.dim() == 2:
        p = pos.float()[..., None]  # (B, L, 1), broadcast over the d/2 slots
    else:
        p = pos.float().permute(1, 2, 0)[..., mrope_axis(d, cfg.mrope_section).to(pos.device)]  # (B, L, d/2)
    phi = p * inv
    cos, sin = phi.cos().to(dtype), phi.sin().to(dtype)
    return torch.cat([cos, cos], dim=-1)[:, None], torch.cat([-sin, sin], dim=-1)[:, None]  # (B, 1, L, d)


class KVCache:
    """Preallocated keys/values for every layer: k[l], v[l] are (B, nkv, max_len, d); a forward of T new
    tokens writes at [pos : pos+T] and attends over [0 : pos+T].
    `key_mask` (B, max_len) marks real (non-pad) keys; `seen` (B,) counts real tokens so far and
    `rope_deltas` (B,) is the MRoPE offset delta from the prefill (§7): a decoded token gets position seen + delta."""

    def __init__(self, cfg: TextConfig, batch: int, max_len: int, dtype=torch.float32, device=None):
        shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.key_mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.seen = torch.zeros(batch, dtype=torch.long, device=device)
        self.rope_deltas = torch.zeros(batch, dtype=torch.long, device=device)
        self.has_pad = False  # any pad key so far (then every step needs an explicit mask)
        self.pos = 0
        self.max_len = max_len

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def repeat_interleave(self, n: int) -> "KVCache":
        """A cache for n copies of each row (row b*n + g is copy g of row b): one prefill serves a GRPO group."""
        new = KVCache.__new__(KVCache)
        new.k = self.k.repeat_interleave(n, dim=1)
        new.v = self.v.repeat_interleave(n, dim=1)
        new.key_mask = self.key_mask.repeat_interleave(n, dim=0)
        new.seen = self.seen.repeat_interleave(n, dim=0)
        new.rope_deltas = self.rope_deltas.repeat_interleave(n, dim=0)
        new.pos, new.max_len, new.has_pad = self.pos, self.max_len, self.has_pad
        return new

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, nkv, T, d) at [pos : pos+T]; return all keys/values so far (B, nkv, pos+T, d)."""
        T = k.shape[2]
        self.k[layer, :, :, self.pos:self.pos + T] = k
        self.v[layer, :, :, self.pos:self.pos + T] = v
        return self.k[layer, :, :, :self.pos + T], self.v[layer, :, :, :self.pos + T]


class Attention(nn.Module):
    fused_qkv: torch.Tensor | None = None  # set only inside `fused_projections` (decoding)

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.nq, self.nkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.nq * self.d, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.nkv * self.d, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.nkv * self.d, bias=False)
        self.o_proj = nn.Linear(self.nq * self.d, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.d, cfg.rms_norm_eps)  # per head, before RoPE (§6.2)
        self.k_norm = RMSNorm(self.d, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None, layer: int = 0):
        B, L, _ = x.shape
        if self.fused_qkv is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:  # one matmul for the three projections
            q, k, v = F.linear(x, self.fused_qkv).split([self.nq * self.d, self.nkv * self.d, self.nkv * self.d], -1)
        q = self.q_norm(q.view(B, L, self.nq, self.d)).transpose(1, 2)  # (B, nq, L, d)
        k = self.k_norm(k.view(B, L, self.nkv, self.d)).transpose(1, 2)  # (B, nkv, L, d)
        v = v.view(B, L, self.nkv, self.d).transpose(1, 2)  # (B, nkv, L, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nkv, S, d), S = keys so far
        # GQA: query head i reads KV head floor(i/g), i.e. repeat_interleave of the KV heads (enable_gqa).
        # mask (B, 1, L, S) bool = causal & real key. None: plain causal for a full sequence, or (a single
        # decode query with no pad among the keys) attend to every key.
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and L > 1,
                                           enable_gqa=True)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, self.nq * self.d))


class MLP(nn.Module):
    """SwiGLU: down(SiLU(gate(x)) * up(x))."""

    fused_gate_up: torch.Tensor | None = None  # set only inside `fused_projections` (decoding)

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        if self.fused_gate_up is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = F.linear(x, self.fused_gate_up).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def _plain(linear: nn.Module) -> bool:
    """An unmodified nn.Linear (not a LoRA subclass) without hooks: safe to replace by a fused matmul."""
    return type(linear) is nn.Linear and not linear._forward_hooks and not linear._forward_pre_hooks


@contextmanager
def fused_projections(model: "TextModel"):
    """Decoding speed-up: while active, q/k/v and gate/up of each layer run as one matmul each on the
    concatenated weights (same math; at decode sizes each matmul call costs mostly fixed overhead).
    Only plain, hook-free nn.Linear modules are fused, so LoRA adapters and hooks see every call as usual.
    The concatenated copies are dropped on exit, so training never sees stale weights."""
    fused = []
    try:
        with torch.no_grad():
            for layer in model.layers:
                a, m = layer.self_attn, layer.mlp
                if all(_plain(p) for p in (a.q_proj, a.k_proj, a.v_proj)):
                    a.fused_qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
                    fused.append((a, "fused_qkv"))
                if _plain(m.gate_proj) and _plain(m.up_proj):
                    m.fused_gate_up = torch.cat([m.gate_proj.weight, m.up_proj.weight])
                    fused.append((m, "fused_gate_up"))
        yield
    finally:
        for module, name in fused:
            delattr(module, name)  # back to the class default None


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, h, cos, sin, mask=None, cache=None, layer: int = 0) -> torch.Tensor:
        """Returns the new residual stream (B, L, D) as a plain tensor (hooks rely on this)."""
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask, cache, layer)
        return h + self.mlp(self.post_attention_layernorm(h))


class TextModel(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, inputs_embeds, position_ids, mask=None, cache: KVCache | None = None,
                visual_pos_mask=None, deepstack: list | None = None) -> torch.Tensor:
        """inputs_embeds (B, L, D), position_ids (3, B, L) or (B, L) when T = H = W, mask (B, 1, L, S) bool or None (causal);
        visual_pos_mask (B, L) bool and deepstack K x (n_visual, D). Returns the final-normed h (B, L, D)."""
        cos, sin = mrope_cos_sin(position_ids, self.config, inputs_embeds.dtype)
        h = inputs_embeds
        if deepstack and visual_pos_mask is not None:
            vis_idx = visual_pos_mask.nonzero(as_tuple=True)  # (b, l) of each visual row, row-major
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, mask, cache, i)
            if deepstack and visual_pos_mask is not None and i < len(deepstack):
                # h[visual] += F_i, out of place so a tensor a hook captured is not modified afterwards
                h = h.index_put(vis_idx, deepstack[i].to(h.dtype), accumulate=True)
        if cache is not None:
            cache.pos += inputs_embeds.shape[1]
        return self.norm(h)
