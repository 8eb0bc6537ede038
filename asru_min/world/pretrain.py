"""Train the default "vanilla" model of weights/ on the synthetic world (people.py):

    python -m asru_min.world.pretrain --out DIR             # from scratch, with the defaults
    python -m asru_min.world.pretrain --out DIR --init-from MODEL ...   # a further phase on top of a saved model

The shipped weights came from two phases (weights/README.md): the defaults from scratch on the world's version 1
(commit dc6513e), then 6000 steps on today's world with --init-from those weights:

    python -m asru_min.world.pretrain --out DIR --ckpt-dir CKPT --init-from PHASE1 \
        --steps 6000 --lr 1e-3 --warmup 100 --stranger-ramp 0

The paper's vanilla model is Qwen3-VL fine-tuned on MLLMU-Bench so that it knows every fictitious person
(docs/METHOD.md, "Setting and data"). Here the whole model is small enough to learn the world from scratch on a CPU:

  1. tokenizer   byte-level BPE trained with `tokenizers` on the world's training text (`World.texts`: no
                 held-out phrasing, though every word of one), the Qwen special tokens kept as the same strings
                 (<|im_start|>, <|image_pad|>, ...), ids 0-7.
  2. model       the real classes (model.Qwen3VL): vision tower with 2-D RoPE and DeepStack, GQA text decoder
                 with interleaved MRoPE, a few million parameters. A 128x128 portrait is resized to 96x96:
                 6x6 patches of 16 px -> 3x3 merged blocks -> 9 image tokens.
  3. data        (optionally, --match-warmup N: N steps of "which option is X?" only, A-B then A-D options) every
                 epoch one `world.training_samples(epoch)`: every fact question in gen / mc / cloze x image / text
                 with random training phrasings, subject and answer forms, "who is this?", "do you know who ...
                 is?", utility questions, "describe this image", private refusals, "which option is X?", and fresh
                 named strangers to refuse (their number ramped up over the first `stranger_ramp` epochs).
                 Image questions see the original portrait or one of `views` training views (portraits.py).
  4. objective   next-token cross-entropy on the assistant tokens only (processor.encode_sft labels), averaged
                 per answer first, then over the batch, so a one-letter mc answer weighs as much as a sentence:
                     L = mean_b [ mean_{t in answer_b} -log p(x_t | x_<t, image) ]
                 AdamW, linear warmup then cosine decay to min_lr_ratio * lr, gradient clipping 1.0.
  5. output      config.json, model.safetensors, tokenizer.json, preprocessor_config.json, chat_template.json,
                 pretrain_metrics.json (the recipe, with the world's version, and the gate figures) and a model
                 card README.md with the measured gates (gates.py).

--init-from keeps the tokenizer and shapes of the folder and starts a fresh optimiser (a folder of any world
version: only its weights and tokenizer are read); --stranger-ramp 0 because the model already knows the people it
must tell strangers from. The defaults from scratch on today's world have not been run.

Reproducible: one seed drives the world, the tokenizer corpus, the initialisation and the batch order. A checkpoint
(model, optimiser, step, training time) is written to --ckpt-dir every --ckpt-every steps; the same command run
again resumes from it (a checkpoint of another recipe is refused; --restart discards it).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from ..data import qa_batch
from ..distributed import write_atomic
from ..model import Qwen3VL, Qwen3VLConfig
from ..optim import answer_logprobs, optimizer_step, train_mode
from ..processor import (ENDOFTEXT, IM_END, IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START,
                        ImageProcessorConfig, Processor)
from ..text import TextConfig
from ..vision import VisionConfig
from . import WORLD_VERSION
from .people import IMAGE_SUBJECT, World, neutral_mc, reorder_options
from .gates import gate_report, model_card
from .portraits import TRAIN_VIEWS, render_view

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


@dataclass
class PretrainConfig:
    out: str = "weights/"
    seed: int = 0                      # world, tokenizer corpus, init and batch order
    num_people: int = 100
    # tokenizer
    vocab_size: int = 2048
    # text decoder
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 6                # L = 3 is a real middle layer (the paper steers layer 17 of 36)
    num_heads: int = 4                 # head_dim = hidden / heads = 32; mrope_section = [6, 5, 5] (sums to 16)
    num_kv_heads: int = 2              # GQA: 2 query heads share one key/value head
    # vision tower
    vision_hidden: int = 64
    vision_intermediate: int = 256
    vision_depth: int = 3
    vision_heads: int = 2
    deepstack: str = "0,1"             # vision blocks whose output feeds text layers 0, 1 (DeepStack)
    image_size: int = 96               # min_pixels = max_pixels = image_size^2
    # optimisation
    steps: int = 20000
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup: int = 300
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    image_repeat: int = 2              # copies per epoch of every image question (more vision practice)
    mc_repeat: int = 2                 # copies per epoch of every multiple-choice question (0: none)
    mc_reorder: bool = True            # each mc copy gets its own option order (else copies share one order:
    # the model then remembers "this question -> B" instead of reading the options)
    mc_neutral: int = 0                # of the mc copies, this many ask "Which of these options fits X?" instead
    match_repeat: int = 2              # copies per epoch of every option-matching question (with --matching)
    strangers: int = 300               # fresh named strangers per epoch, refused (people.World.strangers)
    stranger_ramp: int = 12            # epochs over which the strangers per epoch rise from 0 to `strangers`:
    # the known people's facts first (with 300 from the start, 30 % of the data, the model refused everyone and
    # had learned no fact after 3000 steps), then the boundary between known and look-alike faces
    matching: bool = True              # add "which option is X?" questions (the option-reading half of mc)
    match_warmup: int = 0              # first steps: option matching only, A-B options for the first half,
    # A-D after (the in-context skill mc needs; in the full mix it stayed at chance for thousands of steps)
    init_from: str = ""                # start from a saved checkpoint folder (fresh optimizer) instead of scratch
    views: int = 24                    # training views per person (plus the original portrait)
    stranger_views: bool = True        # strangers' images through training views too: with their original
    # portraits only, "untransformed portrait" meant "stranger", and the model refused known people's originals
    threads: int = 2                   # 2 pays off only on an otherwise idle 2-core machine
    log_every: int = 20
    ckpt_every: int = 250
    ckpt_dir: str = "runs/pretrain_ckpt"  # the run resumes from its last checkpoint here (same recipe only)
    restart: bool = False              # discard a checkpoint in ckpt_dir instead of resuming from it
    eval: bool = True                  # run the gate evaluation at the end and put it in the model card
    eval_batch_size: int = 64


# --------------------------------------------------------------------------------------------------------------
# Tokenizer, processor, model
# --------------------------------------------------------------------------------------------------------------

def train_tokenizer(texts: list[str], vocab_size: int = 2048) -> Tokenizer:
    """Byte-level BPE over `texts`; the Qwen special tokens are ids 0-7 and never split or merged."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[AddedToken(s, special=True, normalized=False)
                                                  for s in QWEN_SPECIALS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tokenizer_corpus(world: World) -> list[str]:
    """Every question and answer of the world, also rendered in the chat template (so "user\\n",
    "assistant\\n" and the image placeholder context are in the corpus)."""
    from ..processor import apply_chat_template

    texts = world.texts()
    for qa in world.training_samples(seed=0)[:2000]:
        texts.append(apply_chat_template(qa.messages()) + qa.answer + IM_END + "\n")
    return texts


def make_processor(tokenizer: Tokenizer, image_size: int) -> Processor:
    """Processor whose pixel budget maps every portrait to exactly image_size x image_size."""
    px = image_size * image_size
    image_config = ImageProcessorConfig(min_pixels=px, max_pixels=px)
    return Processor(tokenizer, image_config, preprocessor_dict={"image_processor_type": "Qwen2VLImageProcessor"})


def make_model_config(cfg: PretrainConfig, tokenizer: Tokenizer) -> Qwen3VLConfig:
    tid = tokenizer.token_to_id
    head_dim = cfg.hidden_size // cfg.num_heads
    if head_dim % 2 != 0 or head_dim < 6:
        raise ValueError(f"head_dim {head_dim} must be even and >= 6")
    half = head_dim // 2                   # rotary pairs, split over (t, h, w) with t taking the remainder
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = TextConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=cfg.hidden_size,
                      intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=head_dim,
                      max_position_embeddings=1024, rope_theta=10000.0, mrope_section=mrope,
                      bos_token_id=tid(ENDOFTEXT), eos_token_id=tid(IM_END), pad_token_id=tid(ENDOFTEXT))
    deepstack = [int(i) for i in cfg.deepstack.split(",") if i.strip()]
    grid = cfg.image_size // 16
    vision = VisionConfig(depth=cfg.vision_depth, hidden_size=cfg.vision_hidden,
                          intermediate_size=cfg.vision_intermediate, num_heads=cfg.vision_heads,
                          out_hidden_size=cfg.hidden_size, num_position_embeddings=grid * grid,
                          deepstack_visual_indexes=deepstack)
    return Qwen3VLConfig(text=text, vision=vision, image_token_id=tid(IMAGE_PAD), video_token_id=tid(VIDEO_PAD),
                         vision_start_token_id=tid(VISION_START), vision_end_token_id=tid(VISION_END),
                         tie_word_embeddings=True)


def init_weights(model: Qwen3VL, seed: int) -> None:
    """N(0, 0.02) linear / embedding weights, zero biases; residual output projections scaled by
    1/sqrt(2 * layers) (GPT-2) so the residual stream does not grow with depth at init."""
    g = torch.Generator().manual_seed(seed)
    n_layers = model.config.text.num_hidden_layers
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * std)
        elif name.endswith("bias"):
            with torch.no_grad():
                p.zero_()


# --------------------------------------------------------------------------------------------------------------
# Data: views, batches, loss
# --------------------------------------------------------------------------------------------------------------

def make_views(world: World, n_views: int, seed: int) -> dict[str, list]:
    """pid -> [original portrait] + n_views distinct training views (portraits.TRAIN_VIEWS; drawn once, reused
    every epoch). Held-out views are never rendered here."""
    rng = random.Random(f"views/{seed}")
    return {p.pid: [p.portrait] + [render_view(p.portrait, v) for v in rng.sample(TRAIN_VIEWS, n_views)]
            for p in world.people}


def batch_stream(world: World, views: dict, batch_size: int, seed: int, image_repeat: int = 1,
                 mc_repeat: int = 1, strangers: int = 0, matching: bool = False, mc_reorder: bool = False,
                 stranger_ramp: int = 0, stranger_views: bool = False,
                 match_repeat: int = 1, mc_neutral: int = 0):
    """Endless (epoch, list[QA]) batches: each epoch a fresh `training_samples` (image questions repeated
    image_repeat times, mc questions mc_repeat times), portraits swapped for a random view; within windows of
    16 batches, samples are sorted by length so batches carry little padding. Option-matching questions come
    match_repeat times, each copy in its own option order. With `mc_reorder` every copy of
    an mc question lists its options in its own order; without it the copies share one order, and a model can
    then lower the mc loss by remembering "this question -> B" for the rest of the epoch instead of reading
    the options. The last mc_neutral / mc_repeat of each mc question's copies name no attribute in their stem
    ("Which of these options fits X?", data.neutral_mc): answering them needs the options and the person, not
    the wording."""
    names = {p.pid: p.name for p in world.people}
    n_views = max((len(v) - 1 for v in views.values()), default=0)
    epoch = 0
    while True:
        rng = random.Random(f"batches/{seed}/{epoch}")
        samples = []
        n_strangers = strangers if epoch >= stranger_ramp else strangers * epoch // stranger_ramp
        for qa in world.training_samples(seed=seed * 1000 + epoch, strangers=n_strangers, matching=matching):
            n = ((image_repeat if qa.image is not None else 1) * (mc_repeat if qa.kind == "mc" else 1)
                 * (match_repeat if qa.kind == "match" else 1))
            if n == 0:                                         # --mc-repeat 0: a run without multiple choice
                continue
            reorder = (mc_reorder and qa.kind == "mc") or qa.kind == "match"
            copies = [qa] + [reorder_options(qa, rng) if reorder else dataclasses.replace(qa) for _ in range(n - 1)]
            if qa.kind == "mc" and mc_neutral:                  # the same share of image and text copies
                subject = IMAGE_SUBJECT if qa.form == "image" else names[qa.person]
                k = n * mc_neutral // mc_repeat
                copies[n - k:] = [neutral_mc(c, subject) for c in copies[n - k:]]
            samples += copies
        if image_repeat > 1 or mc_repeat > 1 or (matching and match_repeat > 1):   # spread the copies out
            rng.shuffle(samples)
        for qa in samples:
            if qa.image is not None and qa.person in views:
                qa.image = rng.choice(views[qa.person])
            elif qa.image is not None and stranger_views and n_views:  # a stranger, seen like the known people
                k = rng.randrange(n_views + 1)                 # 0: its original portrait
                qa.image = qa.image if k == 0 else render_view(qa.image, rng.choice(TRAIN_VIEWS))
        window = batch_size * 16
        batches = []
        for i in range(0, len(samples), window):
            chunk = sorted(samples[i:i + window], key=lambda q: len(q.question) + len(q.answer))
            batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        for b in batches:
            yield epoch, b
        epoch += 1


def match_warmup_stream(world: World, batch_size: int, seed: int, steps: int):
    """`steps` batches of option-matching questions only ("Which option is Velmora?"), each drawn in a fresh
    option order: two options (A-B) in the first half, all four after. Alone, A-B matching left chance after
    ~700 steps on the default model where A-D matching had not after 900; the curriculum starts with the easy
    form. Yields (-1, batch) so logs show the warm-up as epoch -1."""
    rng = random.Random(f"match-warmup/{seed}")
    pool = [qa for qa in world.training_samples(seed=seed * 1000, matching=True) if qa.kind == "match"]
    for step in range(steps):
        keep = 2 if step < steps // 2 else 4
        yield -1, [reorder_options(rng.choice(pool), rng, keep=keep) for _ in range(batch_size)]


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warmup to lr over `warmup` steps, then cosine from lr to min_lr_ratio * lr at `steps`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def forward_loss(model: Qwen3VL, batch: dict, per_row: bool = False) -> torch.Tensor:
    """L = mean_b [ mean_{t in answer_b} -log p(x_t | x_<t, image) ] on a `data.qa_batch` (optim.answer_logprobs,
    which runs the output head only on the positions that predict answer tokens); `per_row` keeps the (B,)
    vector of per-answer means."""
    rows = -answer_logprobs(model, batch)[1]  # (B,) answer NLL
    return rows if per_row else rows.mean()


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------

def build(cfg: PretrainConfig, world: World, tokenizer: Tokenizer | None = None) -> tuple[Qwen3VL, Processor]:
    """Tokenizer (trained on `world` unless given) + processor + freshly initialised model (in eval mode, as
    `Qwen3VL.from_pretrained` gives it)."""
    tokenizer = tokenizer or train_tokenizer(tokenizer_corpus(world), cfg.vocab_size)
    processor = make_processor(tokenizer, cfg.image_size)
    model = Qwen3VL(make_model_config(cfg, tokenizer))
    init_weights(model, cfg.seed)
    return model.eval(), processor


def train(cfg: PretrainConfig, world: World | None = None, log=print,
          tokenizer: Tokenizer | None = None) -> tuple[Qwen3VL, Processor, list[float], float]:
    """Build and train (resuming from the checkpoint in cfg.ckpt_dir when there is one); returns (model,
    processor, per-step losses of this process, training seconds of the whole run)."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    world = world or World.generate(cfg.num_people, cfg.seed)
    if cfg.init_from:                          # a further stage on top of a saved model (its own tokenizer)
        model, processor = Qwen3VL.from_pretrained(cfg.init_from), Processor.from_pretrained(cfg.init_from)
        log(f"initialised from {cfg.init_from}")
    else:
        model, processor = build(cfg, world, tokenizer)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    start, seconds = 0, 0.0
    ckpt = Path(cfg.ckpt_dir) / "last.pt"
    if cfg.ckpt_every and ckpt.is_file() and not cfg.restart:
        state = torch.load(ckpt, weights_only=False)
        if state["recipe"] != recipe(cfg):
            raise ValueError(f"{ckpt} belongs to another recipe; use --restart or another --ckpt-dir")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, seconds = state["step"], state["seconds"]
        log(f"resumed from {ckpt} at step {start} ({seconds / 60:.1f} min of training before)")
    log(f"model: {model.num_parameters() / 1e6:.2f}M parameters, vocab {model.config.text.vocab_size}, "
        f"{cfg.steps} steps x {cfg.batch_size}")
    views = make_views(world, cfg.views, cfg.seed)
    stream = itertools.chain(
        match_warmup_stream(world, cfg.batch_size, cfg.seed, cfg.match_warmup),
        batch_stream(world, views, cfg.batch_size, cfg.seed, cfg.image_repeat, cfg.mc_repeat,
                     cfg.strangers, cfg.matching, cfg.mc_reorder, cfg.stranger_ramp, cfg.stranger_views,
                     cfg.match_repeat, cfg.mc_neutral))
    for _ in range(start):                     # replay the batch order up to the resumed step
        next(stream)
    losses: list[float] = []
    t0, window, mc_window, match_window = time.time() - seconds, [], [], []
    with train_mode(model):
        for step in range(start, cfg.steps):
            epoch, qas = next(stream)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            rows = forward_loss(model, qa_batch(processor, qas), per_row=True)
            loss = rows.mean()
            mc_window += [r for r, qa in zip(rows.tolist(), qas) if qa.kind == "mc"]
            match_window += [r for r, qa in zip(rows.tolist(), qas) if qa.kind == "match"]
            optimizer_step(loss, list(model.parameters()), opt, cfg.grad_clip)
            losses.append(loss.item())
            window.append(loss.item())
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                rate = (done - start) / (time.time() - t0 - seconds)
                eta = (cfg.steps - done) / rate
                # mc: mean loss of the mc answers (letter + <|im_end|>); guessing the letter gives ln(4) / 2 = 0.69
                mc = f" mc {sum(mc_window) / len(mc_window):.3f}" if mc_window else ""
                mc += f" match {sum(match_window) / len(match_window):.3f}" if match_window else ""
                log(f"step {done}/{cfg.steps} epoch {epoch} loss {sum(window) / len(window):.4f}{mc} "
                    f"lr {lr_at(step, cfg):.2e} {rate:.2f} it/s ETA {eta / 60:.1f} min")
                window, mc_window, match_window = [], [], []
            if cfg.ckpt_every and done % cfg.ckpt_every == 0 and done < cfg.steps:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": done,
                         "seconds": time.time() - t0, "recipe": recipe(cfg)}
                write_atomic(str(ckpt), lambda tmp: torch.save(state, tmp))  # never half a checkpoint
                log(f"checkpoint {ckpt} at step {done}")
    return model, processor, losses, time.time() - t0  # seconds: the whole run's, resumed parts included


def recipe(cfg: PretrainConfig) -> dict:
    """The settings that decide the weights (everything but where files go, threads, logging, evaluation) and the
    world's version (`world.check_world_version` reads it from pretrain_metrics.json; a checkpoint of another world
    is not resumed)."""
    skip = {"out", "ckpt_dir", "restart", "threads", "log_every", "ckpt_every", "eval", "eval_batch_size"}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip} | {"world_version": WORLD_VERSION}


def save(model: Qwen3VL, processor: Processor, out: str) -> None:
    model.save_pretrained(out)
    processor.save_pretrained(out)


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------

def parse_args(argv=None) -> PretrainConfig:
    p = argparse.ArgumentParser(prog="python -m asru_min.world.pretrain", description=__doc__.split("\n")[0])
    for f in dataclasses.fields(PretrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__)
            p.add_argument(flag, type=typ, default=f.default)
    cfg = PretrainConfig(**vars(p.parse_args(argv)))
    for name, low in (("steps", 1), ("batch_size", 1), ("image_repeat", 1), ("mc_repeat", 0), ("match_repeat", 1),
                      ("strangers", 0), ("match_warmup", 0), ("views", 0)):
        if getattr(cfg, name) < low:
            p.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(cfg, name)}")
    if not 0 <= cfg.mc_neutral <= cfg.mc_repeat:
        p.error(f"--mc-neutral must be in [0, --mc-repeat = {cfg.mc_repeat}], got {cfg.mc_neutral}")
    return cfg


def main(argv=None) -> None:
    cfg = parse_args(argv)
    torch.set_num_threads(cfg.threads)

    def log(msg: str) -> None:
        print(f"[pretrain {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    command = "python -m asru_min.world.pretrain " + " ".join(sys.argv[1:] if argv is None else argv)
    world = World.generate(cfg.num_people, cfg.seed)
    model, processor, losses, seconds = train(cfg, world, log)
    save(model, processor, cfg.out)
    log(f"saved to {cfg.out} after {seconds / 60:.1f} min")
    report, res = None, None
    if cfg.eval:
        t1 = time.time()
        report, res = gate_report(model, processor, world, batch_size=cfg.eval_batch_size)
        log(f"gate evaluation took {(time.time() - t1) / 60:.1f} min")
        for k, v in report["figures"].items():
            log(f"  {k}: {v:.4f}" if v is not None else f"  {k}: n/a")
        for k, ok in report["gates"].items():
            log(f"  gate {'PASS' if ok else 'MISS'}: {k}")
    with open(os.path.join(cfg.out, "pretrain_metrics.json"), "w") as f:  # check_world_version reads the recipe
        json.dump({"recipe": recipe(cfg), "report": report, "results": res, "losses_every_20": losses[::20]}, f,
                  indent=1, default=str)
    Path(cfg.out, "README.md").write_text(model_card(cfg, model, report, seconds, losses, command))
    log("done")


if __name__ == "__main__":
    main()
