"""What every trainer here shares (stage-1 steering, GRPO, the baselines, pretraining): the log-probability the
model gives to chosen tokens, and one guarded optimiser step."""

from __future__ import annotations

import warnings

import torch

from . import distributed
from .processor import IGNORE_INDEX


def token_logprobs(model, batch: dict, target_mask: torch.Tensor | None = None, temperature: float = 1.0,
                   image_features=None) -> torch.Tensor:
    """log pi(x_t | x_<t) = log_softmax(logits_{t-1} / temperature)[x_t] for every target token t, one forward.

    batch: input_ids and attention_mask (N, L), optional pixel_values / image_grid_thw; target_mask (N, L) marks
    the tokens to score (default: batch["labels"] != -100, the answer tokens of a `data.qa_batch`). Returns (N, L)
    float32, 0 where target_mask is False. Only the logits of the last k + 1 positions are computed (k = width of
    the target region; rows are left-padded, so answers sit at the end), which keeps the (N, k, V) logits small.
    GRPO passes its rollout temperature, as the release does, so ratio and KL compare the distributions the
    responses were sampled from."""
    input_ids = batch["input_ids"]
    if target_mask is None:
        target_mask = batch["labels"] != IGNORE_INDEX
    if not (input_ids.shape == batch["attention_mask"].shape == target_mask.shape):
        raise ValueError("input_ids, attention_mask and target_mask must have the same (N, L) shape")
    target_mask = target_mask.bool()
    columns = target_mask.any(dim=0).nonzero()
    N, L = input_ids.shape
    out = torch.zeros(N, L, dtype=torch.float32, device=input_ids.device)
    if columns.numel() == 0:
        return out
    first = int(columns[0])
    if first == 0:
        raise ValueError("a target token at position 0 has no context to be predicted from")
    k = L - first
    logits = model(input_ids, attention_mask=batch["attention_mask"], pixel_values=batch.get("pixel_values"),
                   image_grid_thw=batch.get("image_grid_thw"), image_features=image_features,
                   logits_to_keep=k + 1)  # (N, k + 1, V)
    logits = logits[:, :-1].float() / temperature  # (N, k, V): positions first-1 .. L-2 predict first .. L-1
    targets = input_ids[:, first:]  # (N, k)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    out[:, first:] = logp * target_mask[:, first:]
    return out


def optimizer_step(loss: torch.Tensor, params: list, optimizer: torch.optim.Optimizer, grad_clip: float = 0.0,
                   after_backward=None, data_parallel: bool = False) -> bool:
    """zero_grad -> backward -> (after_backward()) -> clip to grad_clip (0: no clipping) -> step. Returns False,
    with a warning, and changes no parameter when the loss or the gradient norm is not finite: one NaN/inf batch
    would otherwise poison every weight through AdamW's moment estimates. after_backward lets a caller move
    gradients first (stage 1 copies a bf16 weight's gradient to its float32 master copy, which `params` names).
    data_parallel: backward sums the gradients over torchrun's processes (DistributedDataParallel), so every
    process skips a step when the loss is non-finite on any of them."""
    optimizer.zero_grad(set_to_none=True)
    finite = torch.isfinite(loss)
    if data_parallel:  # one decision for all: backward waits for every process (the gradient norm is shared)
        finite = distributed.all_true(finite)
    if not finite:
        warnings.warn(f"non-finite loss ({loss.item()} here, or on another process): optimiser step skipped")
        return False
    loss.backward()
    if after_backward is not None:
        after_backward()
    if grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if not torch.isfinite(grad_norm):
        warnings.warn(f"non-finite gradient norm ({grad_norm.item()}): optimiser step skipped")
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return True
