"""KV-cached generation for `Qwen3VL` and the token samplers (docs/QWEN3VL.md, "KV-cached generation").

    prefill:  one forward over the prompts (vision once), KV cache filled, logits of the last position
    copy:     the cache repeated G ways (row b*G + g is sample g of prompt b)
    decode:   per step: sample a token from the logits, feed it through the text decoder (L = 1); a row that
              emits EOS leaves the batch (its cache row dropped)

A decode step does only decode work (RoPE and masks are prepared once per call; q/k/v and gate/up run fused,
`fused_projections`, for the duration of the call only). Sampling is sort-free (`sample_next`: top-p by
rejection) and draws from the distribution of the sort-based reference `sample_sorted` (tested by frequencies).

Random numbers: at every step each row takes `UNIFORMS_PER_STEP` uniforms from its stream (finished rows too,
their draws unused), and a row's token depends only on its logits and its own uniforms. With one generator per
prompt, a prompt's samples therefore depend on nothing but that generator: not on the other prompts of the call,
nor on when other rows finish.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from .lora import LoRALinear
from .text import KVCache, TextModel, apply_rope, hook_free, mrope_cos_sin, rms_norm

NUCLEUS_ROUNDS = 16  # rejection rounds before the remaining rows of a top-p draw fall back to the sort sampler
UNIFORMS_PER_STEP = NUCLEUS_ROUNDS + 2  # per row and step: the first draw, the redraws, the sort fallback's draw


def sample_sorted(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                  generator: torch.Generator | None = None, u: torch.Tensor | None = None) -> torch.Tensor:
    """The reference sampler (O(V log V) per row): logits (B, V) -> ids (B,). temperature 0: argmax.
    Otherwise sort softmax(logits / T) descending (stable: equal logits keep index order), keep each token whose
    mass *before it* in that order is < top_p (the smallest most-likely prefix reaching top_p), and draw one token
    by inverse CDF with u (B,) ~ U(0, 1) (drawn from `generator` when not given)."""
    if temperature <= 0:
        return logits.argmax(-1)
    _check_top_p(top_p)
    sorted_logits, order = (logits.float() / temperature).sort(dim=-1, descending=True, stable=True)
    p = sorted_logits.softmax(-1)
    if top_p < 1.0:
        p = p.masked_fill(p.cumsum(-1) - p >= top_p, 0.0)  # mass before this token already reaches top_p
    if u is None:
        u = torch.rand(p.shape[0], generator=generator, device=p.device)
    return order.gather(-1, _inverse_cdf(p, u)[:, None]).squeeze(-1)


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                generator: torch.Generator | None = None, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """logits (B, V) -> next ids (B,), the distribution of `sample_sorted` without sorting the vocabulary.
    top_p: draw t from softmax(logits / T) and accept it iff the mass ranked before t is < top_p, else draw
    again. An accepted draw is distributed as softmax(logits / T) restricted to the nucleus, renormalised:
    exactly the sort sampler's distribution. Each round accepts with probability >= top_p.
    uniforms (B, UNIFORMS_PER_STEP) ~ U(0, 1): row b's random numbers (column 0 the first draw, column r the r-th
    redraw, the last one the sort fallback's), drawn from `generator` when not given; a row's token depends on
    its own logits and uniforms only."""
    if temperature <= 0:
        return logits.argmax(-1)
    _check_top_p(top_p)
    if uniforms is None:
        uniforms = torch.rand(logits.shape[0], UNIFORMS_PER_STEP, generator=generator, device=logits.device)
    logits = logits.float() / temperature
    p = logits.softmax(-1)  # (B, V)
    out = _inverse_cdf(p, uniforms[:, 0])
    if top_p >= 1.0:
        return out
    pending = (_mass_before(logits, p, out) >= top_p).nonzero().squeeze(1)  # rows whose draw is rejected
    for r in range(1, NUCLEUS_ROUNDS + 1):  # redraw only the rejected rows
        if len(pending) == 0:
            return out
        draw = _inverse_cdf(p[pending], uniforms[pending, r])
        out[pending] = draw
        pending = pending[_mass_before(logits[pending], p[pending], draw) >= top_p]
    # rare (a tiny top_p and a flat distribution): finish the rows still pending with the exact sort sampler
    out[pending] = sample_sorted(logits[pending], 1.0, top_p, u=uniforms[pending, -1])
    return out


def _check_top_p(top_p: float) -> None:
    if not top_p > 0:
        raise ValueError(f"top_p must be > 0, got {top_p}")


def _mass_before(logits: torch.Tensor, p: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B,) probability mass ranked before token idx (B,) in the stable descending order of logits: tokens with
    a higher logit, or an equal logit and a lower index."""
    chosen = logits.gather(-1, idx[:, None])  # (B, 1)
    lower_index = torch.arange(logits.shape[-1], device=logits.device) < idx[:, None]
    before = (logits > chosen) | ((logits == chosen) & lower_index)
    return (p * before).sum(-1)


def _inverse_cdf(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One draw per row from (unnormalised) probabilities p (B, V) with u (B,) ~ U(0, 1): the first index whose
    cumulative mass exceeds u * total (torch.multinomial is ~20x slower at these sizes)."""
    cdf = p.cumsum(-1)
    return torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True).squeeze(-1).clamp(max=p.shape[-1] - 1)


# --- fused projections: the decode step's speed-up, active only while `generate` runs


def _fusable(linear: nn.Module) -> bool:
    """A bias-free, hook-free nn.Linear, or such a LoRALinear whose dropout is inactive (eval mode or p = 0):
    then its map is x -> x W'^T with one weight W' (`_weight`). An active adapter on a bf16 / fp16 weight is not
    folded: W + s B A rounded to 16 bits loses most of a small adapter's effect (its A, B are kept in float32)."""
    if linear.bias is not None or not hook_free(linear):
        return False
    if type(linear) is LoRALinear:
        if linear.enabled and not linear.merged and linear.weight.dtype != torch.float32:
            return False
        return not (linear.training and isinstance(linear.lora_dropout, nn.Dropout))
    return type(linear) is nn.Linear


def _weight(linear: nn.Linear) -> torch.Tensor:
    """W, plus scaling * B @ A for an enabled, unmerged LoRA layer."""
    if type(linear) is LoRALinear and linear.enabled and not linear.merged:
        return linear.weight + linear.delta_weight().to(linear.weight.dtype)
    return linear.weight


def _fused_attention(attn, w_qkv: torch.Tensor, w_qk_norm: torch.Tensor):
    """`Attention.forward` with q/k/v as one matmul on w_qkv = [Wq; Wk; Wv] (nq*d + 2*nkv*d, D), and q, k
    normalised (w_qk_norm: the q and k norm weights per head, (nq + nkv, d)) and rotated together."""
    nq, nkv, d = attn.nq, attn.nkv, attn.d

    def forward(x, cos, sin, mask, cache=None, layer=0):
        B, L, _ = x.shape
        qkv = F.linear(x, w_qkv).view(B, L, nq + 2 * nkv, d)
        qk = rms_norm(qkv[:, :, :nq + nkv], w_qk_norm, attn.q_norm.eps)
        q, k = apply_rope(qk, cos, sin).split([nq, nkv], dim=2)
        return attn.attend(q, k, qkv[:, :, nq + nkv:], mask, cache, layer)
    return forward


def _fused_mlp(mlp, w_gate_up: torch.Tensor):
    """`MLP.forward` with gate and up as one matmul on w_gate_up = [W_gate; W_up] (2 I, D)."""
    def forward(x):
        gate, up = F.linear(x, w_gate_up).chunk(2, dim=-1)
        return mlp.down_proj(F.silu(gate) * up)
    return forward


@contextmanager
def fused_projections(lm: TextModel):
    """While active, q/k/v and gate/up of each layer run as one matmul each on the concatenated weights (same
    map; at decode sizes a matmul call is mostly fixed overhead), and q/k are normalised and rotated together:
    the layer's attention and MLP get a fused `forward` for the duration of the block. The concatenations are
    built on entry (LoRA folded in unless its dropout is active) and dropped on exit, so nothing stays on the
    model; the base weights are never modified. A module with a hook is not fused, so the hook sees every call
    (DecoderLayer, o_proj and down_proj always run as modules)."""
    patched = []
    try:
        for layer in lm.layers:
            a, m = layer.self_attn, layer.mlp
            qkv, gate_up = [a.q_proj, a.k_proj, a.v_proj], [m.gate_proj, m.up_proj]
            if all(_fusable(p) for p in qkv) and hook_free(a.q_norm, a.k_norm):
                w_norm = torch.cat([a.q_norm.weight.expand(a.nq, a.d), a.k_norm.weight.expand(a.nkv, a.d)])
                a.forward = _fused_attention(a, torch.cat([_weight(p) for p in qkv]), w_norm)
                patched.append(a)
            if all(_fusable(p) for p in gate_up):
                m.forward = _fused_mlp(m, torch.cat([_weight(p) for p in gate_up]))
                patched.append(m)
        yield
    finally:
        for module in patched:
            del module.forward  # back to the class's forward; the fused weights go with it


def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             pixel_values: torch.Tensor | None = None, image_grid_thw: torch.Tensor | None = None,
             max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
             num_samples: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
             eos_token_ids=None, image_features=None, suppress_token_ids=None,
             compact: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`Qwen3VL.generate`: left-padded prompts (B, L) -> (tokens (B*G, T), mask (B*G, T)), G = num_samples,
    T <= max_new_tokens. Each prompt is prefilled once (vision once; `image_features` from `encode_images` may
    replace pixel_values), then the KV cache is copied G ways: row b*G + g is sample g of prompt b. mask is True
    up to and including each row's EOS; later tokens are 0; decoding stops once every row has finished.
    temperature 0 is greedy; otherwise softmax(logits / T) restricted to the smallest most-likely set reaching
    top_p (nucleus), renormalised.
    generator: one stream for every row, or a list of B, one per prompt (prompt b's G samples draw only from
    generator b: its samples are the same whatever other prompts share the call).
    `suppress_token_ids` are never emitted (e.g. image placeholders in GRPO rollouts, which a later forward
    could not take); by default nothing is banned, as in the reference.
    compact: a row that has emitted EOS leaves the decode batch (its cache row is dropped); False keeps every row
    decoding in lockstep until all have finished. Both give the same tokens (a row's draws are its own)."""
    text_cfg, dev, G = model.config.text, input_ids.device, num_samples
    B, L = input_ids.shape
    if L > text_cfg.max_position_embeddings:
        raise ValueError(f"prompt length {L} exceeds max_position_embeddings {text_cfg.max_position_embeddings}")
    per_prompt = isinstance(generator, (list, tuple))
    if per_prompt and len(generator) != B:
        raise ValueError(f"{len(generator)} generators for {B} prompts: give one per prompt")
    T = min(max_new_tokens, text_cfg.max_position_embeddings - L)
    if eos_token_ids is None:
        eos_token_ids = model.config.eos_token_ids
    eos = torch.tensor([eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids),
                       dtype=torch.long, device=dev)
    tokens = torch.zeros(B * G, T, dtype=torch.long, device=dev)
    mask = torch.full((B * G, T), len(eos) == 0, dtype=torch.bool, device=dev)
    if T <= 0:
        return tokens.clone(), mask.clone()

    def step_uniforms() -> torch.Tensor:  # (B*G, UNIFORMS_PER_STEP): every row's random numbers of one step
        if per_prompt:
            return torch.cat([torch.rand(G, UNIFORMS_PER_STEP, generator=g, device=dev) for g in generator])
        return torch.rand(B * G, UNIFORMS_PER_STEP, generator=generator, device=dev)

    suppress, lm = sorted(set(suppress_token_ids or [])), model.model.language_model
    # inference_mode: no autograd bookkeeping, so the many tiny decode ops get cheaper; tokens and mask were
    # allocated outside it, so the clones returned are ordinary tensors a training forward can use
    with torch.inference_mode(), fused_projections(lm):
        cache = KVCache(text_cfg, B, L + T, model.dtype, dev)
        logits = model(input_ids, attention_mask, pixel_values, image_grid_thw, image_features=image_features,
                       cache=cache, logits_to_keep=1)[:, -1]  # (B, V)
        if G > 1:
            cache = cache.repeat_interleave(G)  # (the prefill's cache is freed here)
            logits = logits.repeat_interleave(G, dim=0)  # (B*G, V)
        # every decoded token is real, so step t of row b has position seen_b + t + delta_b (T = H = W): cos/sin
        # of all steps are computed once and the decoded keys' mask entries set once; step t's mask (n, 1, 1, S) is
        # a view of the cache's key mask (None when no prompt had pads: one query sees every key)
        pos = (cache.seen + cache.rope_deltas)[:, None] + torch.arange(T - 1, device=dev)  # (B*G, T-1)
        cos, sin = mrope_cos_sin(pos, text_cfg, model.dtype)  # (B*G, T-1, 1, d)
        cache.key_mask[:, cache.pos:cache.pos + T - 1] = True  # (cache.seen is left as is: this cache is private)
        rows = torch.arange(B * G, device=dev)  # the rows still in the decode batch, (n,)
        finished = torch.zeros(B * G, dtype=torch.bool, device=dev)
        for t in range(T):
            if suppress:
                logits[:, suppress] = -math.inf
            u = step_uniforms()[rows] if temperature > 0 else None  # drawn for every row, finished or not
            nxt = sample_next(logits, temperature, top_p, uniforms=u)  # (n,)
            if len(eos):  # (no EOS ids: nothing ever finishes early)
                done = finished[rows]  # only in lockstep: rows that finished at an earlier step
                nxt = torch.where(done, 0, nxt)
                mask[rows, t] = ~done
                finished[rows] = done | torch.isin(nxt, eos)
            tokens[rows, t] = nxt
            n_done = int(finished[rows].sum()) if len(eos) else 0
            if t == T - 1 or n_done == len(rows):
                break
            if compact and n_done:  # drop the finished rows from the batch, the cache and the RoPE tables
                keep = (~finished[rows]).nonzero().squeeze(1)
                rows, nxt, cos, sin = rows[keep], nxt[keep], cos[keep], sin[keep]
                cache.keep_rows(keep)
            step_mask = cache.key_mask[:, None, None, :cache.pos + 1] if cache.has_pad else None  # (n, 1, 1, S)
            h = lm(lm.embed_tokens(nxt[:, None]), mask=step_mask, cache=cache, rope=(cos[:, t:t + 1], sin[:, t:t + 1]))
            logits = model.lm_head(h[:, -1])  # (n, V)
    return tokens[:, :t + 1].clone(), mask[:, :t + 1].clone()
