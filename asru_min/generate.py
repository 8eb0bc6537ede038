"""KV-cached generation for `Qwen3VL` and the token samplers.

    prefill:  one forward over the prompts (vision once), KV cache filled, logits of the last position
    copy:     the cache repeated G ways (row b*G + g is sample g of prompt b)
    decode:   per step: sample a token from the logits, feed it through the text decoder (L = 1)

A decode step does only decode work: the positions and RoPE cos/sin of every step are computed once per call,
the attention mask of a step is a view of the cache's preallocated key mask, and q/k/v and gate/up run as one
matmul each on weights cached across calls (`text.fused_projections`, LoRA folded in).

Sampling is sort-free (`sample_next`): top-k by a threshold from `torch.topk`, top-p by rejection. It draws
from the same distribution as the sort-based reference sampler `sample_sorted` (tested by frequencies).
"""

from __future__ import annotations

import math

import torch

from .text import KVCache, fused_projections, mrope_cos_sin

# ------------------------------------------------------------------------------------------------
# samplers
# ------------------------------------------------------------------------------------------------

NUCLEUS_ROUNDS = 16  # rejection rounds before the remaining rows of a top-p draw fall back to the sort sampler


def sample_sorted(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The reference sampler (O(V log V) per row): logits (B, V) -> ids (B,). temperature 0: argmax.
    Otherwise sort softmax(logits / T) descending (stable: equal logits keep index order), keep the first top_k
    (if top_k > 0), renormalise, keep each token whose mass *before it* in that order is < top_p (the smallest
    most-likely prefix reaching top_p), and draw one token."""
    if temperature <= 0:
        return logits.argmax(-1)
    _check_top_p(top_p)
    sorted_logits, order = (logits.float() / temperature).sort(dim=-1, descending=True, stable=True)
    if top_k > 0:
        sorted_logits[:, top_k:] = -math.inf
    p = sorted_logits.softmax(-1)
    if top_p < 1.0:
        p = p.masked_fill(p.cumsum(-1) - p >= top_p, 0.0)  # mass before this token already reaches top_p
    return order.gather(-1, _inverse_cdf(p, generator)[:, None]).squeeze(-1)


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> next ids (B,), the distribution of `sample_sorted` without sorting the vocabulary.
    top_k: keep the tokens above the k-th largest logit, plus the lowest-index ties at it (as the stable sort).
    top_p: draw t from the top-k distribution and accept it iff the mass ranked before t is < top_p, else draw
    again. An accepted draw is distributed as the top-k distribution restricted to the nucleus, renormalised:
    exactly the sort sampler's distribution. Each round accepts with probability >= top_p."""
    if temperature <= 0:
        return logits.argmax(-1)
    _check_top_p(top_p)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        logits = logits.masked_fill(~_top_k_keep(logits, top_k), -math.inf)
    p = logits.softmax(-1)  # (B, V)
    if top_p >= 1.0:
        return _inverse_cdf(p, generator)
    out = _inverse_cdf(p, generator)
    pending = (_mass_before(logits, p, out) >= top_p).nonzero().squeeze(1)  # rows whose draw is rejected
    for _ in range(NUCLEUS_ROUNDS):  # redraw only the rejected rows (each round accepts with probability >= top_p)
        if len(pending) == 0:
            return out
        draw = _inverse_cdf(p[pending], generator)
        out[pending] = draw
        pending = pending[_mass_before(logits[pending], p[pending], draw) >= top_p]
    # rare (a tiny top_p and a flat distribution): finish the rows still pending with the exact sort sampler
    out[pending] = sample_sorted(logits[pending], 1.0, top_p, 0, generator)
    return out


def _check_top_p(top_p: float) -> None:
    if not top_p > 0:
        raise ValueError(f"top_p must be > 0, got {top_p}")


def _top_k_keep(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(B, V) bool: the first k tokens of a stable descending sort, found without sorting."""
    kth = logits.topk(k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest logit
    above = logits > kth
    tied = logits == kth
    room = k - above.sum(-1, keepdim=True)  # how many of the tied tokens fit, lowest index first
    return above | (tied & (tied.cumsum(-1) <= room))


def _mass_before(logits: torch.Tensor, p: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B,) probability mass ranked before token idx (B,) in the stable descending order of logits: tokens with
    a higher logit, or an equal logit and a lower index."""
    chosen = logits.gather(-1, idx[:, None])  # (B, 1)
    lower_index = torch.arange(logits.shape[-1], device=logits.device) < idx[:, None]
    before = (logits > chosen) | ((logits == chosen) & lower_index)
    return (p * before).sum(-1)


def _inverse_cdf(p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row from (unnormalised) probabilities p (B, V): the first index whose cumulative mass
    exceeds u ~ U(0, total). One random number per row (torch.multinomial is ~20x slower at these sizes)."""
    cdf = p.cumsum(-1)
    u = torch.rand(p.shape[0], 1, generator=generator, device=p.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=p.shape[-1] - 1)


# ------------------------------------------------------------------------------------------------
# generation
# ------------------------------------------------------------------------------------------------


def generate(model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, max_new_tokens=32,
             temperature=0.0, top_p=1.0, top_k=0, num_samples=1, generator=None, eos_token_ids=None,
             image_features=None, suppress_token_ids=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`Qwen3VL.generate` (see there). inference_mode (no autograd bookkeeping at all) makes the many tiny
    decode ops cheaper; the results are cloned outside it so callers get ordinary tensors they can feed to a
    training forward."""
    with torch.inference_mode():
        tokens, mask = _generate(model, input_ids, attention_mask, pixel_values, image_grid_thw, max_new_tokens,
                                 temperature, top_p, top_k, num_samples, generator, eos_token_ids, image_features,
                                 suppress_token_ids)
    return tokens.clone(), mask.clone()


def _generate(model, input_ids, attention_mask, pixel_values, image_grid_thw, max_new_tokens, temperature, top_p,
              top_k, num_samples, generator, eos_token_ids, image_features, suppress_token_ids):
    text_cfg = model.config.text
    B, L = input_ids.shape
    if L > text_cfg.max_position_embeddings:
        raise ValueError(f"prompt length {L} exceeds max_position_embeddings {text_cfg.max_position_embeddings}")
    T = min(max_new_tokens, text_cfg.max_position_embeddings - L)
    if eos_token_ids is None:
        eos_token_ids = model.config.eos_token_ids
    elif isinstance(eos_token_ids, int):
        eos_token_ids = [eos_token_ids]
    dev, G = input_ids.device, num_samples
    eos = torch.tensor(list(eos_token_ids), dtype=torch.long, device=dev)
    tokens = torch.zeros(B * G, T, dtype=torch.long, device=dev)
    mask = torch.full((B * G, T), len(eos) == 0, dtype=torch.bool, device=dev)
    if T <= 0:
        return tokens, mask
    suppress = sorted(set(suppress_token_ids or []))

    with fused_projections(model.model.language_model):  # q/k/v and gate/up as one matmul (cached weights)
        cache = KVCache(text_cfg, B, L + T, model.dtype, dev)
        logits = model(input_ids, attention_mask, pixel_values, image_grid_thw, image_features=image_features,
                       cache=cache, logits_to_keep=1)[:, -1]  # (B, V)
        if G > 1:
            cache = cache.repeat_interleave(G)
            logits = logits.repeat_interleave(G, dim=0)  # (B*G, V)
        step = DecodeSteps(model, cache, T - 1)
        finished = torch.zeros(B * G, dtype=torch.bool, device=dev)
        for t in range(T):
            if suppress:
                logits[:, suppress] = -math.inf
            nxt = sample_next(logits, temperature, top_p, top_k, generator)
            if len(eos):  # (no EOS ids: nothing ever finishes early)
                nxt = torch.where(finished, 0, nxt)
                mask[:, t] = ~finished
                finished = finished | torch.isin(nxt, eos)
            tokens[:, t] = nxt
            if t == T - 1 or bool(finished.all()):
                return tokens[:, :t + 1], mask[:, :t + 1]
            logits = step(nxt)
    return tokens, mask


class DecodeSteps:
    """Feeds one token per row through the text decoder and the head, with a cache that holds the prefill.

    Every decoded token is real, so step j (0-based) of row b has position seen_b + j + delta_b (T = H = W):
    cos/sin for all `n_steps` are computed here once, (n, B, 1, 1, d). The decoded keys are all real: their
    key-mask entries are set once, and step j's mask (B, 1, 1, S) is a view of the cache's key mask
    (None when no prompt had pads: one query sees every key)."""

    def __init__(self, model, cache: KVCache, n_steps: int):
        self.model, self.cache, self.j = model, cache, 0
        lm = model.model.language_model
        pos = (cache.seen + cache.rope_deltas)[:, None] + torch.arange(n_steps, device=cache.k.device)  # (B, n)
        cos, sin = mrope_cos_sin(pos, lm.config, model.dtype)  # (B, n, 1, d)
        self.cos, self.sin = cos.transpose(0, 1)[:, :, None], sin.transpose(0, 1)[:, :, None]  # (n, B, 1, 1, d)
        cache.key_mask[:, cache.pos:cache.pos + n_steps] = True  # (cache.seen is left as is: this cache is private)
        self.key_mask = cache.key_mask[:, None, None, :] if cache.has_pad else None  # (B, 1, 1, max_len)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) -> logits (B, V) of the next position."""
        lm = self.model.model.language_model
        mask = None if self.key_mask is None else self.key_mask[..., :self.cache.pos + 1]
        h = lm(lm.embed_tokens(ids[:, None]), mask=mask, cache=self.cache, rope=(self.cos[self.j], self.sin[self.j]))
        self.j += 1
        return self.model.lm_head(h[:, -1])
