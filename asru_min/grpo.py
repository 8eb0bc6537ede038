"""Stage 2 of ASRU: refusal-boundary optimisation with GRPO.

One GRPO step, read top to bottom:

1. rollouts   - for each prompt of the boundary set (forget + retain QA), G sampled responses
                (temperature 1.5, top_p 0.95), one prefill per prompt (`model.generate(num_samples=G)`);
2. rewards    - `asru_reward(response, ground_truth, forget)`, one scalar per response;
3. advantages - `group_advantages`: A_i = (r_i - mean_group) / (std_group + eps), shared by all tokens of i;
4. log-probs  - `sequence_logprobs` under the current policy (old, no grad) and the reference policy
                (LoRA adapters switched off, no grad);
5. update     - `policy_loss`: clipped ratio surrogate with clip range [1 - 0.2, 1 + 0.3] plus k3 KL to the
                reference (coefficient 0.1), token mean; AdamW, gradient clip 1.0, a non-finite loss skips
                the optimiser step.

Sequence layout used everywhere below: one row = [prompt (left-padded) | response (right-padded)],
so a row can have pads on both ends; `attention_mask` marks real tokens, `response_mask` the response tokens
up to and including the EOS (the EOS is a real token the policy chose, so it is trained like any other).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass
class GRPOConfig:
    """Every hyper-parameter of stage 2 (defaults: the release's values where they fit a CPU run).

    The release trains all weights with lr 1e-6; with LoRA adapters on a tiny model the same lr moves nothing
    in a few steps, so the default here is 5e-5 (use 1e-6 for full fine-tuning of a real model).
    """

    group_size: int = 8  # G samples per prompt
    temperature: float = 1.5
    top_p: float = 0.95
    max_new_tokens: int = 32
    prompts_per_step: int = 4  # prompts per rollout batch (release: 64)
    mini_batch_size: int = 0  # responses per optimiser step; 0 = the whole rollout batch (prompts_per_step * G)
    ppo_epochs: int = 1  # inner passes over one rollout batch
    epochs: int = 1  # passes over the boundary set (release: 6)
    clip_low: float = 0.2
    clip_high: float = 0.3
    kl_coef: float = 0.1
    lr: float = 5e-5
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    adv_eps: float = 1e-6
    seed: int = 0


# ----------------------------------------------------------------------------------------------------------
# the equations


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO group-normalised advantage.

        A_i = (r_i - mean_g(r)) / (std_g(r) + eps)

    rewards: (B*G,) prompt-major (row b*G + g is sample g of prompt b), as `model.generate` returns them.
    std is the *unbiased* (Bessel-corrected, divide by G - 1) standard deviation: the authors' release
    (EasyR1/verl, `torch.std`) uses it, so the advantage scale matches theirs. A group whose rewards are all
    equal has std 0 and numerator 0, so its advantages are exactly 0 (no NaN, no learning signal).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B*G,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group needs a baseline), got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)  # (B, G)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, unbiased=True, keepdim=True)
    return ((r - mean) / (std + eps)).view(-1)  # (B*G,)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token mean of x over mask (all masked tokens of the batch weigh the same: verl's "token-mean")."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.3,
    kl_coef: float = 0.1,
) -> tuple[torch.Tensor, dict]:
    """Clipped GRPO surrogate with the k3 KL penalty, averaged over response tokens.

    Per token t of response i (all tensors (N, T); advantages (N,) broadcast over tokens, or (N, T)):
        ratio   = exp(logp - old_logp)
        pg      = -min(ratio * A_i, clip(ratio, 1 - clip_low, 1 + clip_high) * A_i)
        k3      = exp(ref_logp - logp) - (ref_logp - logp) - 1          (>= 0, unbiased for KL(pi || ref))
        loss    = token_mean_mask(pg + kl_coef * k3)

    mask is True on every response token including the EOS (pads after the EOS are False).
    Returns (loss, stats) with stats = floats: pg_loss, kl (mean k3), clip_frac (tokens where the clipped term
    is the active one), clip_low_frac / clip_high_frac (ratio below / above the range), ratio_mean.
    """
    if not (logp.shape == old_logp.shape == ref_logp.shape == mask.shape):
        raise ValueError(
            f"shape mismatch: logp {tuple(logp.shape)}, old {tuple(old_logp.shape)}, "
            f"ref {tuple(ref_logp.shape)}, mask {tuple(mask.shape)}"
        )
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (N, 1): one advantage for every token of a response
    mask = mask.bool()
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    surrogate = torch.minimum(ratio * advantages, clipped * advantages)
    pg = -surrogate
    log_ref_ratio = ref_logp - logp
    k3 = torch.exp(log_ref_ratio) - log_ref_ratio - 1.0
    loss = masked_mean(pg + kl_coef * k3, mask)
    with torch.no_grad():
        clip_active = (clipped * advantages < ratio * advantages) & mask  # the min picked the clipped term
        stats = {
            "pg_loss": masked_mean(pg, mask).item(),
            "kl": masked_mean(k3, mask).item(),
            "clip_frac": masked_mean(clip_active.float(), mask).item(),
            "clip_low_frac": masked_mean((ratio < 1.0 - clip_low).float(), mask).item(),
            "clip_high_frac": masked_mean((ratio > 1.0 + clip_high).float(), mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
        }
    return loss, stats


# ----------------------------------------------------------------------------------------------------------
# log-probabilities of responses


def sequence_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    pixel_values: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
    image_features=None,
) -> torch.Tensor:
    """log pi(token_t | tokens_<t) for every response token, one forward over prompt + response.

    input_ids, attention_mask, response_mask: (N, L). Returns (N, L) float32, 0 where response_mask is False.
    The token at position t is predicted by the logits at t - 1; only the last k + 1 positions' logits are
    computed (k = width of the response region), which keeps the (N, k, V) logits small.
    """
    if not (input_ids.shape == attention_mask.shape == response_mask.shape):
        raise ValueError("input_ids, attention_mask and response_mask must have the same (N, L) shape")
    response_mask = response_mask.bool()
    columns = response_mask.any(dim=0).nonzero()
    N, L = input_ids.shape
    out = torch.zeros(N, L, dtype=torch.float32, device=input_ids.device)
    if columns.numel() == 0:
        return out
    first = int(columns[0])
    if first == 0:
        raise ValueError("a response token at position 0 has no context to be predicted from")
    k = L - first  # response region width
    logits = model(
        input_ids,
        attention_mask=attention_mask,
        pixel_values=pixel_values,
        image_grid_thw=image_grid_thw,
        image_features=image_features,
        logits_to_keep=k + 1,
    )  # (N, k + 1, V)
    logits = logits[:, :-1].float()  # (N, k, V): position first-1 .. L-2 predict first .. L-1
    targets = input_ids[:, first:]  # (N, k)
    token_logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    out[:, first:] = token_logp * response_mask[:, first:]
    return out


# ----------------------------------------------------------------------------------------------------------
# one optimiser step that refuses non-finite losses


def optimizer_step(loss: torch.Tensor, params: list, optimizer: torch.optim.Optimizer, grad_clip: float) -> bool:
    """backward + clip + step; returns False (and changes nothing) if the loss or the gradient is not finite.

    A NaN/inf from one bad batch would otherwise poison every weight through AdamW's moment estimates.
    """
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        warnings.warn(f"non-finite GRPO loss ({loss.item()}): optimiser step skipped")
        return False
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if not torch.isfinite(grad_norm):
        warnings.warn(f"non-finite gradient norm ({grad_norm.item()}): optimiser step skipped")
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return True
