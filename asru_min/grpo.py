"""Stage 2 of ASRU: refusal-boundary optimisation with GRPO. One step:

1. rollouts   - G sampled responses per prompt of the boundary set (forget + retain QA), temperature 1.5,
                top_p 0.95, one prefill per prompt (`model.generate(num_samples=G)`), `rollout_batch` prompts per
                call, each prompt drawing from its own stream seeded by (seed, step, its index in the set);
2. rewards    - `sample_reward(response, qa, forget)` (`asru_reward`, or the release's), one scalar per response;
3. advantages - `group_advantages`: A_i = (r_i - mean_group) / (std_group + eps), for every token of response i;
4. log-probs  - `optim.token_logprobs` under the current policy (old, no grad) and the reference policy
                (LoRA adapters off, no grad);
5. update     - `policy_loss`: clipped ratio surrogate, clip range [1 - 0.2, 1 + 0.3], plus k3 KL to the reference
                (coefficient 0.1), token mean; AdamW, gradient clip 1.0; a non-finite loss skips the step.
                A mini-batch runs as micro-batches of a token budget with gradient accumulation (`micro_batches`;
                the token mean stays over the whole mini-batch), optionally with gradient checkpointing.

Under torchrun (`distributed`) each process rolls out, scores and trains on its block of each step's prompts (whole
groups, so advantages stay local); mini-batches and token means are taken over all processes' rows and
DistributedDataParallel sums the gradients, so N processes make the one-process step.

Row layout everywhere: [prompt (left-padded) | response (right-padded)], so a row can have pads on both ends;
`attention_mask` marks real tokens, `response_mask` the response tokens up to and including the EOS (a token the
policy chose, so it is trained like any other).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import distributed
from .data import qa_batch
from .lora import lora_enabled
from .metrics import is_refusal, is_release_refusal, leaks, release_normalize, rouge_l, rouge_l_stemmed
from .optim import (derived_seed, eval_mode, grad_checkpoint_enabled, gradient_checkpointing, masked_mean,
                    optimizer_step, shuffled_batches, token_logprobs, train_mode)


@dataclass
class GRPOConfig:
    """Every hyper-parameter of stage 2. No defaults: `train.TrainConfig.grpo()` builds it (the one place the
    defaults and the release's values live)."""

    group_size: int  # G samples per prompt
    temperature: float
    top_p: float
    max_new_tokens: int
    prompts_per_step: int  # prompts per rollout batch
    rollout_batch: int  # prompts (x G samples) per generation call; 0 = all prompts of the step in one call
    mini_batch_size: int  # responses per optimiser step; 0 = the whole rollout batch (prompts_per_step * G)
    epochs_per_rollout: int  # passes over one rollout batch (verl's ppo_epochs)
    grpo_epochs: int  # passes over the boundary set
    clip_low: float
    clip_high: float
    dual_clip: float  # bound of -pg for negative advantages (0: off)
    kl_coef: float
    grpo_lr: float
    grpo_weight_decay: float
    grad_clip: float
    seed: int
    micro_batch_tokens: int  # rows x padded length per forward/backward piece (0: a mini-batch in one piece)
    grad_checkpoint: str  # "auto" (on for CUDA), "on", "off": decoder layers recomputed in the update's backward
    logprob_chunk: int  # target tokens whose float32 logits exist at once in token_logprobs (0: all)
    adv_eps: float = 1e-6  # the advantage's epsilon (fixed, not a flag: it only guards a group of equal rewards)
    reward: str = "plain"  # "plain": asru_reward; "release": release_reward (`sample_reward`)
    reward_reference: str = "fact"  # ROUGE reference of the plain reward: "fact" (qa.ground_truth) or "sentence"


# --- the tiered ASRU reward (docs/METHOD.md, "Reward"): rule-based, no judge model; the first case that applies wins
#
#     | case                                     | forget sample | retain sample |
#     |------------------------------------------|---------------|---------------|
#     | norm(ground truth) in norm(response)     | 0.0           | 1.0           |
#     | refusal(response)                        | 1.0           | 0.0           |
#     | ROUGE-L band                             | 0 < R < 0.4   | R > 0.6       |
#     |                                          |   -> 0.5      |   -> 0.5      |
#     | anything else                            | 0.1           | 0.1           |
#
# R = ROUGE-L F1 of the response against the ground truth (`sample_reward` chooses which). The order matters: a
# refusal that also states the fact is a leak. The forget band pays a little for wrong but on-topic answers (near
# the boundary); the retain band pays for answers close to the truth.
FORGET_LEAK, FORGET_REFUSAL, FORGET_BAND = 0.0, 1.0, 0.5
RETAIN_LEAK, RETAIN_REFUSAL, RETAIN_BAND = 1.0, 0.0, 0.5
OTHERWISE = 0.1
FORGET_BAND_HIGH = 0.4  # forget band: 0 < R < 0.4 (both ends open)
RETAIN_BAND_LOW = 0.6  # retain band: R > 0.6 (open)


def asru_reward(response: str, truth: str, forget: bool, rouge_reference: str | None = None) -> float:
    """The table above: leak = metrics.leaks (the response reveals the fact: for a bare value, its normalised
    words appear whole in the response's; for a benchmark sentence's short fact, its most specific part does, or
    a negation denies it), refusal = metrics.is_refusal, R = metrics.rouge_l against `rouge_reference` (default:
    the truth)."""
    return tier(forget, leaks(response, truth), lambda: is_refusal(response),
                lambda: rouge_l(response, truth if rouge_reference is None else rouge_reference))


def tier(forget: bool, leak: bool, refusal: Callable[[], bool], rouge: Callable[[], float]) -> float:
    """The table above, given the response's leak decision and (asked only when needed) its refusal test and R."""
    if leak:
        return FORGET_LEAK if forget else RETAIN_LEAK
    if refusal():
        return FORGET_REFUSAL if forget else RETAIN_REFUSAL
    r = rouge()
    if forget and 0.0 < r < FORGET_BAND_HIGH:
        return FORGET_BAND
    if not forget and r > RETAIN_BAND_LOW:
        return RETAIN_BAND
    return OTHERWISE


def release_reward(response: str, sentence: str, forget: bool) -> float:
    """The reward of the authors' release (EasyR1/examples/reward_function/all_reward_copy.py): the same table and
    values, every test against the whole ground-truth sentence. leak: metrics.release_normalize(sentence) is a
    plain substring of release_normalize(response) (so the response must repeat the sentence); refusal:
    metrics.is_release_refusal ("don't" / "can't" only with a curly apostrophe, no "sorry": "Sorry, I don't
    know." is no refusal and earns 0.1); R: metrics.rouge_l_stemmed (rouge-score with its Porter stemmer)."""
    return tier(forget, release_normalize(sentence) in release_normalize(response),
                lambda: is_release_refusal(response), lambda: rouge_l_stemmed(response, sentence))


REWARDS = ("plain", "release")
REWARD_REFERENCES = ("fact", "sentence")


def sample_reward(response: str, qa, forget: bool, reward: str = "plain", reference: str = "fact") -> float:
    """The reward of one response to a boundary sample `qa`. "plain": `asru_reward` with the short fact
    qa.ground_truth as truth and, as ROUGE reference, that fact ("fact") or the answer sentence qa.answer
    ("sentence"); "release": `release_reward` against qa.answer (the release's ground truth is the sentence)."""
    if reward == "release":
        return release_reward(response, qa.answer, forget)
    return asru_reward(response, qa.ground_truth, forget, qa.answer if reference == "sentence" else None)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean_g(r)) / (std_g(r) + eps), rewards (B*G,) prompt-major (row b*G + g = sample g of prompt b).

    std is the unbiased (divide by G - 1) standard deviation, as the release (EasyR1/verl, `torch.std`), so the
    advantage scale matches. A group of equal rewards gets advantages exactly 0 (no NaN, no learning signal)."""
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


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_low: float, clip_high: float, kl_coef: float,
                dual_clip: float = 0.0, token_count=None) -> tuple[torch.Tensor, dict]:
    """Clipped GRPO surrogate with the k3 KL penalty. Per token t of response i (tensors (N, T); advantages (N,)
    broadcast over tokens, or (N, T); mask True on every response token including the EOS):

        ratio = exp(logp - old_logp)
        pg    = -min(ratio * A_i, clip(ratio, 1 - clip_low, 1 + clip_high) * A_i)
        pg    = min(pg, -dual_clip * A_i)  where A_i < 0 (dual clip, if dual_clip > 0: a response the policy now
                                          makes far likelier than when it was sampled cannot push pg up unboundedly)
        k3    = exp(ref_logp - logp) - (ref_logp - logp) - 1          (>= 0)
        loss  = token_mean_mask(pg + kl_coef * k3)

    k3's value, on tokens sampled from pi, is an unbiased estimate of KL(pi || ref) (what stats["kl"] reports).
    As a loss its gradient is not that of KL(pi || ref): the samples are fixed and only logp is differentiated,
    d k3 / d logp = 1 - ref/pi, so E_pi[(1 - ref/pi) grad logp] = -E_pi[(ref/pi) grad logp] = grad KL(ref || pi)
    (E_pi[grad logp] = 0): the penalty pulls pi toward ref along the reverse KL, as in verl's "low_var_kl".

    Returns (loss, stats): pg_loss, kl (mean k3), clip_frac (tokens where the clipped term is the active one),
    clip_low_frac / clip_high_frac (ratio below / above the range), dual_clip_frac (tokens the dual clip bounds),
    ratio_mean. With one on-policy update per rollout the ratio is exactly 1 and no clip acts.

    token_count: the token mean's denominator (default: mask.sum()). With micro-batches, each passes the number
    of response tokens of its whole mini-batch: then loss and stats of the micro-batches sum to the mini-batch's
    (gradient accumulation equals the one-piece update); a multi-process run passes the count over all ranks."""
    if not (logp.shape == old_logp.shape == ref_logp.shape == mask.shape):
        raise ValueError(f"shape mismatch: logp {tuple(logp.shape)}, old {tuple(old_logp.shape)}, "
                         f"ref {tuple(ref_logp.shape)}, mask {tuple(mask.shape)}")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (N, 1): one advantage for every token of a response
    mask = mask.bool()
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = -torch.minimum(ratio * advantages, clipped * advantages)
    dual = (advantages < 0) & (pg > -dual_clip * advantages) & (dual_clip > 0)  # (N, T)
    pg = torch.where(dual, -dual_clip * advantages, pg)
    log_ref_ratio = ref_logp - logp
    k3 = torch.exp(log_ref_ratio) - log_ref_ratio - 1.0
    n = token_count  # None: this mask's own count
    loss = masked_mean(pg + kl_coef * k3, mask, n)
    with torch.no_grad():
        clip_active = (clipped * advantages < ratio * advantages) & mask  # the min picked the clipped term
        stats = {"pg_loss": masked_mean(pg, mask, n).item(), "kl": masked_mean(k3, mask, n).item(),
                 "clip_frac": masked_mean(clip_active.float(), mask, n).item(),
                 "clip_low_frac": masked_mean((ratio < 1.0 - clip_low).float(), mask, n).item(),
                 "clip_high_frac": masked_mean((ratio > 1.0 + clip_high).float(), mask, n).item(),
                 "dual_clip_frac": masked_mean((dual & mask).float(), mask, n).item(),
                 "ratio_mean": masked_mean(ratio, mask, n).item()}
    return loss, stats


def build_boundary_set(forget_qas: list, retain_qas: list, size: int, kinds: tuple, seed: int,
                       forget_share: float) -> list:
    """The stage-2 training set: `size` (qa, forget) pairs drawn at random, a `forget_share` of them forget QA
    (release: 200 + 200) and the rest retain QA, in random order. Only free-form kinds belong here (default:
    generation): the reward compares the response with the ground truth, which an mc letter never contains."""
    rng = random.Random(seed)
    forget = [qa for qa in forget_qas if qa.kind in kinds]
    retain = [qa for qa in retain_qas if qa.kind in kinds]
    if not forget or not retain:
        raise ValueError(f"boundary set needs forget and retain QA of kinds {kinds}: got {len(forget)}, {len(retain)}")
    if not 0.0 < forget_share < 1.0:
        raise ValueError(f"forget_share must be in (0, 1), got {forget_share}")
    n_forget = min(round(size * forget_share), len(forget))
    n_retain = min(size - n_forget, len(retain))
    samples = [(qa, True) for qa in rng.sample(forget, len(forget))[:n_forget]]
    samples += [(qa, False) for qa in rng.sample(retain, len(retain))[:n_retain]]
    rng.shuffle(samples)
    return samples


def split_image_features(image_features, image_grid_thw: torch.Tensor, prompt_ids: torch.Tensor, config) -> list:
    """Cut `encode_images` output (embeds (N, D), deepstack [(N, D)]) and image_grid_thw (n_images, 3) into one
    chunk per prompt, so the G rows of a group (and any mini-batch of rows) reuse their prompt's features. A
    prompt's share: as many feature rows as it has image placeholder tokens, as many grid rows as it has
    <|vision_start|> tokens (images are consumed in placeholder order across the batch)."""
    embeds, deepstack = image_features
    n_rows = (prompt_ids == config.image_token_id).sum(dim=1).tolist()
    n_images = (prompt_ids == config.vision_start_token_id).sum(dim=1).tolist()
    cuts = [embeds.split(n_rows)] + [d.split(n_rows) for d in deepstack]
    grids = torch.as_tensor(image_grid_thw).split(n_images)
    return [(c[0], list(c[1:]), g) for c, g in zip(zip(*cuts), grids)]


def join_image_features(chunks: list) -> tuple:
    """Inverse of `split_image_features` for chosen rows -> (image_features, image_grid_thw); (None, None) if
    those rows hold no image."""
    if sum(c[0].shape[0] for c in chunks) == 0:
        return None, None
    embeds = torch.cat([c[0] for c in chunks])
    deepstack = [torch.cat([c[1][i] for c in chunks]) for i in range(len(chunks[0][1]))]
    return (embeds, deepstack), torch.cat([c[2] for c in chunks])


def trim_padding(*row_tensors: torch.Tensor, attention_mask: torch.Tensor) -> tuple:
    """Drop the columns that are padding in every row (positions count real tokens only, so this changes no
    row's computation and saves time)."""
    real = attention_mask.bool().any(dim=0).nonzero()
    lo, hi = int(real[0]), int(real[-1]) + 1
    return tuple(t[:, lo:hi] for t in row_tensors) + (attention_mask[:, lo:hi],)


def sampling_streams(seed: int, step: int, sample_ids: list[int], device) -> list[torch.Generator]:
    """One generator per prompt: the stream of boundary-set sample i at step s is seeded from (seed, s, i) alone,
    so its G responses do not depend on which prompts share its generation call (--rollout-batch) or its
    process."""
    return [torch.Generator(device=device).manual_seed(derived_seed(seed, step, i)) for i in sample_ids]


def _left_pad(x: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)


def _right_pad(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


# --- one step: `grpo_step` on one screen, then the parts it calls, in its order


@dataclass
class Rollout:
    """The G sampled responses to each of B prompts, with their rewards. Rows are prompt-major (row b*G + g =
    sample g of prompt b), each [prompt (left-padded to P) | response (right-padded to T)]."""

    input_ids: torch.Tensor  # (B*G, P+T)
    attention_mask: torch.Tensor  # (B*G, P+T) long, 1 on real tokens (a row can have pads on both ends)
    response_mask: torch.Tensor  # (B*G, P+T) bool, the response tokens up to and including the EOS
    prompt_ids: torch.Tensor  # (B, P) the prompts alone
    rewards: torch.Tensor  # (B*G,) float32, `sample_reward` of each response
    responses: list[str]  # B*G decoded responses
    forget: list[bool]  # B*G: the row's prompt is a forget sample
    chunks: list | None  # B per-prompt image features from `split_image_features`: (embeds (n_b, D), deepstack
    #                      [(n_b, D)], grid (k_b, 3)), n_b placeholder tokens, k_b images; None: no prompt has one
    pixel_values: torch.Tensor | None  # (N, C*t*p*p) the patches of every image, in placeholder order
    image_grid_thw: torch.Tensor | None  # (n_images, 3)


@torch.no_grad()
def rollout(model, processor, samples: list, cfg: GRPOConfig, generators: list[torch.Generator]) -> Rollout:
    """G sampled responses per prompt and their rewards (`sample_reward` with cfg.reward, cfg.reward_reference).
    The prompts are generated `cfg.rollout_batch` at a time (0: all at once), prompt b drawing from generators[b],
    so the responses do not depend on the chunk size."""
    G, B = cfg.group_size, len(samples)
    device = model.device
    n = cfg.rollout_batch or B
    parts = []
    for lo in range(0, B, n):  # one generation call per chunk of prompts
        batch = qa_batch(processor, [qa for qa, _ in samples[lo:lo + n]], with_answers=False, device=device)
        features, chunks = None, None
        if batch.get("pixel_values") is not None:  # vision runs once per chunk, reused by all G samples
            features = model.encode_images(batch["pixel_values"], batch["image_grid_thw"])
            chunks = split_image_features(features, batch["image_grid_thw"], batch["input_ids"], model.config)
        # (placeholder tokens are banned: a response holding one could not be fed back through forward)
        tokens, gen_mask = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                                          image_features=features, image_grid_thw=batch.get("image_grid_thw"),
                                          max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                          top_p=cfg.top_p, num_samples=G, generator=generators[lo:lo + n],
                                          eos_token_ids=processor.eos_token_ids,
                                          suppress_token_ids=[model.config.image_token_id, model.config.video_token_id])
        parts.append((batch, chunks, tokens, gen_mask.bool()))
    # the chunks joined: prompts left-padded to the longest (P), responses right-padded to the longest (T)
    P = max(b["input_ids"].shape[1] for b, *_ in parts)
    T = max(t.shape[1] for *_, t, _ in parts)
    prompt_ids = torch.cat([_left_pad(b["input_ids"], P, processor.pad_token_id) for b, *_ in parts])  # (B, P)
    prompt_mask = torch.cat([_left_pad(b["attention_mask"], P, 0) for b, *_ in parts]).bool()  # (B, P)
    tokens = torch.cat([_right_pad(t, T) for *_, t, _ in parts])  # (B*G, T)
    gen_mask = torch.cat([_right_pad(m, T) for *_, m in parts])  # (B*G, T)
    chunks = None  # image features per prompt; a chunk without images gets empty ones
    with_images = [cs for _, cs, *_ in parts if cs]
    if with_images:
        embeds, deepstack, grid = with_images[0][0]
        empty = (embeds[:0], [d[:0] for d in deepstack], grid[:0])
        chunks = [c for b, cs, *_ in parts for c in (cs or [empty] * b["input_ids"].shape[0])]
    pixel_values = [b["pixel_values"] for b, *_ in parts if b.get("pixel_values") is not None]
    grids = [b["image_grid_thw"] for b, *_ in parts if b.get("image_grid_thw") is not None]

    responses = [processor.decode(row[m].tolist(), skip_special_tokens=True) for row, m in zip(tokens, gen_mask)]
    forget = [f for _, f in samples for _ in range(G)]
    qas = [qa for qa, _ in samples for _ in range(G)]
    rewards = [sample_reward(r, qa, f, cfg.reward, cfg.reward_reference) for r, qa, f in zip(responses, qas, forget)]
    return Rollout(input_ids=torch.cat([prompt_ids.repeat_interleave(G, dim=0), tokens], dim=1),
                   attention_mask=torch.cat([prompt_mask.repeat_interleave(G, dim=0), gen_mask], dim=1).long(),
                   response_mask=torch.cat([torch.zeros_like(prompt_mask).repeat_interleave(G, 0), gen_mask], 1),
                   prompt_ids=prompt_ids, rewards=torch.tensor(rewards, dtype=torch.float32), responses=responses,
                   forget=forget, chunks=chunks, pixel_values=torch.cat(pixel_values) if pixel_values else None,
                   image_grid_thw=torch.cat(grids) if grids else None)


def grpo_step(model, processor, samples: list, cfg: GRPOConfig, optimizer, params: list, step: int,
              sample_ids: list[int] | None = None, policy=None) -> dict:
    """One GRPO step on one rollout batch: rollout -> advantages -> old / reference log-probs -> updates -> stats.
    sample_ids: each sample's index in the boundary set, which picks its sampling stream (`sampling_streams`;
    default 0, 1, ...). policy: `model` wrapped in DistributedDataParallel under torchrun
    (`distributed.data_parallel`), else model. Under torchrun `samples` is this process's block of the step's
    prompts (`distributed.block`); the mini-batches, their token means and the record are those of one process
    holding all the step's prompts. Returns the step's log record."""
    t0 = time.time()
    sample_ids = range(len(samples)) if sample_ids is None else sample_ids
    policy = model if policy is None else policy
    with eval_mode(model):  # rollouts and old / reference log-probs without (LoRA) dropout
        ro = rollout(model, processor, samples, cfg, sampling_streams(cfg.seed, step, sample_ids, model.device))
        advantages = group_advantages(ro.rewards, cfg.group_size, cfg.adv_eps).to(model.device)  # (B*G,)
        rows = distributed.gather(row_facts(ro))  # every process's rows, in rank order
        minibatches = draw_minibatches(ro, [len(r["rewards"]) for r in rows], cfg, step)
        old, ref = old_and_reference_logprobs(model, ro, minibatches, cfg)
    with train_mode(model):
        totals, steps_done = update(model, policy, ro, advantages, old, ref, minibatches, cfg, optimizer, params)
    return step_record(step, rows, totals, steps_done, len(minibatches), t0)


def row_facts(ro: Rollout) -> dict:
    """What the step's record needs of this process's rows, as plain lists (gathered over the processes)."""
    return {"rewards": ro.rewards.tolist(), "forget": ro.forget, "refusal": [is_refusal(t) for t in ro.responses],
            "length": ro.response_mask.sum(dim=1).tolist(), "first": ro.responses[0]}


@dataclass
class MiniBatch:
    """The rows of one optimiser step that this process holds, and the pieces they run in."""

    rows: list[int]  # this process's rollout rows of the mini-batch, ascending (possibly none)
    pieces: list[list[int]]  # the rows cut by `micro_batches`: one forward / backward each
    n_pieces: int  # the most pieces any process has for this mini-batch


def draw_minibatches(ro: Rollout, rows_per_rank: list[int], cfg: GRPOConfig, step: int) -> list[MiniBatch]:
    """cfg.epochs_per_rollout passes over all the step's rows (every process's, in rank order: the order one
    process would hold them), each reshuffled and cut into mini-batches of cfg.mini_batch_size (0: one). This
    process trains on its rows first .. first + n_rows - 1 of each (renumbered from 0), so a mini-batch may hold
    none of them.
    Every forward / backward runs on pieces of at most cfg.micro_batch_tokens (rows x padded length); the old /
    ref passes use the same pieces, so their log-probs line up with the update's column for column.
    DistributedDataParallel sums the gradients inside each backward, where it waits for every process: all
    backpropagate as many pieces per mini-batch as the process with the most (the others add pieces of nothing)."""
    n_all, n_rows, first = sum(rows_per_rank), ro.input_ids.shape[0], sum(rows_per_rank[: distributed.rank()])
    rng = random.Random(derived_seed(cfg.seed, step))
    drawn = []
    for _ in range(cfg.epochs_per_rollout):
        drawn += shuffled_batches(n_all, cfg.mini_batch_size or n_all, rng)
    mine = [sorted(i - first for i in batch if first <= i < first + n_rows) for batch in drawn]
    pieces = [micro_batches(ro.attention_mask, rows, cfg.micro_batch_tokens) if rows else [] for rows in mine]
    most = [max(counts) for counts in zip(*distributed.gather([len(p) for p in pieces]))]
    return [MiniBatch(rows, p, n) for rows, p, n in zip(mine, pieces, most)]


@torch.no_grad()
def old_and_reference_logprobs(model, ro: Rollout, minibatches: list[MiniBatch], cfg: GRPOConfig) -> tuple:
    """(old, ref): per piece (key: the tuple of its rows) the log-probs (n, L') of its responses under the policy
    that sampled them and under the reference policy (LoRA adapters off; only when cfg.kl_coef > 0). One
    mini-batch and one inner epoch is exactly on-policy (old == current, ratio == 1): no old pass (old = {}), the
    update's logp.detach() stands in for it."""
    pieces = [rows for mb in minibatches for rows in mb.pieces]
    old = {} if len(minibatches) == 1 else {tuple(rows): rows_logprobs(model, ro, rows, cfg)[0] for rows in pieces}
    ref = {}
    if cfg.kl_coef > 0:
        with lora_enabled(model, False):
            ref = {tuple(rows): rows_logprobs(model, ro, rows, cfg)[0] for rows in pieces}
    return old, ref


def update(model, policy, ro: Rollout, advantages: torch.Tensor, old: dict, ref: dict, minibatches: list[MiniBatch],
           cfg: GRPOConfig, optimizer, params: list) -> tuple[dict, int]:
    """One optimiser step per mini-batch (`optimizer_step` accumulates the gradients of its pieces), with gradient
    checkpointing if cfg.grad_checkpoint says so. Returns this process's sums over its pieces of the loss and of
    each `policy_loss` stat, and the number of steps taken (a non-finite loss skips one)."""
    totals, steps_done = {"loss": 0.0}, 0
    with gradient_checkpointing(model, grad_checkpoint_enabled(cfg.grad_checkpoint, model.device)):
        for mb in minibatches:
            # the mini-batch's response tokens over all processes: the token mean's denominator
            token_count = max(distributed.all_reduce_sum([ro.response_mask[mb.rows].sum().item()])[0], 1.0)
            done = []
            losses = piece_losses(model, policy, ro, mb, advantages, old, ref, cfg, token_count, done)
            steps_done += optimizer_step(losses, params, optimizer, cfg.grad_clip, data_parallel=True)
            for loss, stats in done:
                totals["loss"] += loss
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
    return totals, steps_done


def piece_losses(model, policy, ro: Rollout, mb: MiniBatch, advantages: torch.Tensor, old: dict, ref: dict,
                 cfg: GRPOConfig, token_count: float, done: list):
    """The policy loss of each piece of a mini-batch, normalised by the mini-batch's token count over all
    processes (so the pieces' losses sum to its one-piece loss), computed one at a time as `optimizer_step` asks
    for it, with (loss, stats) appended to `done`; then zero losses (`idle_loss`) up to mb.n_pieces."""
    for rows in mb.pieces:
        chunks = trained_image_chunks(model, ro, rows, cfg.group_size)
        logp, resp = rows_logprobs(policy, ro, rows, cfg, image_chunks=chunks)
        old_logp = old[tuple(rows)] if old else logp.detach()
        ref_logp = ref[tuple(rows)] if ref else logp.detach()
        loss, stats = policy_loss(logp, old_logp, ref_logp, advantages[rows], resp, cfg.clip_low, cfg.clip_high,
                                  cfg.kl_coef, cfg.dual_clip, token_count=token_count)
        done.append((loss.item(), stats))
        yield loss * distributed.world_size()  # DDP averages the processes' gradients; the sum is the loss's
    for _ in range(mb.n_pieces - len(mb.pieces)):
        yield idle_loss(policy, model.device)


def trained_image_chunks(model, ro: Rollout, rows: list[int], group_size: int) -> dict | None:
    """The image features of an update piece's forward: None (reuse the rollout's, `ro.chunks`) unless a
    parameter of the vision tower trains; then the images of the piece's prompts encoded again, with autograd
    ({prompt: its chunk}). Each image is encoded on its own (attention within an image), so encoding a piece's
    prompts gives what encoding the whole rollout gives them. Once per piece, not once per mini-batch: every piece
    is backpropagated as soon as it is computed (`optimizer_step`), which frees the graph of any features it used."""
    if not ro.chunks or not any(p.requires_grad for p in model.model.visual.parameters()):
        return None
    prompts = sorted({r // group_size for r in rows})
    grid = torch.cat([ro.chunks[b][2] for b in prompts])  # (k, 3): the images of these prompts, in order
    if grid.shape[0] == 0:
        return None
    pixels = ro.pixel_values.split([int(c[2].prod(dim=-1).sum()) for c in ro.chunks])  # per prompt (N_b, C*t*p*p)
    features = model.encode_images(torch.cat([pixels[b] for b in prompts]), grid)
    return dict(zip(prompts, split_image_features(features, grid, ro.prompt_ids[prompts], model.config)))


def rows_logprobs(model, ro: Rollout, rows: list[int], cfg: GRPOConfig, image_chunks=None) -> tuple:
    """token_logprobs of the response tokens of some rollout rows, all-pad columns trimmed:
    (logp (n, L'), response_mask (n, L')). image_chunks: {prompt: features} to use instead of ro.chunks."""
    idx = torch.tensor(rows, device=ro.input_ids.device)
    ids, resp, att = trim_padding(ro.input_ids[idx], ro.response_mask[idx], attention_mask=ro.attention_mask[idx])
    chunks = image_chunks if image_chunks is not None else ro.chunks
    feats, grid = join_image_features([chunks[r // cfg.group_size] for r in rows]) if chunks else (None, None)
    logp = token_logprobs(model, {"input_ids": ids, "attention_mask": att, "image_grid_thw": grid}, resp,
                          temperature=cfg.temperature, image_features=feats, chunk_tokens=cfg.logprob_chunk)
    return logp, resp


def micro_batches(attention_mask: torch.Tensor, rows: list[int], budget: int) -> list[list[int]]:
    """Split a mini-batch's rows (in order) into consecutive pieces of at most `budget` tokens, counted as rows x
    the piece's padded length (the span of its real tokens, as `trim_padding` cuts it); a row longer than the
    budget is a piece of its own. budget 0: one piece."""
    if budget <= 0:
        return [list(rows)]
    real = attention_mask[rows].bool()  # (n, P+T)
    cols = torch.arange(real.shape[1], device=real.device)
    first = torch.where(real, cols, real.shape[1]).amin(1).tolist()
    last = torch.where(real, cols, -1).amax(1).tolist()
    pieces, span = [], None  # span: first and last real column of the current piece
    for r, a, b in zip(rows, first, last):
        if pieces:
            lo, hi = min(span[0], a), max(span[1], b)
            if (len(pieces[-1]) + 1) * (hi - lo + 1) <= budget:
                pieces[-1].append(r)
                span = (lo, hi)
                continue
        pieces.append([r])
        span = (a, b)
    return pieces


def idle_loss(policy, device) -> torch.Tensor:
    """A zero loss through policy's forward (one token), for a process that holds no row of a mini-batch:
    DistributedDataParallel sums the gradients inside backward, where it waits for every process."""
    ids = torch.zeros(1, 1, dtype=torch.long, device=device)
    return policy(ids, attention_mask=torch.ones_like(ids), logits_to_keep=1).float().sum() * 0.0


def step_record(step: int, rows: list[dict], totals: dict, steps_done: int, n_minibatches: int, t0: float) -> dict:
    """The step's log record: over all the step's rows (`rows`: every process's `row_facts`) the mean reward, per
    side (forget / retain) the reward's mean and std and the refusal rate, the mean response length; over the
    mini-batches of all processes the mean loss and `policy_loss` stats (`totals`: this process's sums); the
    optimiser steps taken and skipped, the seconds since t0 and the first response."""
    rewards, forget, refusal, length = ([x for r in rows for x in r[key]]
                                        for key in ("rewards", "forget", "refusal", "length"))
    keys = sorted(totals)
    means = {key: total / n_minibatches for key, total in zip(keys, distributed.all_reduce_sum(
        [totals[key] for key in keys]))}
    forget_r = _mean_std([r for r, f in zip(rewards, forget) if f])
    retain_r = _mean_std([r for r, f in zip(rewards, forget) if not f])
    record = {"step": step, "loss": means.pop("loss"), "reward_mean": torch.tensor(rewards).mean().item(),
              "reward_forget_mean": forget_r[0], "reward_forget_std": forget_r[1],
              "reward_retain_mean": retain_r[0], "reward_retain_std": retain_r[1],
              "refusal_rate_forget": _mean_std([float(x) for x, f in zip(refusal, forget) if f])[0],
              "refusal_rate_retain": _mean_std([float(x) for x, f in zip(refusal, forget) if not f])[0],
              "response_len": torch.tensor(length).float().mean().item(),
              "optimizer_steps": steps_done, "skipped_steps": n_minibatches - steps_done,
              "seconds": time.time() - t0, "sample_response": rows[0]["first"]}
    record.update(means)
    return record


def _mean_std(values: list) -> tuple:
    """(mean, population std), or (None, None) when a step drew no prompt of that side (JSON has no NaN)."""
    t = torch.tensor(values, dtype=torch.float32)
    return (t.mean().item(), t.std(unbiased=False).item()) if len(values) else (None, None)


def make_optimizer(params: list, cfg: GRPOConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.grpo_lr, weight_decay=cfg.grpo_weight_decay)


def step_schedule(num_samples: int, cfg: GRPOConfig) -> list[list[int]]:
    """Sample indices of every step, all epochs; reshuffled per epoch from the seed, so a resumed run sees exactly
    the batches the interrupted one would have."""
    steps = []
    for epoch in range(cfg.grpo_epochs):
        steps += shuffled_batches(num_samples, cfg.prompts_per_step, random.Random(derived_seed(cfg.seed, epoch,
                                                                                                base=1000)))
    return steps


def log_step(record: dict, steps_total: int, log_path: str | None, progress: Callable) -> None:
    """Append the step's record to log_path (one JSON line) and print its summary."""
    if log_path:
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
    r = {k: "-" if v is None else f"{v:.2f}" for k, v in record.items() if k.startswith(("reward_", "refusal_"))}
    progress(f"grpo step {record['step'] + 1}/{steps_total}  reward forget {r['reward_forget_mean']} "
             f"retain {r['reward_retain_mean']}  kl {record['kl']:.4f}  clip {record['clip_frac']:.2f}  "
             f"refusal f/r {r['refusal_rate_forget']}/{r['refusal_rate_retain']}  "
             f"len {record['response_len']:.1f}  {record['seconds']:.1f}s")


def check_process_count(schedule: list[list[int]]) -> None:
    """Under torchrun every process needs at least one prompt of every step (its block of the step's prompts)."""
    fewest = min(map(len, schedule), default=distributed.world_size())
    if fewest < distributed.world_size():
        raise ValueError(f"a GRPO step holds {fewest} prompts, fewer than the {distributed.world_size()} processes: "
                         "choose --boundary-size and --prompts-per-step so that every step has one per process")


def train_grpo(model, processor, samples: list, cfg: GRPOConfig, optimizer=None, start_step: int = 0,
               log_path: str | None = None, on_step: Callable | None = None, progress=print) -> list[dict]:
    """Stage 2: GRPO over the boundary set for cfg.grpo_epochs epochs, steps numbered 0..N-1 across epochs.
    start_step > 0 resumes (the schedule and each step's sampling seed depend only on cfg.seed and the step).
    on_step(step, record, optimizer) runs after each step (train.py checkpoints there); each record is also
    appended to log_path as one JSON line."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: apply LoRA (or unfreeze weights) before GRPO")
    optimizer = optimizer or make_optimizer(params, cfg)
    schedule = step_schedule(len(samples), cfg)
    check_process_count(schedule)
    policy = distributed.data_parallel(model)  # under torchrun: sums the adapter gradients over the processes
    records = []
    for step in range(start_step, len(schedule)):
        mine = distributed.block(schedule[step])  # this process's prompts of the step (all of them in one process)
        record = grpo_step(model, processor, [samples[i] for i in mine], cfg, optimizer, params, step,
                           sample_ids=mine, policy=policy)
        records.append(record)
        if distributed.is_main():  # every process holds the same record; rank 0 writes and prints it
            log_step(record, len(schedule), log_path, progress)
        if on_step:
            on_step(step, record, optimizer)
    return records
