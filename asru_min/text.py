"""Qwen3 text decoder used by Qwen3-VL (docs/QWEN3VL.md, "Text decoder").

h = embed(ids) (image rows already replaced by the glue model)
for each layer l:   h = h + o_proj(attn(RoPE(qnorm(q)), RoPE(knorm(k)), v))      (pre-norm, GQA, no biases)
                    h = h + down(SiLU(gate(B)) * up(B)),  B = RMS(h)
                    h[visual] += F_l            for the first K layers only (DeepStack)
logits = RMS(h) W_lm^T   (the head lives in model.py)

`DecoderLayer.forward` returns the residual stream (B, L, D) itself, so a forward hook on `layers[i]` reads or
replaces it; DeepStack is added by `TextModel` *after* the layer (as in the reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 4096  # D
    intermediate_size: int = 12288
    num_hidden_layers: int = 36
    num_attention_heads: int = 32  # nq
    num_key_value_heads: int = 8  # nkv
    head_dim: int = 128  # d: read from the config, never D/nq
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


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * cast(x / sqrt(mean(x^2) + eps)) over the last dim: statistics in fp32, weight multiply after the
    cast. weight (d,) or any shape broadcasting against x's trailing dims, e.g. (heads, d)."""
    if x.dtype == torch.float32 and weight.shape == x.shape[-1:]:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)  # one call; the same bits as the line below in fp32
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x' = x * cos(Theta) + rot(x) * sin(Theta), rot([x1, x2]) = [-x2, x1] (half-split pairs k, k + d/2),
    written as x * cos + roll(x, d/2) * [-sin, sin]: the sign lives in sin_signed (negation is exact, so this
    is bit-identical to the rotate_half form)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


def mrope_axis(head_dim: int, mrope_section: list[int]) -> torch.Tensor:
    """Which position axis (0=T, 1=H, 2=W) drives each of the d/2 frequency slots (interleaved MRoPE):
    slot j -> H if j%3==1 and j < 3*s_h;  W if j%3==2 and j < 3*s_w;  else T."""
    j = torch.arange(head_dim // 2)
    axis = torch.zeros_like(j)
    axis[(j % 3 == 1) & (j < 3 * mrope_section[1])] = 1
    axis[(j % 3 == 2) & (j < 3 * mrope_section[2])] = 2
    return axis


def mrope_cos_sin(pos: torch.Tensor, cfg: TextConfig, dtype: torch.dtype):
    """pos (3, B, L) -> cos(Theta), [-sin(phi), sin(phi)] (B, L, 1, d) for `apply_rope` on (B, L, heads, d).
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
    return torch.cat([cos, cos], dim=-1)[:, :, None], torch.cat([-sin, sin], dim=-1)[:, :, None]  # (B, L, 1, d)


class KVCache:
    """Preallocated keys/values for every layer: k[l], v[l] are (B, nkv, max_len, d); a forward of T new tokens
    writes at [pos : pos+T] and attends over [0 : pos+T]. `key_mask` (B, max_len) marks real keys; a decoded
    token gets position `seen` (B,) (real tokens so far) + `rope_deltas` (B,) (the MRoPE delta of the prefill)."""

    def __init__(self, cfg: TextConfig, batch: int, max_len: int, dtype=torch.float32, device=None):
        shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.key_mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.seen = torch.zeros(batch, dtype=torch.long, device=device)
        self.rope_deltas = torch.zeros(batch, dtype=torch.long, device=device)
        self.has_pad = False  # any pad key so far (then every step needs an explicit mask)
        self.pos, self.max_len = 0, max_len

    def repeat_interleave(self, n: int) -> "KVCache":
        """A cache for n copies of each row (row b*n + g is copy g of row b): one prefill serves a GRPO group."""
        new = KVCache.__new__(KVCache)
        new.k, new.v = self.k.repeat_interleave(n, dim=1), self.v.repeat_interleave(n, dim=1)
        new.key_mask = self.key_mask.repeat_interleave(n, dim=0)
        new.seen, new.rope_deltas = self.seen.repeat_interleave(n, dim=0), self.rope_deltas.repeat_interleave(n, dim=0)
        new.pos, new.max_len, new.has_pad = self.pos, self.max_len, self.has_pad
        return new

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (n,), in that order (rows that finished decoding leave the cache): they are
        moved to the front of the buffers in place, copying only the positions written so far."""
        n, used = len(rows), self.pos
        self.k[:, :n, :, :used] = self.k[:, rows, :, :used]
        self.v[:, :n, :, :used] = self.v[:, rows, :, :used]
        self.key_mask[:n] = self.key_mask[rows]  # (decode steps' entries are set ahead of time)
        self.k, self.v, self.key_mask = self.k[:, :n], self.v[:, :n], self.key_mask[:n]
        self.seen, self.rope_deltas = self.seen[rows], self.rope_deltas[rows]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, nkv, T, d) at [pos : pos+T]; return all keys/values so far (B, nkv, pos+T, d)."""
        T, keys, values = k.shape[2], self.k[layer], self.v[layer]
        keys.narrow(2, self.pos, T).copy_(k)
        values.narrow(2, self.pos, T).copy_(v)
        return keys.narrow(2, 0, self.pos + T), values.narrow(2, 0, self.pos + T)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                      fused_kernel_form: bool | None = None) -> torch.Tensor:
    """softmax(q K^T / sqrt(d) + mask) V with grouped-query attention: query head i reads KV head floor(i / g),
    g = nq / nkv (repeat_interleave of the KV heads). q (B, nq, L, d), k/v (B, nkv, S, d), mask (B, 1, L, S) bool
    = causal & real key, or None: plain causal (L > 1) or one decode query that sees every key. -> (B, nq, L, d).

    Without a mask SDPA runs with enable_gqa, which the flash kernel takes. With a mask (every padded batch) the
    CUDA flash kernel is out (no mask) and so is the memory-efficient one if GQA is asked of it, which leaves
    the math kernel and its (B, nq, L, S) scores; `fused_kernel_form` (default: on CUDA) asks for no GQA instead:
      L = 1 (a decode step): the g query heads of a KV head become g queries of it, q viewed (B, nkv, g, d), the
                             mask (B, 1, 1, S) broadcasting over them (no copy);
      L > 1:                 K/V expanded to the query heads (B, nq, S, d).
    The same map either way (tested); the CPU's kernel takes a mask with GQA, so there the plain call stays."""
    B, nq, L, d = q.shape
    g = nq // k.shape[1]
    if mask is None or g == 1 or not (q.is_cuda if fused_kernel_form is None else fused_kernel_form):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and L > 1,
                                              enable_gqa=g > 1)
    if L == 1:
        o = F.scaled_dot_product_attention(q.reshape(B, nq // g, g, d), k, v, attn_mask=mask)  # (B, nkv, g, d)
        return o.reshape(B, nq, 1, d)
    return F.scaled_dot_product_attention(q, k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1),
                                          attn_mask=mask)


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.nq, self.nkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.nq * self.d, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.nkv * self.d, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.nkv * self.d, bias=False)
        self.o_proj = nn.Linear(self.nq * self.d, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.d, cfg.rms_norm_eps)  # per head, before RoPE
        self.k_norm = RMSNorm(self.d, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None, layer: int = 0):
        """x (B, L, D), cos/sin (B, L, 1, d) -> (B, L, D)."""
        B, L, _ = x.shape
        q = apply_rope(self.q_norm(self.q_proj(x).view(B, L, self.nq, self.d)), cos, sin)  # (B, L, nq, d)
        k = apply_rope(self.k_norm(self.k_proj(x).view(B, L, self.nkv, self.d)), cos, sin)  # (B, L, nkv, d)
        v = self.v_proj(x).view(B, L, self.nkv, self.d)
        return self.attend(q, k, v, mask, cache, layer)

    def attend(self, q, k, v, mask, cache: KVCache | None = None, layer: int = 0):
        """q (B, L, nq, d), k/v (B, L, nkv, d) (q, k normed and rotated) -> o_proj(softmax(q K^T / sqrt(d) + mask) V)
        (B, L, D), K/V = the cache's keys/values with k, v appended (or k, v without a cache)."""
        B, L = q.shape[:2]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, L, d)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nkv, S, d), S = keys so far
        o = grouped_attention(q, k, v, mask)  # (B, nq, L, d)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, self.nq * self.d))


class MLP(nn.Module):
    """SwiGLU: down(SiLU(gate(x)) * up(x))."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, h, cos, sin, mask=None, cache=None, layer: int = 0) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask, cache, layer)
        return h + self.mlp(self.post_attention_layernorm(h))


def hook_free(*modules: nn.Module) -> bool:
    """No forward (pre-)hook on any of `modules`: a hooked module must run as itself, once per call."""
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def checkpointable(block: nn.Module) -> bool:
    """Gradient checkpointing may wrap `block` (a decoder layer, a vision block) in this forward: autograd is on
    and no module inside it has a hook. Backward re-runs a checkpointed block, so a hook would fire twice (stage
    1's `hooks.run_to_layer` must see its layer once; its stop hook raises): a hooked block always runs plain."""
    return torch.is_grad_enabled() and hook_free(*block.modules())


class TextModel(nn.Module):
    grad_checkpoint = False  # set by `optim.gradient_checkpointing`: decoder layers recomputed in backward

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, inputs_embeds, position_ids=None, mask=None, cache: KVCache | None = None,
                visual_pos_mask=None, deepstack: list | None = None, rope=None) -> torch.Tensor:
        """inputs_embeds (B, L, D), position_ids (3, B, L) or (B, L) when T = H = W, mask (B, 1, L, S) bool or
        None (causal); visual_pos_mask (B, L) bool and deepstack K x (n_visual, D); rope: precomputed (cos, sin)
        (B, L, 1, d) instead of position_ids (decode steps). -> final-normed h (B, L, D)."""
        cos, sin = rope if rope is not None else mrope_cos_sin(position_ids, self.config, inputs_embeds.dtype)
        h = inputs_embeds
        if deepstack and visual_pos_mask is not None:
            vis_idx = visual_pos_mask.nonzero(as_tuple=True)  # (b, l) of each visual row, row-major
        for i, layer in enumerate(self.layers):
            if self.grad_checkpoint and cache is None and checkpointable(layer):
                h = checkpoint(layer, h, cos, sin, mask, use_reentrant=False)  # only h is kept for backward
            else:
                h = layer(h, cos, sin, mask, cache, i)
            if deepstack and visual_pos_mask is not None and i < len(deepstack):
                # h[visual] += F_i, out of place so a tensor a hook captured is not modified afterwards
                h = h.index_put(vis_idx, deepstack[i].to(h.dtype), accumulate=True)
        if cache is not None:
            cache.pos += inputs_embeds.shape[1]
        return self.norm(h)
