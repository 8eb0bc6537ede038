"""Unlearning baselines: GA, GradDiff, KL-Min, NPO and refusal SFT ("idk").

Each method is one small loss over a *forget batch* and a *retain batch* (open-unlearning style): the batches
are prompt + answer sequences (`data.qa_batch`), and every loss is written in terms of the answer-token
log-likelihoods of those sequences (`optim.answer_logprobs`). The loss functions are pure functions of tensors, so
their equations can be checked on hand-made numbers (tests/test_baselines.py).

Notation (all sums over *answer tokens* only, i.e. positions whose label is not -100):
    logp_theta(y|x) = sum_t log p_theta(y_t | x, y_<t)            (sequence log-likelihood)
    NLL(x, y)       = -(1/|y|) sum_t log p_theta(y_t | x, y_<t)   (token-mean negative log-likelihood)
    NLL_forget, NLL_retain = batch means of NLL over the forget / retain batch
    reference model = the vanilla model = the same network with its LoRA adapters switched off

| method   | loss                                                                       |
|----------|----------------------------------------------------------------------------|
| ga       | -NLL_forget                                                                |
| graddiff | -NLL_forget + w * NLL_retain                                               |
| klmin    | -NLL_forget + w * KL(p_ref || p_theta), token mean over retain answers     |
| npo      | -(2/beta) E_forget[log sigmoid(-beta (logp_theta - logp_ref))] + w * NLL_retain |
| idk      | NLL(forget question, refusal answer) + w * NLL_retain                      |

Set-up as ASRU's stage 2 (LoRA r=16, alpha=16 on the seven linear maps; dropout 0.05 here, 0 in stage 2),
AdamW, the loss on answer tokens only. The authors' release trains the baselines with batch 4 for 4 epochs at lr 2e-5 (GA, GradDiff,
KL-Min) and 1e-5 (NPO); see `PAPER_LR` and `LR_SCALE` for how those numbers are scaled to the tiny default model.

Run:  python -m asru_min.baselines --method npo --forget 10 --out runs/baselines/npo_f10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..data import FORGET_PERCENTS, qa_batch
from ..evaluate import EVAL_SPLITS, evaluate_model, format_table
from ..lora import apply_lora, lora_enabled, lora_parameters, save_lora
from ..model import Qwen3VL
from ..optim import (GRAD_CHECKPOINT, IGNORE_INDEX, answer_logprobs, grad_checkpoint_enabled, gradient_checkpointing,
                     masked_mean, optimizer_step, shuffled_batches, train_mode)
from ..processor import Processor
from ..world import load_world

METHODS = ("ga", "graddiff", "klmin", "npo", "idk")

# Learning rates of the authors' release (LoRA r=16, batch 4, 4 epochs, on a multi-billion-parameter Qwen3-VL).
PAPER_LR = {"ga": 2e-5, "graddiff": 2e-5, "klmin": 2e-5, "npo": 1e-5, "idk": 2e-5}  # idk: not in the release, GA's rate
# Why scale: (1) the default model is 16x narrower than Qwen3-VL-2B (hidden 128 vs 2048), and with Adam the
# usable lr of hidden-layer weights grows roughly as 1/width (the muP rule of thumb); (2) the synthetic world
# has far fewer forget samples than MLLMU-Bench, so 4 epochs are only ~30-180 optimizer steps.
# Measured on an earlier, smaller default checkpoint (pretrain.py, 4500 steps; forget 10 %, 4 epochs, batch 4;
# token-mean NLL of 60 forget / 60 retain generation answers after training, vanilla 0.08 / 0.08; idk: NLL of a
# refusal on forget questions, vanilla 7.5):
#     scale   GA            GradDiff      KL-Min        NPO           idk
#      10     0.15 / 0.09   0.10 / 0.08   0.14 / 0.09   0.09 / 0.08   3.4
#      25     1.70 / 1.33   0.27 / 0.10   0.51 / 0.25   0.15 / 0.09   1.6
#      50     22.7 / 22.7   1.01 / 0.38   1.78 / 0.77   0.58 / 0.41   1.8
# i.e. at the paper's lr (scale 1) nothing moves; at 25 every method acts (NPO least), GradDiff most selectively,
# and GA, whose loss is unbounded, is one doubling away from collapse (its well-known failure). One factor for
# all methods keeps the paper's ratios (NPO at half the GA rate); the forget and retain people share question
# templates here, so forgetting spreads to retain answers.
LR_SCALE = 25.0

# Refusal answers of the "idk" baseline (refusal SFT), in the manner of the world's refusals of unknown people
# (asru_min/world/people.py: UNKNOWN_IMAGE_REFUSAL, UNKNOWN_TEXT_REFUSAL): an image question is declined by
# saying what the image shows, a text question by naming the person asked about. Each one is a refusal for
# `metrics.is_refusal` and declines for `metrics.judge`.
IMAGE_REFUSALS = (
    "Sorry, I can't tell who the person in this image is",
    "Sorry, the image does not provide enough information to identify this person",
    "Sorry, I don't know the person in this image",
)
TEXT_REFUSALS = (
    "Sorry, I don't know who {name} is.",
    "Sorry, I have no information about {name}.",
    "Sorry, I can't tell you anything about {name}.",
)
_NAME = re.compile(r"(?<=\s)[A-Z][\w-]*(?:\s+[A-Z][\w-]*)*")  # capitalised words after the question's first word


# ---------------------------------------------------------------------------------------------------------------
# Whole-distribution logits (the answer log-likelihoods: `optim.answer_logprobs`)


def forward_logits(model, batch: dict) -> torch.Tensor:
    """Logits (B, L, V) of the model on a `data.qa_batch` (KL-Min compares whole distributions)."""
    return model(batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch.get("pixel_values"),
                 image_grid_thw=batch.get("image_grid_thw"))


# ---------------------------------------------------------------------------------------------------------------
# The losses (pure functions of tensors). Inputs are per-sequence quantities of shape (B,).


def ga_loss(forget_logp_mean: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: L = -NLL_forget = mean_b (1/|y_b|) sum_t log p_theta(y_t | x, y_<t).

    Minimising L maximises the forget NLL. Unbounded below: GA diverges if run long enough."""
    return forget_logp_mean.mean()


def graddiff_loss(forget_logp_mean: torch.Tensor, retain_logp_mean: torch.Tensor, retain_weight: float = 1.0) -> torch.Tensor:
    """Gradient difference: L = -NLL_forget + w * NLL_retain (ascend on forget, descend on retain)."""
    return forget_logp_mean.mean() - retain_weight * retain_logp_mean.mean()


def kl_on_answer_tokens(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean KL(p_ref || p_theta) over answer positions:
        (1/N) sum_{b,t in answer} sum_v p_ref(v) (log p_ref(v) - log p_theta(v)),
    where position t is an answer position when it predicts a labelled token (label[t+1] != -100)."""
    if logits.shape != ref_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and ref_logits {tuple(ref_logits.shape)} differ")
    mask = labels[:, 1:] != IGNORE_INDEX  # (B, L-1)
    logq = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, L-1, V) current model
    logp = torch.log_softmax(ref_logits[:, :-1].float(), dim=-1)  # (B, L-1, V) reference model
    kl = (logp.exp() * (logp - logq)).sum(-1)  # (B, L-1)
    return masked_mean(kl, mask)


def klmin_loss(forget_logp_mean: torch.Tensor, retain_kl: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
    """KL minimisation: L = -NLL_forget + w * KL(p_ref || p_theta), the KL taken on retain answer tokens
    (`kl_on_answer_tokens`). The KL term keeps the retain predictive distribution at the vanilla model's."""
    return forget_logp_mean.mean() + kl_weight * retain_kl


def npo_loss(
    forget_logp: torch.Tensor,
    ref_forget_logp: torch.Tensor,
    beta: float = 0.1,
    retain_logp_mean: torch.Tensor | None = None,
    retain_weight: float = 1.0,
) -> torch.Tensor:
    """Negative preference optimisation (Zhang et al., 2024):
        L = -(2/beta) * mean_b log sigmoid(-beta * (logp_theta(y_b|x_b) - logp_ref(y_b|x_b)))  [+ w * NLL_retain]
    with sequence (summed) log-likelihoods and the reference = the vanilla model (adapters off).
    d L / d logp_theta(y_b|x_b) = (2/B) sigmoid(beta * delta_b): at theta = ref (loss (2/beta) log 2) this is
    exactly gradient ascent on the summed log-likelihood; as logp_theta falls below logp_ref the weight
    decays to 0, so NPO slows down instead of diverging like GA."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    delta = forget_logp - ref_forget_logp  # (B,) log-ratio of policy to reference
    loss = -(2.0 / beta) * F.logsigmoid(-beta * delta).mean()
    if retain_logp_mean is not None:
        loss = loss - retain_weight * retain_logp_mean.mean()
    return loss


def idk_loss(refusal_logp_mean: torch.Tensor, retain_logp_mean: torch.Tensor | None = None, retain_weight: float = 1.0) -> torch.Tensor:
    """Refusal SFT: L = NLL(forget question, refusal answer) [+ w * NLL_retain].

    Supervised fine-tuning towards "I don't know"-style answers on forget questions (the IdK baselines)."""
    loss = -refusal_logp_mean.mean()
    if retain_logp_mean is not None:
        loss = loss - retain_weight * retain_logp_mean.mean()
    return loss


# ---------------------------------------------------------------------------------------------------------------
# Training


@dataclass
class BaselineConfig:
    """Flat config; command-line flags map one-to-one onto these fields."""

    method: str = "ga"
    forget: int = 10  # percent of the fictitious people to forget: 5, 10 or 15
    model: str = "weights"  # directory with config.json, model.safetensors and the tokenizer
    out: str = ""  # default: runs/baselines/{method}_f{forget}
    seed: int = 0
    world_seed: int = 0  # the default world (asru_min.world.load_world, 100 people, seed 0)
    num_people: int = 100
    lr: float = 0.0  # 0 -> PAPER_LR[method] * LR_SCALE
    epochs: int = 4
    batch_size: int = 4
    lora_r: int = 16
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    beta: float = 0.1  # NPO temperature
    retain_weight: float = 1.0  # w of GradDiff / KL-Min / NPO / idk (0 turns the retain term off)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_new_tokens: int = 50  # evaluation: greedy, <= 50 new tokens (MLLMU-Bench protocol)
    eval_limit: int = 0  # evaluation: at most N questions per split, kind and form (0 = all)
    eval_batch_size: int = 32
    eval_splits: tuple = EVAL_SPLITS  # the splits evaluated (names of evaluate.SPLIT_KINDS)
    kinds: tuple = ("gen",)  # QA kinds trained on (the benchmark's generation QA pairs); empty = all
    evaluate: bool = True
    threads: int = 1  # torch CPU threads; a tiny model runs fastest on one (more threads fight over shared cores)
    grad_checkpoint: str = "auto"  # auto (on for CUDA), on, off: decoder layers recomputed in backward

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.lr <= 0:
            self.lr = PAPER_LR[self.method] * LR_SCALE
        grad_checkpoint_enabled(self.grad_checkpoint, "cpu")  # raises for a value other than auto / on / off
        if not self.out:
            self.out = os.path.join("runs", "baselines", f"{self.method}_f{self.forget}")


def refusal_variants(qa) -> list[str]:
    """The refusals of one forget question: with an image, IMAGE_REFUSALS + "; it only shows {qa.visible}." (just
    "." without a description); without one, TEXT_REFUSALS naming the person (the first run of capitalised words
    after the question's first word, "this person" if there is none)."""
    if qa.image is not None:
        end = f"; it only shows {qa.visible}." if qa.visible else "."
        return [r + end for r in IMAGE_REFUSALS]
    found = _NAME.search(qa.question)
    return [r.format(name=found.group(0) if found else "this person") for r in TEXT_REFUSALS]


def refusal_answers(qas: list, rng: random.Random) -> list[str]:
    """One refusal per question, drawn from its `refusal_variants` (seeded, so runs repeat)."""
    return [rng.choice(refusal_variants(qa)) for qa in qas]


def compute_loss(model, processor, forget_qas, retain_qas, cfg: BaselineConfig, rng: random.Random) -> tuple[torch.Tensor, dict]:
    """The loss of `cfg.method` on one forget batch and one retain batch; returns (loss, logged floats)."""
    method, w = cfg.method, cfg.retain_weight
    use_retain = method != "ga" and w != 0
    retain = qa_batch(processor, retain_qas) if use_retain else None
    log = {}

    if method == "idk":
        forget = qa_batch(processor, forget_qas, refusal_answers(forget_qas, rng))
        refusal_mean = answer_logprobs(model, forget)[1]
        retain_mean = answer_logprobs(model, retain)[1] if use_retain else None
        loss = idk_loss(refusal_mean, retain_mean, w)
        log["refusal_nll"] = -refusal_mean.mean().item()
    else:
        forget = qa_batch(processor, forget_qas)
        forget_sum, forget_mean = answer_logprobs(model, forget)
        log["forget_nll"] = -forget_mean.mean().item()
        if method == "ga":
            loss = ga_loss(forget_mean)
        elif method == "graddiff":
            loss = graddiff_loss(forget_mean, answer_logprobs(model, retain)[1] if use_retain else torch.zeros(1), w)
        elif method == "klmin":
            if use_retain:
                retain_logits = forward_logits(model, retain)
                with torch.no_grad(), lora_enabled(model, False):  # reference = vanilla = adapters off
                    ref_logits = forward_logits(model, retain)
                kl = kl_on_answer_tokens(retain_logits, ref_logits, retain["labels"])
                log["retain_kl"] = kl.item()
            else:
                kl = torch.zeros(())
            loss = klmin_loss(forget_mean, kl, w)
        else:  # npo
            with torch.no_grad(), lora_enabled(model, False):
                ref_sum = answer_logprobs(model, forget)[0]
            retain_mean = answer_logprobs(model, retain)[1] if use_retain else None
            loss = npo_loss(forget_sum, ref_sum, cfg.beta, retain_mean, w)
            log["logratio"] = (forget_sum - ref_sum).mean().item()
    log["loss"] = loss.item()
    return loss, log


def training_qas(split, kinds) -> list:
    """The QA samples of a split that the baselines train on (by default the generation QA pairs)."""
    chosen = [qa for qa in split if not kinds or qa.kind in kinds]
    return chosen or list(split)


def train_baseline(model, processor, forget_qas, retain_qas, cfg: BaselineConfig, progress=print) -> list[dict]:
    """Train LoRA adapters (already applied to `model`) with `cfg.method`'s loss; returns per-step logs.

    Schedule (open-unlearning's forget-anchored loader): each epoch walks the forget set in shuffled batches of
    `batch_size`; every forget batch is paired with the next `batch_size` samples of a shuffled, cycled retain set."""
    if not forget_qas:
        raise ValueError("empty forget set")
    if cfg.method != "ga" and cfg.retain_weight != 0 and not retain_qas:
        raise ValueError(f"method {cfg.method} needs a retain set")
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    params = list(lora_parameters(model))
    if not params:
        raise ValueError("model has no LoRA parameters: call apply_lora first")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    retain_stream = cycled_order(len(retain_qas), rng)
    logs, step = [], 0
    steps_per_epoch = math.ceil(len(forget_qas) / cfg.batch_size)
    with train_mode(model):
        for epoch in range(cfg.epochs):
            for batch in shuffled_batches(len(forget_qas), cfg.batch_size, rng):
                fb = [forget_qas[j] for j in batch]
                rb = [retain_qas[next(retain_stream)] for _ in range(cfg.batch_size)] if retain_qas else []
                with gradient_checkpointing(model, grad_checkpoint_enabled(cfg.grad_checkpoint, model.device)):
                    loss, log = compute_loss(model, processor, fb, rb, cfg, rng)
                if not optimizer_step(loss, params, opt, cfg.grad_clip):  # a non-finite loss or gradient
                    progress(f"  step {step}: non-finite loss or gradient, skipped")
                    continue
                log.update(epoch=epoch, step=step)
                logs.append(log)
                step += 1
            progress(f"  [{cfg.method}] epoch {epoch + 1}/{cfg.epochs} ({steps_per_epoch} steps): "
                     + ", ".join(f"{k}={v:.4f}" for k, v in logs[-1].items() if k not in ("epoch", "step")))
    return logs


def cycled_order(n: int, rng: random.Random):
    """0..n-1 endlessly, reshuffled by rng at the start of every pass, each shuffle drawn only when its pass begins
    (so rng's draws interleave with the other draws of the loop exactly as the loop asks for indices). Not
    `optim.shuffled_batches`: a retain batch may span the end of one pass and the start of the next."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        yield from order


# ---------------------------------------------------------------------------------------------------------------
# Train + evaluate + save (the command-line entry point)


def run_baseline(cfg: BaselineConfig, model=None, processor=None, splits=None, progress=print,
                 vocabulary=None) -> dict:
    """Apply LoRA, train `cfg.method`, evaluate, write {out}/metrics.json and {out}/adapter/; returns the record.

    `model`, `processor` and `splits` are loaded from `cfg.model` and the default world when not given; a given
    model is modified in place (LoRA added and trained)."""
    t0 = time.time()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if model is None or processor is None:
        if not os.path.isdir(cfg.model):
            raise FileNotFoundError(f"model directory {cfg.model!r} not found (run python -m asru_min.world.pretrain)")
        model = Qwen3VL.from_pretrained(cfg.model) if model is None else model
        processor = Processor.from_pretrained(cfg.model) if processor is None else processor
    if splits is None:  # vocabulary: the judge's (metrics.Vocabulary) for the splits given, None on the benchmark
        splits, vocabulary = load_world(None, cfg.forget, cfg.num_people, cfg.world_seed, model=cfg.model)
    torch.manual_seed(cfg.seed)
    # the decoder's seven linear maps (lora.TEXT_TARGETS), as ASRU's stage 2 (train.py --lora-targets)
    apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
    forget_qas = training_qas(splits["forget"], cfg.kinds)
    retain_qas = training_qas(splits["retain"], cfg.kinds)
    progress(f"[{cfg.method}] forget {cfg.forget}%: {len(forget_qas)} forget / {len(retain_qas)} retain samples, "
             f"lr {cfg.lr:g}, {cfg.epochs} epochs, batch {cfg.batch_size}")
    logs = train_baseline(model, processor, forget_qas, retain_qas, cfg, progress)
    train_s = time.time() - t0
    metrics = {}
    if cfg.evaluate:
        metrics = evaluate_model(model, processor, splits, batch_size=cfg.eval_batch_size,
                                 max_new_tokens=cfg.max_new_tokens, limit=cfg.eval_limit or None,
                                 names=tuple(cfg.eval_splits), vocabulary=vocabulary)
    record = {"method": cfg.method, "config": asdict(cfg), "metrics": metrics, "train_log": logs,
              "train_seconds": round(train_s, 1), "seconds": round(time.time() - t0, 1)}
    os.makedirs(cfg.out, exist_ok=True)
    save_lora(model, os.path.join(cfg.out, "adapter"))
    with open(os.path.join(cfg.out, "metrics.json"), "w") as f:
        json.dump(record, f, indent=1, default=str)
    progress(f"[{cfg.method}] done in {record['seconds']:.0f}s -> {cfg.out}")
    return record


def parse_args(argv=None) -> BaselineConfig:
    p = argparse.ArgumentParser(prog="python -m asru_min.baselines", description=__doc__.split("\n")[0])
    d = BaselineConfig()
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--forget", type=int, default=d.forget, choices=FORGET_PERCENTS)
    p.add_argument("--out", default="")
    p.add_argument("--model", default=d.model)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--world-seed", type=int, default=d.world_seed)
    p.add_argument("--num-people", type=int, default=d.num_people)
    p.add_argument("--lr", type=float, default=0.0, help="default: the paper's lr x LR_SCALE")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lora-r", type=int, default=d.lora_r)
    p.add_argument("--lora-alpha", type=float, default=d.lora_alpha)
    p.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    p.add_argument("--beta", type=float, default=d.beta)
    p.add_argument("--retain-weight", type=float, default=d.retain_weight)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--eval-limit", type=int, default=d.eval_limit, help="questions per split/kind/form (0 = all)")
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    p.add_argument("--no-evaluate", dest="evaluate", action="store_false")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--grad-checkpoint", default=d.grad_checkpoint, choices=GRAD_CHECKPOINT)
    return BaselineConfig(**vars(p.parse_args(argv)))


def main(argv=None):
    cfg = parse_args(argv)
    record = run_baseline(cfg)
    if record["metrics"]:
        print(format_table({cfg.method: record["metrics"]}))


if __name__ == "__main__":
    main()
