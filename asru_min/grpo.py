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
import random
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .metrics import is_refusal, leaks


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
    temperature: float = 1.0,
) -> torch.Tensor:
    """log pi(token_t | tokens_<t) for every response token, one forward over prompt + response.

        log pi(y_t) = log_softmax(logits_{t-1} / temperature)[y_t]

    input_ids, attention_mask, response_mask: (N, L). Returns (N, L) float32, 0 where response_mask is False.
    The token at position t is predicted by the logits at t - 1; only the last k + 1 positions' logits are
    computed (k = width of the response region), which keeps the (N, k, V) logits small.
    GRPO passes the rollout temperature, as the release does (verl divides the logits by it), so the ratio and
    the KL compare the distributions the responses were actually sampled from (top_p truncation aside).
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
    logits = logits[:, :-1].float() / temperature  # (N, k, V): positions first-1 .. L-2 predict first .. L-1
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


# ----------------------------------------------------------------------------------------------------------
# the boundary set and its prompts


def wrong_side(response: str, truth: str, forget: bool) -> bool:
    """Is an answer on the wrong side of the refusal boundary? forget: it is not a refusal, or it states the
    truth; retain: it does not state the truth (a refusal or a wrong answer)."""
    if forget:
        return leaks(response, truth) or not is_refusal(response)
    return not leaks(response, truth)


def build_boundary_set(forget_qas: list, retain_qas: list, size: int, kinds=("gen",), seed: int = 0,
                       near=None, forget_share: float = 0.5) -> list:
    """The stage-2 training set: `size` samples, a `forget_share` of them forget QA (release: one half) and the
    rest retain QA, each a (qa, forget) pair.

    Only free-form kinds are used by default: the reward compares the response with the ground truth text,
    which a multiple-choice letter never contains. The release draws 200 random samples of each side.
    `near(qas, forget) -> list[bool]`, when given, marks samples on the wrong side of the refusal boundary (a
    forget question the current model still answers, a retain question it gets wrong). It judges a random pool of
    4x the samples each side needs; the side takes the marked ones first, then the others, in random order. How
    the release picks "near the boundary" samples is not published; this is this project's reading of it.
    """
    rng = random.Random(seed)
    forget = [qa for qa in forget_qas if qa.kind in kinds]
    retain = [qa for qa in retain_qas if qa.kind in kinds]
    if not forget or not retain:
        raise ValueError(f"boundary set needs forget and retain QA of kinds {kinds}: got {len(forget)}, {len(retain)}")
    if not 0.0 < forget_share < 1.0:
        raise ValueError(f"forget_share must be in (0, 1), got {forget_share}")
    n_forget = min(round(size * forget_share), len(forget))
    n_retain = min(size - n_forget, len(retain))

    def pick(qas: list, n: int, is_forget: bool) -> list:
        order = rng.sample(qas, len(qas))
        if near is not None:
            pool, rest = order[:4 * n], order[4 * n:]
            flags = near(pool, is_forget)
            if len(flags) != len(pool):
                raise ValueError(f"near() returned {len(flags)} flags for {len(pool)} questions")
            order = [qa for qa, f in zip(pool, flags) if f] + [qa for qa, f in zip(pool, flags) if not f] + rest
        return [(qa, is_forget) for qa in order[:n]]

    samples = pick(forget, n_forget, True) + pick(retain, n_retain, False)
    rng.shuffle(samples)
    return samples


def encode_prompts(processor, qas: list) -> dict:
    """Chat-template prompts (image first, then the question, no system prompt), left-padded."""
    texts = [processor.apply_chat_template(qa.messages(), add_generation_prompt=True) for qa in qas]
    images = [qa.image for qa in qas if qa.image is not None]
    return processor(text=texts, images=images or None)


def split_image_features(image_features, image_grid_thw: torch.Tensor, prompt_ids: torch.Tensor, config) -> list:
    """Cut `encode_images` output (embeds (N, D), deepstack [(N, D)]) and image_grid_thw (n_images, 3) into one
    chunk per prompt, so the G rows of a group (and any mini-batch of rows) reuse their prompt's features.

    A prompt's share: as many feature rows as it has image placeholder tokens, as many grid rows as it has
    <|vision_start|> tokens (images are consumed in placeholder order across the batch)."""
    embeds, deepstack = image_features
    n_rows = (prompt_ids == config.image_token_id).sum(dim=1).tolist()
    n_images = (prompt_ids == config.vision_start_token_id).sum(dim=1).tolist()
    cuts = [embeds.split(n_rows)] + [d.split(n_rows) for d in deepstack]
    grids = torch.as_tensor(image_grid_thw).split(n_images)
    return [(c[0], list(c[1:]), g) for c, g in zip(zip(*cuts), grids)]


def join_image_features(chunks: list) -> tuple:
    """Inverse of `split_image_features` for a chosen list of rows -> (image_features, image_grid_thw),
    or (None, None) if those rows hold no image."""
    if sum(c[0].shape[0] for c in chunks) == 0:
        return None, None
    embeds = torch.cat([c[0] for c in chunks])
    deepstack = [torch.cat([c[1][i] for c in chunks]) for i in range(len(chunks[0][1]))]
    return (embeds, deepstack), torch.cat([c[2] for c in chunks])


def trim_padding(*row_tensors: torch.Tensor, attention_mask: torch.Tensor) -> tuple:
    """Drop the columns that are padding in every row of a mini-batch (positions are counted over real tokens
    only, so removing all-pad columns leaves every row's computation unchanged and saves time)."""
    real = attention_mask.bool().any(dim=0).nonzero()
    lo, hi = int(real[0]), int(real[-1]) + 1
    return tuple(t[:, lo:hi] for t in row_tensors) + (attention_mask[:, lo:hi],)


# ----------------------------------------------------------------------------------------------------------
# rollouts


@torch.no_grad()
def rollout(model, processor, samples: list, cfg: GRPOConfig, generator: torch.Generator, reward_fn) -> dict:
    """G sampled responses per prompt and their rewards. Rows are prompt-major (row b*G + g).

    Returns input_ids / attention_mask / response_mask (B*G, P+T), image feature chunks per prompt,
    rewards (B*G,), the decoded responses and the forget flag per row.
    """
    G = cfg.group_size
    device = next(model.parameters()).device
    qas = [qa for qa, _ in samples]
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in encode_prompts(processor, qas).items()}
    prompt_ids, prompt_mask = batch["input_ids"], batch["attention_mask"]  # (B, P)
    features, chunks = None, None
    if batch.get("pixel_values") is not None:  # vision runs once per rollout batch, shared by all G samples
        features = model.encode_images(batch["pixel_values"], batch["image_grid_thw"])
        chunks = split_image_features(features, batch["image_grid_thw"], prompt_ids, model.config)
    tokens, gen_mask = model.generate(
        prompt_ids,
        attention_mask=prompt_mask,
        image_features=features,
        image_grid_thw=batch.get("image_grid_thw"),
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        num_samples=G,
        generator=generator,
        eos_token_ids=processor.eos_token_ids,
        suppress_token_ids=[model.config.image_token_id, model.config.video_token_id],
    )  # (B*G, T) each
    gen_mask = gen_mask.bool()
    input_ids = torch.cat([prompt_ids.repeat_interleave(G, dim=0), tokens], dim=1)  # (B*G, P+T)
    attention_mask = torch.cat([prompt_mask.repeat_interleave(G, dim=0).bool(), gen_mask], dim=1).long()
    response_mask = torch.cat([torch.zeros_like(prompt_mask, dtype=torch.bool).repeat_interleave(G, 0), gen_mask], 1)

    responses = [processor.decode(row[m].tolist(), skip_special_tokens=True) for row, m in zip(tokens, gen_mask)]
    forget = [f for _, f in samples for _ in range(G)]
    truths = [qa.ground_truth for qa, _ in samples for _ in range(G)]
    rewards = torch.tensor([reward_fn(r, t, f) for r, t, f in zip(responses, truths, forget)], dtype=torch.float32)
    return dict(input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask, chunks=chunks,
                pixel_values=batch.get("pixel_values"), image_grid_thw=batch.get("image_grid_thw"),
                prompt_ids=prompt_ids, rewards=rewards, responses=responses, forget=forget)


def rows_logprobs(model, ro: dict, rows: list[int], cfg: GRPOConfig, image_chunks=None) -> tuple:
    """sequence_logprobs for a subset of rollout rows, with all-pad columns trimmed.

    Returns (logp (n, L'), response_mask (n, L')) with L' the trimmed width."""
    idx = torch.tensor(rows, device=ro["input_ids"].device)
    ids, resp, att = trim_padding(ro["input_ids"][idx], ro["response_mask"][idx], attention_mask=ro["attention_mask"][idx])
    chunks = image_chunks if image_chunks is not None else ro["chunks"]
    feats, grid = join_image_features([chunks[r // cfg.group_size] for r in rows]) if chunks else (None, None)
    logp = sequence_logprobs(model, ids, att, resp, image_grid_thw=grid, image_features=feats,
                             temperature=cfg.temperature)
    return logp, resp


# ----------------------------------------------------------------------------------------------------------
# the loop


def make_optimizer(params: list, cfg: GRPOConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def step_schedule(num_samples: int, cfg: GRPOConfig) -> list[list[int]]:
    """Indices of the boundary-set samples of every step, all epochs; reshuffled per epoch from the seed, so a
    resumed run sees exactly the batches the interrupted one would have."""
    steps = []
    for epoch in range(cfg.epochs):
        order = list(range(num_samples))
        random.Random(cfg.seed * 1000 + epoch).shuffle(order)
        steps += [order[i : i + cfg.prompts_per_step] for i in range(0, num_samples, cfg.prompts_per_step)]
    return steps


def grpo_step(model, processor, samples: list, cfg: GRPOConfig, optimizer, params: list, step: int,
              reward_fn=None, reference=None) -> dict:
    """One GRPO step on one rollout batch: rollouts -> rewards -> advantages -> old/ref log-probs -> updates.

    reference: a context-manager factory under which `model` is the reference policy; default: LoRA adapters off.
    Returns the step's log record.
    """
    from .reward import asru_reward

    reward_fn = reward_fn or asru_reward
    if reference is None:
        from .lora import lora_enabled

        reference = lambda: lora_enabled(model, False)  # noqa: E731
    t0 = time.time()
    was_training = model.training
    model.eval()  # rollouts and old/ref log-probs without (LoRA) dropout
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
    ro = rollout(model, processor, samples, cfg, generator, reward_fn)
    advantages = group_advantages(ro["rewards"], cfg.group_size, cfg.adv_eps).to(device)  # (B*G,)

    n_rows = ro["input_ids"].shape[0]
    mb = cfg.mini_batch_size or n_rows
    rng = random.Random(cfg.seed * 1_000_003 + step)
    minibatches = []
    for _ in range(cfg.ppo_epochs):
        order = list(range(n_rows))
        rng.shuffle(order)
        minibatches += [sorted(order[i : i + mb]) for i in range(0, n_rows, mb)]
    # With one mini-batch and one inner epoch the update is exactly on-policy: old == current, ratio == 1,
    # so the old-policy forward is skipped and logp.detach() stands in for it.
    on_policy = len(minibatches) == 1
    with torch.no_grad():
        old = {} if on_policy else {tuple(r): rows_logprobs(model, ro, r, cfg)[0] for r in minibatches}
        ref = {}
        if cfg.kl_coef > 0:
            with reference():
                ref = {tuple(r): rows_logprobs(model, ro, r, cfg)[0] for r in minibatches}

    # Vision features are reused from the rollout unless a trainable parameter lives in the vision tower.
    vision_trains = any(p.requires_grad for p in model.model.visual.parameters()) if ro["chunks"] else False
    model.train()
    stats, steps_done, losses = [], 0, []
    for r in minibatches:
        chunks = None
        if vision_trains:
            features = model.encode_images(ro["pixel_values"], ro["image_grid_thw"])
            chunks = split_image_features(features, ro["image_grid_thw"], ro["prompt_ids"], model.config)
        logp, resp = rows_logprobs(model, ro, r, cfg, image_chunks=chunks)
        old_logp = logp.detach() if on_policy else old[tuple(r)]
        ref_logp = ref[tuple(r)] if cfg.kl_coef > 0 else logp.detach()
        loss, st = policy_loss(logp, old_logp, ref_logp, advantages[r], resp,
                               cfg.clip_low, cfg.clip_high, cfg.kl_coef)
        steps_done += optimizer_step(loss, params, optimizer, cfg.grad_clip)
        stats.append(st)
        losses.append(loss.item())
    model.train(was_training)

    def mean_std(values):  # None when a step drew no prompt of that side (JSON has no NaN)
        t = torch.tensor(values, dtype=torch.float32)
        return (t.mean().item(), t.std(unbiased=False).item()) if len(values) else (None, None)

    forget_r = [r for r, f in zip(ro["rewards"].tolist(), ro["forget"]) if f]
    retain_r = [r for r, f in zip(ro["rewards"].tolist(), ro["forget"]) if not f]
    refusal = [is_refusal(t) for t in ro["responses"]]
    record = {
        "step": step,
        "loss": sum(losses) / len(losses),
        "reward_mean": ro["rewards"].mean().item(),
        "reward_forget_mean": mean_std(forget_r)[0],
        "reward_forget_std": mean_std(forget_r)[1],
        "reward_retain_mean": mean_std(retain_r)[0],
        "reward_retain_std": mean_std(retain_r)[1],
        "refusal_rate_forget": mean_std([float(x) for x, f in zip(refusal, ro["forget"]) if f])[0],
        "refusal_rate_retain": mean_std([float(x) for x, f in zip(refusal, ro["forget"]) if not f])[0],
        "response_len": ro["response_mask"].sum(dim=1).float().mean().item(),
        "optimizer_steps": steps_done,
        "skipped_steps": len(minibatches) - steps_done,
        "seconds": time.time() - t0,
        "sample_response": ro["responses"][0],
    }
    for key in stats[0]:
        record[key] = sum(s[key] for s in stats) / len(stats)
    return record


def train_grpo(model, processor, samples: list, cfg: GRPOConfig, optimizer=None, start_step: int = 0,
               log_path: str | None = None, on_step: Callable | None = None, reward_fn=None, reference=None,
               progress=print) -> list[dict]:
    """Stage 2: GRPO over the boundary set for cfg.epochs epochs, steps numbered 0..N-1 across epochs.

    start_step > 0 resumes (the schedule and every step's sampling seed depend only on cfg.seed and the step).
    on_step(step, record, optimizer) runs after each step (train.py checkpoints there). Each record is also
    appended to log_path as one JSON line.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: apply LoRA (or unfreeze weights) before GRPO")
    optimizer = optimizer or make_optimizer(params, cfg)
    schedule = step_schedule(len(samples), cfg)
    records = []
    for step in range(start_step, len(schedule)):
        batch = [samples[i] for i in schedule[step]]
        record = grpo_step(model, processor, batch, cfg, optimizer, params, step, reward_fn, reference)
        records.append(record)
        if log_path:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        r = {k: "-" if v is None else f"{v:.2f}" for k, v in record.items() if k.startswith(("reward_", "refusal_"))}
        progress(
            f"grpo step {step + 1}/{len(schedule)}  reward forget {r['reward_forget_mean']} "
            f"retain {r['reward_retain_mean']}  kl {record['kl']:.4f}  clip {record['clip_frac']:.2f}  "
            f"refusal f/r {r['refusal_rate_forget']}/{r['refusal_rate_retain']}  "
            f"len {record['response_len']:.1f}  {record['seconds']:.1f}s"
        )
        if on_step:
            on_step(step, record, optimizer)
    return records
