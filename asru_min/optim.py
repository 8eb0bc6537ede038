"""What every trainer here shares (stage-1 steering, GRPO, the baselines, pretraining): the log-probability the
model gives to chosen tokens, the token mean over a mask, one guarded optimiser step, shuffled batches and the
seeds of their random streams, and the context managers that switch a model's modes (eval / train, gradient
checkpointing) and put the previous state back after the block."""

from __future__ import annotations

import random
import warnings
from contextlib import contextmanager

import torch
from torch.utils.checkpoint import checkpoint

from . import distributed
from .processor import IGNORE_INDEX


def token_logprobs(model, batch: dict, target_mask: torch.Tensor | None = None, temperature: float = 1.0,
                   image_features=None, chunk_tokens: int = 4096) -> torch.Tensor:
    """log pi(x_t | x_<t) = log_softmax(logits_{t-1} / temperature)[x_t] for every target token t, one forward.

    batch: input_ids and attention_mask (N, L), optional pixel_values / image_grid_thw; target_mask (N, L) marks
    the tokens to score (default: batch["labels"] != -100, the answer tokens of a `data.qa_batch`). Returns (N, L)
    float32, 0 where target_mask is False. GRPO passes its rollout temperature, as the release does, so ratio and
    KL compare the distributions the responses were sampled from.

    The model runs once up to its final norm (`model(..., return_hidden=True)`, only the last k + 1 positions,
    k = width of the target region: rows are left-padded, so answers sit at the end); `model.lm_head` then turns
    the hidden states of the n target tokens into float32 logits `chunk_tokens` tokens at a time (0: all at once),
    so at most (chunk_tokens, V) float32 logits exist, never (N, L, V). With autograd each chunk of several is
    checkpointed: its logits are recomputed in backward instead of kept. Equal to the one-piece computation."""
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
    h = model(input_ids, attention_mask=batch["attention_mask"], pixel_values=batch.get("pixel_values"),
              image_grid_thw=batch.get("image_grid_thw"), image_features=image_features,
              logits_to_keep=k + 1, return_hidden=True)  # (N, k + 1, D)
    rows, cols = target_mask[:, first:].nonzero(as_tuple=True)  # target (row, column - first), row-major
    h = h[:, :-1][rows, cols]  # (n, D): position t - 1 predicts target t
    targets = input_ids[:, first:][rows, cols]  # (n,)
    size = chunk_tokens if chunk_tokens > 0 else h.shape[0]
    checkpointed = torch.is_grad_enabled() and h.shape[0] > size
    lm_head = getattr(model, "module", model).lm_head  # a DistributedDataParallel wrapper holds it as .module
    logp = []
    for s in range(0, h.shape[0], size):
        args = (lm_head, h[s : s + size], targets[s : s + size], temperature)
        logp.append(checkpoint(chosen_logprobs, *args, use_reentrant=False) if checkpointed else chosen_logprobs(*args))
    out[rows, cols + first] = torch.cat(logp)
    return out


def chosen_logprobs(lm_head, h: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log_softmax(lm_head(h) / temperature)[target] for hidden states h (n, D) and targets (n,) -> (n,) float32:
    logit of the target minus the log-sum-exp over the vocabulary, from (n, V) float32 logits."""
    logits = lm_head(h).float() / temperature  # (n, V)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def answer_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(y|x), -NLL(x, y)) per row of a `data.qa_batch` with answers, both (B,): the sum and the mean of
    `token_logprobs` over the row's answer tokens y (labels != -100), NLL(x, y) = -(1/|y|) sum_t log p(y_t | x, y_<t).
    The one place the answer NLL is written (pretraining's loss, the baselines' losses)."""
    total = token_logprobs(model, batch).sum(-1)  # (B,); token_logprobs is 0 outside the answer
    return total, total / (batch["labels"] != IGNORE_INDEX).sum(-1).clamp(min=1)


GRAD_CHECKPOINT = ("auto", "on", "off")


def grad_checkpoint_enabled(setting: str, device) -> bool:
    """The --grad-checkpoint setting on a device: "on", "off", or "auto" = on for CUDA (where activations, not
    time, bound the batch), off elsewhere."""
    if setting not in GRAD_CHECKPOINT:
        raise ValueError(f"grad_checkpoint must be one of {GRAD_CHECKPOINT}, got {setting!r}")
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cuda")


@contextmanager
def gradient_checkpointing(model: torch.nn.Module, on: bool = True):
    """Inside the block, with autograd, every module that supports it (the text decoder's layers, the vision
    tower's blocks: `grad_checkpoint` attributes) keeps only each block's input and recomputes the block in
    backward (torch.utils.checkpoint, non-reentrant; the RNG state is replayed, so dropout masks match): the same
    gradients for about one layer's activations instead of all. Off outside the block, so stage 1's hooked forward
    never runs checkpointed; a hooked block is never checkpointed anyway (`text.checkpointable`)."""
    with temporarily([m for m in model.modules() if hasattr(type(m), "grad_checkpoint")], "grad_checkpoint", on):
        yield


@contextmanager
def temporarily(objects, name: str, value):
    """Set attribute `name` of every object to `value` inside the block; after it (even on error) each object
    gets its own previous value back. The one way this project flips a flag for a block: a module's mode
    (`eval_mode`), gradient checkpointing, LoRA adapters on/off (`lora.lora_enabled`), requires_grad."""
    objects = list(objects)
    before = [getattr(o, name) for o in objects]
    try:
        for o in objects:
            setattr(o, name, value)
        yield
    finally:
        for o, was in zip(objects, before):
            setattr(o, name, was)


@contextmanager
def eval_mode(*modules: torch.nn.Module):
    """The modules (every submodule) in eval mode inside the block: no dropout, LoRA dropout included; after it
    each submodule is back in its previous mode (`module.eval()` sets the same `training` flags)."""
    with temporarily([m for module in modules for m in module.modules()], "training", False):
        yield


@contextmanager
def train_mode(*modules: torch.nn.Module):
    """`eval_mode`'s counterpart: train mode (dropout on) inside the block, each previous mode back after it."""
    with temporarily([m for module in modules for m in module.modules()], "training", True):
        yield


def masked_mean(x: torch.Tensor, mask: torch.Tensor, token_count=None) -> torch.Tensor:
    """Token mean of x over mask (all masked tokens of the batch weigh the same: verl's "token-mean"):
    sum(x * mask) / token_count, token_count = mask.sum() (at least 1) unless given. A micro-batch passes its
    mini-batch's token count, so the micro-batches' values add up to the mini-batch's mean."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / (mask.sum().clamp(min=1.0) if token_count is None else token_count)


def shuffled_batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """0..n-1 in the order rng.shuffle gives, cut into consecutive batches of batch_size (the last one shorter)."""
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def derived_seed(seed: int, *ids: int, base: int = 1_000_003) -> int:
    """The seed of one random stream: the run's seed followed by the stream's ids (epoch, step, sample index) as
    digits of `base`, ((seed * base + id_1) * base + id_2) ...: streams with as many ids, each below `base`, never
    share a seed. GRPO draws its step schedule (base 1000), each step's mini-batches and each prompt's samples
    from generators seeded so, never from random's or torch's global state: a resumed run draws what the
    interrupted one would have, and a prompt's samples do not depend on what shares its generation call.
    The other streams keep their own seeds, because the weights, tables and draws made so far depend on them:
    stage 1 and the data draw from random.Random(f"{seed}/{purpose}") (a str seed is hashed, the same in every
    process and Python version), stage 1's schedule and the baselines from random.Random(seed), and LoRA's init
    and dropout from torch.manual_seed(seed)."""
    for i in ids:
        seed = seed * base + i
    return seed


def optimizer_step(loss, params: list, optimizer: torch.optim.Optimizer, grad_clip: float = 0.0,
                   after_backward=None, data_parallel: bool = False) -> bool:
    """zero_grad -> backward -> (after_backward()) -> clip to grad_clip (0: no clipping) -> step. Returns False,
    with a warning, and changes no parameter when the loss or the gradient norm is not finite: one NaN/inf batch
    would otherwise poison every weight through AdamW's moment estimates. after_backward lets a caller move
    gradients first (stage 1 copies a bf16 weight's gradient to its float32 master copy, which `params` names).

    Gradient accumulation: `loss` may be an iterable of micro-batch losses whose sum is the mini-batch's loss
    (each normalised by the whole mini-batch, e.g. grpo.policy_loss's `token_count`). Each is backpropagated as it
    arrives (a generator computes the next forward only then, so one micro-batch's graph exists at a time), the
    gradients add up, and the clip, the non-finite checks and the step act once on the sum: the same step as the
    one-piece loss.

    data_parallel: backward sums the gradients over torchrun's processes (DistributedDataParallel), so every
    process must backpropagate the same number of pieces: each piece's finiteness is agreed by all of them (they
    skip the step together), and the summed gradients give every process the same gradient norm."""
    optimizer.zero_grad(set_to_none=True)
    finite = True
    for part in [loss] if isinstance(loss, torch.Tensor) else loss:
        part_finite = torch.isfinite(part)
        if data_parallel:
            part_finite = distributed.all_true(part_finite)
        if not part_finite:
            if finite:
                warnings.warn(f"non-finite loss ({part.item()} here, or on another process): optimiser step skipped")
            finite = False
        elif finite:
            part.backward()
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        return False
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
