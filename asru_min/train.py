"""ASRU end to end:  python -m asru_min.train [--out runs/asru] [--model weights/] [--forget 10] ...

evaluate vanilla -> stage 1 (knowledge-absence direction v at layer L, steering optimisation of layer L's down_proj)
-> evaluate -> stage 2 (LoRA + GRPO with the tiered ASRU reward on a boundary set of forget + retain QA) -> evaluate
-> print the before / after table. Outputs in --out: config.json, state.json (what is done), metrics_<stage>.json,
direction.safetensors (+ .json), stage1.safetensors (the one tensor stage 1 changed), steer_log.jsonl,
grpo_log.jsonl, lora/ (PEFT-format adapter), ckpt/step_NNNNNN/ (last GRPO checkpoint: adapter + optimiser),
grpo_curves.png, table.txt, and with --save-merged merged/ (a plain Qwen3-VL checkpoint, adapters merged in).

Resume by running the same command again: finished stages are loaded, GRPO continues after its last checkpoint (a
step's sampling seed depends only on --seed and the step, so a resumed run draws what the interrupted one would
have). Files are written under a temporary name and os.replace'd, state.json last, so an interruption leaves the
old or the new state, never half of one. --restart starts over.

Several processes (GPUs) for stage 2:  torchrun --nproc_per_node N -m asru_min.train [the same flags]
(--device cuda: rank r drives GPU r; on a CPU the processes talk over gloo). Rank 0 evaluates, runs stage 1 and
writes every file while the others wait; they load stage1.safetensors, then every process generates and trains on
its block of each GRPO step's prompts and DistributedDataParallel sums the adapter gradients, so N processes
make the one-process steps up to float rounding (tests/test_distributed.py; examples/torchrun_check.py: 3e-6 after
12 steps; over many steps rounding eventually flips a sampled token and the runs drift apart). Each step needs at
least N prompts. Resuming works the same way: rank 0 wrote the checkpoint, every process loads it. See
asru_min/distributed.py.
"""

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from . import distributed
from .distributed import write_atomic
from . import memory
from .evaluate import evaluate_model, format_table
from .grpo import (REWARD_REFERENCES, REWARDS, GRPOConfig, build_boundary_set, check_process_count,
                   make_optimizer, step_schedule, train_grpo)
from .lora import TEXT_TARGETS, apply_lora, load_lora, save_lora, unload_lora
from .model import Qwen3VL, Qwen3VLConfig
from .optim import GRAD_CHECKPOINT
from .data import FORGET_PERCENTS
from .mllmu import PROTOCOLS
from .processor import Processor
from .steer import (changed_tensors, draw_refused, keep_refusals, knowledge_absence_direction, load_changed_tensors,
                    optimize_steering, positive_questions, save_direction)
from .world import load_world

DTYPES = ("float32", "bfloat16", "float16")
QA_KINDS = ("gen", "mc", "cloze")
STEER_DATA = ("plain", "release")  # the stage-1 data as this project draws it, or as the release does
FORGET_POSITIONS = ("prompt", "release")
RETAIN_POSITIONS = ("sequence", "release")


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run, one command-line flag each (--steer-lr for steer_lr); the one place the defaults
    live. Stage 1 and LoRA take their settings from here as arguments (`stage1`, `stage2`); stage 2's `GRPOConfig`
    holds the GRPO fields, copied by name (`grpo`). The defaults fit the tiny default model on a 2-core CPU (one
    run ~5 min); the paper's value is written next to a field where it differs.
    Fixed, not flags (each either changes nothing learnt or follows the release): the advantage's epsilon 1e-6
    (`GRPOConfig.adv_eps`, it only guards a group of equal rewards), a steering log line every 100 steps, the
    refusal filters' answer lengths (`steer.keep_refusals` 32 new tokens, `steer.draw_refused` 128 as the release)
    and RELEASE_POSITIVE_POOL (candidate faces per positive under --steer-data release)."""

    # run
    model: str = "weights/"
    data: str | None = None  # MLLMU-Bench root; None = the synthetic world the default weights know
    forget: int = 10
    protocol: str = "plain"  # prompts and parsing of the evaluation: "plain" (this project) or "release" (ASRU's)
    num_people: int = 100  # synthetic world size and seed (must match the weights)
    world_seed: int = 0
    out: str = "runs/asru"
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    threads: int = 1  # torch CPU threads (0 = torch's default); a tiny model runs fastest on one
    eval_limit: int = 60  # questions per split / kind / form (0 = all); 60 covers all of forget and test
    eval_batch_size: int = 32
    eval_max_new_tokens: int = 50  # MLLMU-Bench protocol
    save_merged: bool = False
    # stage 1: direction
    layer: int = 4  # decoder layer L (paper: 17 of 36 in Qwen3-VL; here 4 of 6, chosen on the validation split)
    positives: str | None = None  # folder of face images for the positives (None: the data's unknown / private
    positive_size: int = 400  # questions, or for MLLMU-Bench faces drawn by the world's portrait generator)
    base_model: str | None = None  # model that reads the positives (paper: the original one); None = --model
    refusal_filter: bool = True  # keep only positive prompts the model answers with "not" / "no" / "sorry"
    steer_kinds: str = "gen"  # forget QA kinds for v's negatives and the forget loss (mc prompts dominated v)
    # stage 1: steering optimisation
    forget_scale: float = 3.0  # c
    steer_retain_weight: float = 3.0  # alpha of L_retain (paper: 1; with steer_lr 3e-3, 3 kept more retain answers)
    steer_lr: float = 3e-3  # paper: 1e-4 (too small to move the tiny model in 3 epochs)
    steer_weight_decay: float = 0.01  # AdamW's (torch's default, as the release)
    steer_batch_size: int = 2
    steer_epochs: int = 3
    steer_retain_size: int = 720  # retain QA used for steering (0 = all of the retain split)
    steer_data: str = "plain"  # "release": its positives and steering sets (`stage_data`, docs/METHOD.md 1a, 1b)
    forget_position: str = "prompt"  # forget loss at the last prompt token; "release": index -1 of right-padded QA
    retain_position: str = "sequence"  # retain loss over every real token; "release": index -1 of right-padded QA
    # stage 2: data and LoRA
    boundary_size: int = 384  # paper: 200 + 200. At forget 10 % the default world has 100 forget generation QA,
    boundary_forget_share: float = 1 / 3  # so the set is 100 forget + 284 retain (paper: one half forget)
    boundary_kinds: str = "gen"  # the reward reads free text: generation QA only
    boundary_refusals: int = 64  # + this many questions to refuse, rewarded as forget QA (refusal 1.0, else 0.1):
    # private questions about known people (the world's private_train) and unknown-person questions (the
    # positives' `unknown`); none is a question of an evaluated split. Paper: 0 (its boundary set has none); 64 kept
    # private questions refused on the validation split (text 98 %, 86 % at 0) and halved its leaks, docs/METHOD.md 2
    lora_r: int = 16
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0  # rollouts, old log-probs: eval mode; updates: train mode; same policy only at 0
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    # stage 2: GRPO
    reward: str = "plain"  # "plain" (asru_reward) or "release" (the release's expression, stemmed ROUGE, sentence)
    reward_reference: str = "fact"  # plain reward's ROUGE reference, "fact" or "sentence" (release: the sentence;
    # the fact kept as many retain answers and half the drift in wording on the validation split, docs/METHOD.md 5)
    group_size: int = 8  # G
    temperature: float = 1.5
    top_p: float = 0.95
    max_new_tokens: int = 32  # paper: 2048; the tiny model answers in one sentence
    prompts_per_step: int = 8  # paper: 64
    rollout_batch: int = 8  # prompts (x group_size samples) per generation call; 0 = all prompts of a step
    mini_batch_size: int = 0  # responses per optimiser step (0 = all, on-policy; the release's 16: worse on validation)
    epochs_per_rollout: int = 1  # passes over one rollout batch (verl's ppo_epochs)
    grpo_epochs: int = 3  # passes over the boundary set; paper: 6 (over 400 samples); 3 x 384 / 8 = 144 steps
    clip_low: float = 0.2
    clip_high: float = 0.3
    dual_clip: float = 3.0  # release (verl clip_ratio_c); acts only off-policy (mini-batches / epochs_per_rollout)
    kl_coef: float = 0.1
    grpo_lr: float = 2e-3  # paper: 1e-6 with full fine-tuning; LoRA on the tiny model needs far more
    grpo_weight_decay: float = 0.01  # AdamW's, on the LoRA parameters
    grad_clip: float = 1.0
    ckpt_every: int = 1  # GRPO steps between checkpoints
    micro_batch_tokens: int = 16384  # rows x padded length per forward/backward piece of GRPO (0: one piece)
    grad_checkpoint: str = "auto"  # auto, on, off: GRPO update recomputes decoder layers in backward (auto: CUDA)
    logprob_chunk: int = 4096  # tokens whose float32 logits exist at once in a log-prob pass (0: all)
    # --dry-run: print each phase's estimated peak memory (asru_min/memory.py) from config.json alone, then exit
    dry_run: bool = False
    dry_run_prompt_tokens: int = 0  # 0 = one 512x512 portrait (256 image tokens under Qwen3-VL) + 42 text tokens
    dry_run_processes: int = 0  # processes of the run to estimate; 0 = $WORLD_SIZE, or 1

    def grpo(self) -> GRPOConfig:
        """Stage 2's settings: every GRPOConfig field is a field of this config of the same name (but adv_eps)."""
        return GRPOConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GRPOConfig)
                             if f.name != "adv_eps"})


class SettingsError(ValueError):
    """Settings that cannot work with this model or this machine, found before any work starts."""


def device_problem(device: str) -> str | None:
    """Why `device` cannot run here, or None: not a device name, CUDA / MPS absent, a GPU index past the count."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        return f"not a torch device ({e})"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available here (torch.cuda.is_available() is False): use --device cpu"
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        return f"there is no GPU {dev.index}: {torch.cuda.device_count()} visible"
    if dev.type == "mps" and not torch.backends.mps.is_available():
        return "Apple MPS is not available here: use --device cpu"
    if dev.type not in ("cpu", "cuda", "mps"):
        return "not a device this code runs on (cpu, cuda, cuda:N, mps)"
    return None


def validate_settings(cfg: TrainConfig, model_config: Qwen3VLConfig, base_config: Qwen3VLConfig | None = None) -> None:
    """Check the run's settings against the model's config.json (and --base-model's), and this machine, before any
    work (no data, no weights read); raise one SettingsError listing every bad setting as "--flag value: must be
    ...". One line per check: (field, holds, what it must be)."""
    layers, max_len = model_config.text.num_hidden_layers, model_config.text.max_position_embeddings
    device = device_problem(cfg.device)

    def finite(x) -> bool:
        return isinstance(x, (int, float)) and math.isfinite(x)

    def kinds(s: str) -> bool:
        return bool(s) and set(s.split(",")) <= set(QA_KINDS)

    checks = [
        ("forget", cfg.forget in FORGET_PERCENTS, f"one of {FORGET_PERCENTS} (the benchmark's forget splits)"),
        ("protocol", cfg.protocol in PROTOCOLS, f"one of {PROTOCOLS}"),
        ("device", device is None, f"usable here; {device}"),
        ("dtype", cfg.dtype in DTYPES, f"one of {DTYPES}"),
        ("threads", cfg.threads >= 0, ">= 0 (0 = torch's default)"),
        ("eval_limit", cfg.eval_limit >= 0, ">= 0 (0 = all)"),
        ("eval_batch_size", cfg.eval_batch_size >= 1, ">= 1"),
        ("eval_max_new_tokens", 1 <= cfg.eval_max_new_tokens < max_len, f"in [1, {max_len}) (max_position_embeddings)"),
        ("layer", 0 <= cfg.layer < layers, f"a decoder layer of the model: 0 <= layer < {layers}"),
        ("base_model", base_config is None or (base_config.text.hidden_size == model_config.text.hidden_size
                                               and cfg.layer < base_config.text.num_hidden_layers),
         f"a model with --model's hidden size {model_config.text.hidden_size} and a layer {cfg.layer} (v compares "
         "their activations)"),
        ("positive_size", cfg.positive_size >= 1, ">= 1"),
        ("steer_kinds", kinds(cfg.steer_kinds), f"comma-separated QA kinds out of {QA_KINDS}"),
        ("forget_scale", finite(cfg.forget_scale) and cfg.forget_scale > 0, "finite and > 0"),
        ("steer_retain_weight", finite(cfg.steer_retain_weight) and cfg.steer_retain_weight >= 0, "finite and >= 0"),
        ("steer_lr", finite(cfg.steer_lr) and cfg.steer_lr > 0, "finite and > 0"),
        ("steer_weight_decay", finite(cfg.steer_weight_decay) and cfg.steer_weight_decay >= 0, "finite and >= 0"),
        ("steer_batch_size", cfg.steer_batch_size >= 1, ">= 1"),
        ("steer_epochs", cfg.steer_epochs >= 1, ">= 1"),
        ("steer_retain_size", cfg.steer_retain_size >= 0, ">= 0 (0 = all of the retain split)"),
        ("boundary_size", cfg.boundary_size >= 1, ">= 1"),
        ("boundary_forget_share", finite(cfg.boundary_forget_share) and 0 < cfg.boundary_forget_share < 1,
         "in (0, 1)"),
        ("boundary_refusals", cfg.boundary_refusals >= 0, ">= 0"),
        ("boundary_kinds", kinds(cfg.boundary_kinds), f"comma-separated QA kinds out of {QA_KINDS}"),
        ("lora_r", cfg.lora_r >= 1, ">= 1"),
        ("lora_alpha", finite(cfg.lora_alpha) and cfg.lora_alpha > 0, "finite and > 0"),
        ("lora_dropout", finite(cfg.lora_dropout) and 0 <= cfg.lora_dropout < 1, "in [0, 1)"),
        ("lora_targets", bool(cfg.lora_targets) and set(cfg.lora_targets.split(",")) <= set(TEXT_TARGETS),
         f"comma-separated names out of {TEXT_TARGETS}"),
        ("group_size", cfg.group_size >= 2, ">= 2 (the group advantage needs a baseline)"),
        ("temperature", finite(cfg.temperature) and cfg.temperature > 0, "finite and > 0"),
        ("top_p", finite(cfg.top_p) and 0 < cfg.top_p <= 1, "in (0, 1]"),
        ("max_new_tokens", 1 <= cfg.max_new_tokens < max_len, f"in [1, {max_len}) (max_position_embeddings)"),
        ("prompts_per_step", cfg.prompts_per_step >= 1, ">= 1"),
        ("mini_batch_size", cfg.mini_batch_size >= 0, ">= 0 (0 = the whole rollout batch)"),
        ("rollout_batch", cfg.rollout_batch >= 0, ">= 0 (0 = all prompts of a step in one generation call)"),
        ("micro_batch_tokens", cfg.micro_batch_tokens >= 0, ">= 0 (0 = the whole mini-batch in one piece)"),
        ("logprob_chunk", cfg.logprob_chunk >= 0, ">= 0 (0 = all scored tokens' logits at once)"),
        ("grad_checkpoint", cfg.grad_checkpoint in GRAD_CHECKPOINT, f"one of {GRAD_CHECKPOINT}"),
        ("epochs_per_rollout", cfg.epochs_per_rollout >= 1, ">= 1"),
        ("grpo_epochs", cfg.grpo_epochs >= 1, ">= 1"),
        ("clip_low", finite(cfg.clip_low) and 0 <= cfg.clip_low < 1, "in [0, 1) (the ratio's floor 1 - clip_low > 0)"),
        ("clip_high", finite(cfg.clip_high) and cfg.clip_high >= 0, "finite and >= 0"),
        ("dual_clip", cfg.dual_clip == 0 or (finite(cfg.dual_clip) and cfg.dual_clip > 1), "0 (off) or > 1"),
        ("reward", cfg.reward in REWARDS, f"one of {REWARDS}"),
        ("reward_reference", cfg.reward_reference in REWARD_REFERENCES, f"one of {REWARD_REFERENCES}"),
        ("steer_data", cfg.steer_data in STEER_DATA, f"one of {STEER_DATA}"),
        ("forget_position", cfg.forget_position in FORGET_POSITIONS, f"one of {FORGET_POSITIONS}"),
        ("retain_position", cfg.retain_position in RETAIN_POSITIONS, f"one of {RETAIN_POSITIONS}"),
        ("kl_coef", finite(cfg.kl_coef) and cfg.kl_coef >= 0, "finite and >= 0"),
        ("grpo_lr", finite(cfg.grpo_lr) and cfg.grpo_lr > 0, "finite and > 0"),
        ("grpo_weight_decay", finite(cfg.grpo_weight_decay) and cfg.grpo_weight_decay >= 0, "finite and >= 0"),
        ("grad_clip", finite(cfg.grad_clip) and cfg.grad_clip >= 0, "finite and >= 0 (0 = no clipping)"),
        ("ckpt_every", cfg.ckpt_every >= 1, ">= 1 (GRPO steps between checkpoints)"),
    ]
    bad = [f"--{name.replace('_', '-')} {getattr(cfg, name)!r}: must be {need}" for name, holds, need in checks
           if not holds]
    if bad:
        raise SettingsError(f"{len(bad)} setting(s) cannot work with {cfg.model} "
                            f"({layers} decoder layers):\n  " + "\n  ".join(bad))


# --- the run's files, each written whole (`distributed.write_atomic`)
def write_text(path: str, text: str) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=1))


def read_json(path: str):
    return json.loads(Path(path).read_text())


class Run:
    """The output folder of one run: paths, state.json, progress messages. Under torchrun rank 0 alone writes
    and prints; the other processes read the state it wrote (`reload`)."""

    def __init__(self, cfg: TrainConfig, restart: bool = False, interrupt=None):
        self.cfg, self.dir, self.interrupt, self.t0 = cfg, cfg.out, interrupt, time.time()
        if distributed.is_main():
            self.prepare(restart)
        self.reload()

    def prepare(self, restart: bool) -> None:
        """Create (or with restart empty) the folder; check that a run already in it has this configuration and
        these weights; write config.json and state.json."""
        cfg = self.cfg
        if restart and os.path.isdir(self.dir) and os.listdir(self.dir):
            if not os.path.exists(self.path("config.json")):  # never delete a folder that is not a run
                raise ValueError(f"--restart: {self.dir} is not empty and holds no run (config.json); not deleting it")
            shutil.rmtree(self.dir)
        os.makedirs(self.dir, exist_ok=True)
        saved = self.path("config.json")
        if os.path.exists(saved) and read_json(saved) != dataclasses.asdict(cfg):
            raise ValueError(f"{self.dir} holds a run with another configuration; use --restart or another --out")
        write_json(saved, dataclasses.asdict(cfg))
        sha = weights_sha256(cfg.model)
        self.state = read_json(self.path("state.json")) if os.path.exists(self.path("state.json")) else \
            {"done": [], "grpo_step": -1, "grpo_ckpt": None, "weights_sha256": sha}
        if self.state.get("weights_sha256") != sha:  # same flags, retrained weights: nothing saved is valid
            raise ValueError(f"{self.dir} holds a run made from other weights than {cfg.model}; use --restart "
                             "or another --out")
        self.commit()

    def reload(self) -> None:
        """Read state.json once rank 0 has written it (every process waits for it here)."""
        distributed.barrier()
        self.state = read_json(self.path("state.json"))

    def path(self, *parts) -> str:
        return os.path.join(self.dir, *parts)

    def done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def commit(self, **changes) -> None:
        self.state.update(changes)
        write_json(self.path("state.json"), self.state)

    def finish(self, stage: str) -> None:
        self.commit(done=self.state["done"] + [stage])
        self.log(f"{stage} done")
        if self.interrupt:
            self.interrupt(stage)

    def log(self, msg: str) -> None:
        if distributed.is_main():
            print(f"[train {time.time() - self.t0:6.1f}s] {msg}", flush=True)


def weights_sha256(folder: str) -> str:
    """SHA-256 over the folder's *.safetensors files (sorted by name): which weights a run was made from."""
    h = hashlib.sha256()
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")):
        h.update(name.encode())
        with open(os.path.join(folder, name), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


RELEASE_POSITIVE_POOL = 4  # --steer-data release: at most this many x --positive-size candidate faces


def stage1_positives(cfg: TrainConfig, splits: dict) -> list:
    """Stage 1's positive questions: the synthetic world's `positives` split (people no evaluated split holds);
    with --positives, or when the data has none (MLLMU-Bench), `positive_size` unseen faces with a private question
    (`steer.positive_questions`). --steer-data release: always unseen faces with the release's suffix, as
    candidates (RELEASE_POSITIVE_POOL x positive_size), from which stage 1 keeps the first `positive_size` the
    model refuses (`steer.draw_refused`)."""
    positives = splits.get("positives", [])
    if cfg.steer_data == "release":
        return positive_questions(RELEASE_POSITIVE_POOL * cfg.positive_size, cfg.seed, cfg.positives,
                                  avoid_splits=splits)
    if cfg.positives or not positives:
        positives = positive_questions(cfg.positive_size, cfg.seed, cfg.positives, avoid_splits=splits)
    return positives


def stage_data(cfg: TrainConfig, splits: dict) -> dict:
    """Every set the two stages train on, drawn from `splits` without a model: "positives" (v's positives, before
    the refusal filter), "steer_forget" (v's negatives and the forget loss), "steer_retain" (the retain loss),
    "boundary" (GRPO's (qa, forget) pairs, with `boundary_refusals` questions to refuse drawn from the world's
    private_train and the unknown-person questions among the positives: on MLLMU-Bench, unseen faces asked a private
    question). In the grammar world none of them holds a question of an evaluated
    split other than forget / retain (tests/test_heldout.py). --protocol release keeps image questions only in
    steer_forget and boundary; the steering retain sample keeps both forms. --steer-data release draws the
    steering sets as the release: image questions only (forget: of `steer_kinds`), the retain set from the open
    (generation) image questions of the retain split, `steer_retain_size` of them (0 = every one, the release)."""
    release = cfg.steer_data == "release"

    def usable(qas: list) -> list:
        return [qa for qa in qas if cfg.protocol != "release" or qa.image is not None]

    steer_forget = [qa for qa in usable(splits["forget"]) if qa.kind in cfg.steer_kinds.split(",")
                    and (not release or qa.image is not None)]
    positives = stage1_positives(cfg, splits)
    if not positives or not steer_forget:
        raise ValueError(f"stage 1 needs positive questions ({len(positives)}) and forget QA of kinds "
                         f"{cfg.steer_kinds!r} ({len(steer_forget)})")
    steer_retain = [qa for qa in splits["retain"] if not release or (qa.kind == "gen" and qa.image is not None)]
    if cfg.steer_retain_size and cfg.steer_retain_size < len(steer_retain):
        steer_retain = random.Random(cfg.seed).sample(steer_retain, cfg.steer_retain_size)
    boundary = build_boundary_set(usable(splits["forget"]), usable(splits["retain"]), cfg.boundary_size,
                                  tuple(cfg.boundary_kinds.split(",")), seed=cfg.seed,
                                  forget_share=cfg.boundary_forget_share)
    if cfg.boundary_refusals:
        boundary = with_refusals(boundary, usable(splits.get("private_train", []) + [
            qa for qa in positives if qa.kind == "unknown"]), cfg.boundary_refusals, cfg.seed)
    return {"positives": positives, "steer_forget": steer_forget, "steer_retain": steer_retain, "boundary": boundary}


def with_refusals(boundary: list, refusals: list, n: int, seed: int) -> list:
    """`boundary` plus n (qa, True) pairs drawn from `refusals` (questions with no ground truth, so the reward pays
    1.0 for a refusal and 0.1 for anything else), in a fresh random order."""
    if n > len(refusals):
        raise ValueError(f"boundary_refusals {n} > the {len(refusals)} questions to refuse the data holds")
    rng = random.Random(f"{seed}/refusals")
    out = boundary + [(qa, True) for qa in rng.sample(refusals, n)]
    rng.shuffle(out)
    return out


def check_base_model(cfg: TrainConfig, processor) -> None:
    """--base-model must exist and share --model's tokenizer (v compares activations of the same prompts)."""
    if not cfg.base_model:
        return
    if not os.path.isdir(cfg.base_model):
        raise FileNotFoundError(f"--base-model folder {cfg.base_model!r} not found")
    if Processor.from_pretrained(cfg.base_model).tokenizer.get_vocab() != processor.tokenizer.get_vocab():
        raise ValueError(f"--base-model {cfg.base_model} has another tokenizer than --model {cfg.model}")


def evaluate_stage(run: Run, stage: str, model, processor, splits: dict, vocabulary=None) -> dict:
    path = run.path(f"metrics_{stage.removeprefix('eval_')}.json")
    if run.done(stage):
        return read_json(path)
    cfg = run.cfg
    run.log(f"{stage}: evaluating (limit {cfg.eval_limit or 'all'} per split / kind / form)")
    results = evaluate_model(model, processor, splits, batch_size=cfg.eval_batch_size,
                             max_new_tokens=cfg.eval_max_new_tokens, limit=cfg.eval_limit or None, verbose=False,
                             protocol=cfg.protocol, seed=cfg.world_seed,
                             vocabulary=vocabulary)
    write_json(path, results)
    run.finish(stage)
    return results


def stage1(run: Run, model, processor, data: dict) -> None:
    """Knowledge-absence direction + steering optimisation on `stage_data`'s sets; on resume, the saved changed
    tensors are loaded. The positives are read on --base-model when given (the paper's original model), the
    negatives on `model`."""
    cfg = run.cfg
    weights = run.path("stage1.safetensors")
    if run.done("stage1"):
        load_changed_tensors(model, weights)
        run.log("stage1: loaded the steered weights from the previous run")
        return
    positives, forget = data["positives"], data["steer_forget"]
    base = model
    if cfg.base_model:
        base = Qwen3VL.from_pretrained(cfg.base_model, dtype=getattr(torch, cfg.dtype), device=cfg.device)
    if cfg.steer_data == "release":  # the release: candidates in order until positive_size are refused
        drawn = draw_refused(base, processor, positives, cfg.positive_size, batch_size=cfg.eval_batch_size) \
            if cfg.refusal_filter else positives[: cfg.positive_size]
        run.log(f"stage1: {len(drawn)} positive prompts drawn (release filter) from {len(positives)} candidates")
        positives = drawn or positives[: cfg.positive_size]
    elif cfg.refusal_filter:
        kept = keep_refusals(base, processor, positives, batch_size=cfg.eval_batch_size)
        run.log(f"stage1: {len(kept)}/{len(positives)} positive prompts answered with a refusal")
        positives = kept or positives  # an untrained model refuses nothing; fall back to all
    stats = {}
    v = knowledge_absence_direction(base, processor, positives, forget, cfg.layer, batch_size=cfg.eval_batch_size,
                                    negative_model=model, stats=stats)
    del base
    save_direction(run.path("direction.safetensors"), v, {**stats, "model": cfg.model})  # and direction.json
    run.log(f"stage1: direction at layer {cfg.layer}: |v| = {stats['norm']:.3f} "
            f"({stats['n_positive']} positive, {stats['n_negative']} negative prompts)")

    log_lines = []
    result = optimize_steering(model, processor, forget, data["steer_retain"], v, cfg.layer, c=cfg.forget_scale,
                               alpha=cfg.steer_retain_weight, lr=cfg.steer_lr, batch_size=cfg.steer_batch_size,
                               epochs=cfg.steer_epochs, seed=cfg.seed, log_every=100,
                               weight_decay=cfg.steer_weight_decay,
                               forget_position=cfg.forget_position, retain_position=cfg.retain_position,
                               callback=lambda step, record: log_lines.append(json.dumps(record)))
    write_text(run.path("steer_log.jsonl"), "".join(line + "\n" for line in log_lines))
    changed = changed_tensors(model, result["original"])
    write_atomic(weights, lambda tmp: save_file(changed, tmp, metadata={"format": "pt"}))
    run.log(f"stage1: {result['steps']} steering steps, changed {list(changed)}")
    run.finish("stage1")


def stage2(run: Run, model, processor, data: dict) -> list[dict]:
    """LoRA + GRPO on `stage_data`'s boundary set, checkpointed every cfg.ckpt_every steps; returns the GRPO log."""
    cfg, gcfg = run.cfg, run.cfg.grpo()
    log_path = run.path("grpo_log.jsonl")
    if run.done("stage2"):
        load_lora(model, run.path("lora"))
        run.log("stage2: loaded the LoRA adapter from the previous run")
        with open(log_path) as f:
            return [json.loads(line) for line in f]
    apply_lora(model, targets=tuple(cfg.lora_targets.split(",")), r=cfg.lora_r, alpha=cfg.lora_alpha,
               dropout=cfg.lora_dropout)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], gcfg)
    start, records = 0, []
    if run.state["grpo_ckpt"]:  # resume after the last checkpoint; drop log lines of steps after it
        ckpt = run.path(run.state["grpo_ckpt"])
        load_lora(model, ckpt)
        optimizer.load_state_dict(torch.load(os.path.join(ckpt, "optimizer.pt")))
        start = run.state["grpo_step"] + 1
        with open(log_path) as f:
            records = [r for r in map(json.loads, f) if r["step"] < start]
        run.log(f"stage2: resuming GRPO at step {start} from {ckpt}")
    write_text(log_path, "".join(json.dumps(r) + "\n" for r in records))

    samples = data["boundary"]
    steps_total = len(step_schedule(len(samples), gcfg))
    n_forget = sum(forget for _, forget in samples)
    run.log(f"stage2: LoRA r={cfg.lora_r} on {cfg.lora_targets}; GRPO over {len(samples)} boundary QA "
            f"({n_forget} forget + {len(samples) - n_forget} retain), "
            f"G={cfg.group_size}, {steps_total} steps")

    def checkpoint(step: int, record: dict, opt) -> None:
        if (step + 1) % cfg.ckpt_every and step + 1 != steps_total:
            return
        name = os.path.join("ckpt", f"step_{step:06d}")
        if distributed.is_main():  # every process holds the same adapter and optimiser state
            def save(tmp: str) -> None:
                save_lora(model, tmp, base_model_name_or_path=cfg.model)
                torch.save(opt.state_dict(), os.path.join(tmp, "optimizer.pt"))
            write_atomic(run.path(name), save)
            old = run.state["grpo_ckpt"]
            run.commit(grpo_step=step, grpo_ckpt=name)
            if old and old != name:
                shutil.rmtree(run.path(old), ignore_errors=True)
        if run.interrupt:
            run.interrupt(f"grpo_step_{step}")

    records += train_grpo(model, processor, samples, gcfg, optimizer=optimizer, start_step=start, log_path=log_path,
                          on_step=checkpoint, progress=run.log)  # each step sets the modes it needs (grpo_step)
    write_atomic(run.path("lora"), lambda tmp: save_lora(model, tmp, base_model_name_or_path=cfg.model))
    draw_curves(records, run.path("grpo_curves.png"))
    run.finish("stage2")
    return records


def draw_curves(records: list[dict], path: str, width: int = 900, height: int = 360) -> None:
    """Two panels (pillow only): mean reward on forget and retain prompts per step; KL (mean k3) per step."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    kl_max = max([r["kl"] for r in records if r.get("kl") == r.get("kl")] + [1e-4])
    panels = [("reward per step (mean over the prompts' samples)", 1.0,  # (title, top of the y axis, series)
               [("forget", "reward_forget_mean", (200, 40, 40)), ("retain", "reward_retain_mean", (40, 90, 200))]),
              ("KL to reference (mean k3) per step", kl_max, [("kl", "kl", (40, 150, 60))])]
    pw, n = width // len(panels), max(len(records) - 1, 1)
    for i, (title, hi, series) in enumerate(panels):
        x0, y0, x1, y1 = i * pw + 60, 30, (i + 1) * pw - 20, height - 40  # plot area; the y axes start at 0
        d.rectangle([x0, y0, x1, y1], outline="black")
        for xy, text in (((x0, 8), title), ((x0 - 55, y0), f"{hi:.3g}"), ((x0 - 55, y1 - 10), "0"),
                         ((x0, y1 + 8), "step 0"), ((x1 - 50, y1 + 8), f"step {max(len(records) - 1, 0)}")):
            d.text(xy, text, fill="black")
        for j, (label, key, color) in enumerate(series):
            pts = [(x0 + (x1 - x0) * k / n, y1 - (y1 - y0) * r[key] / hi)
                   for k, r in enumerate(records) if isinstance(r.get(key), (int, float)) and r[key] == r[key]]
            if len(pts) > 1:
                d.line(pts, fill=color, width=2)
            for p in pts:
                d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=color)
            d.text((x1 - 60 * (len(series) - j), 8), label, fill=color)  # legend above the plot
    write_atomic(path, lambda tmp: img.save(tmp, format="PNG"))


def run(cfg: TrainConfig, restart: bool = False, interrupt=None) -> dict:
    """The whole pipeline; returns {"vanilla": metrics, "stage1": metrics, "asru": metrics, "grpo_log": [...]}.
    For tests: interrupt(event) is called after every completed stage and every GRPO checkpoint (a test raises
    there to stop the run as a crash would, then resumes it). Under torchrun (`distributed`) the processes other
    than rank 0 take part in stage 2 only and return {"grpo_log": [...]}; their interrupt sees stage 2's events."""
    if not os.path.isdir(cfg.model):
        raise FileNotFoundError(f"model folder {cfg.model!r} not found "
                                "(train it with python -m asru_min.world.pretrain)")
    # config.json only (refuses MoE / other models); a missing --base-model folder is reported by check_base_model
    base_config = Qwen3VLConfig.from_pretrained(cfg.base_model) if cfg.base_model and os.path.isdir(cfg.base_model) \
        else None
    validate_settings(cfg, Qwen3VLConfig.from_pretrained(cfg.model), base_config)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    distributed.init(cfg.device)
    # bad data, positives or base model stop the run here, before training
    splits, vocabulary = load_world(cfg.data, cfg.forget, cfg.num_people, cfg.world_seed, model=cfg.model)
    processor = Processor.from_pretrained(cfg.model)
    check_base_model(cfg, processor)
    data = stage_data(cfg, splits)
    check_process_count(step_schedule(len(data["boundary"]), cfg.grpo()))
    r = Run(cfg, restart, interrupt)
    r.log(f"output folder {cfg.out}; done before: {r.state['done'] or 'nothing'}")
    model = Qwen3VL.from_pretrained(cfg.model, dtype=getattr(torch, cfg.dtype), device=cfg.device)  # in eval mode
    r.log(f"model {cfg.model} ({model.num_parameters() / 1e6:.2f} M parameters); forget {cfg.forget} %: "
          + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))

    results = {}
    if distributed.is_main():
        results["vanilla"] = evaluate_stage(r, "eval_vanilla", model, processor, splits, vocabulary)
        stage1(r, model, processor, data)
        results["stage1"] = evaluate_stage(r, "eval_stage1", model, processor, splits, vocabulary)
    r.reload()
    if not distributed.is_main():
        stage1(r, model, processor, data)  # done by rank 0: load the tensors it changed
    results["grpo_log"] = stage2(r, model, processor, data)
    if not distributed.is_main():
        return results
    results["asru"] = evaluate_stage(r, "eval_asru", model, processor, splits, vocabulary)

    table = format_table({k: results[k] for k in ("vanilla", "stage1", "asru")})
    write_text(r.path("table.txt"), table + "\n")
    print(table, flush=True)
    if cfg.save_merged:
        unload_lora(model, merge=True)  # plain nn.Linear layers: W + (alpha / r) B A summed in float32, cast once

        def save_merged(tmp: str) -> None:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
        write_atomic(r.path("merged"), save_merged)
        r.log(f"merged checkpoint written to {r.path('merged')}")
    r.log(f"finished; outputs in {cfg.out}")
    return results


def dry_run(cfg: TrainConfig) -> str:
    """`memory.report` for cfg: --model's config.json (a folder, or the file), no weights, no data."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"--dtype must be float32, bfloat16 or float16, got {cfg.dtype!r}")
    processes = cfg.dry_run_processes or int(os.environ.get("WORLD_SIZE", "1"))
    model_cfg, pre = memory.load_config(cfg.model)
    base_params = None  # --base-model: its own size when its config is at hand, else --model's
    if cfg.base_model and os.path.isfile(os.path.join(cfg.base_model, "config.json")):
        base_params = memory.parameter_count(memory.load_config(cfg.base_model)[0])
    return memory.report(model_cfg, pre, memory.Flags.from_train_config(cfg, processes), base_params)


FLAG_HELP = {"dry_run_prompt_tokens": "prompt length --dry-run assumes; default 0 = one MLLMU-Bench portrait "
                                     "(512x512 pixels: 1024 patches, 256 image tokens under Qwen3-VL's processor) "
                                     "+ 42 tokens of chat markup and question"}


def parse_args(argv=None) -> tuple[TrainConfig, bool]:
    """One flag per TrainConfig field (--steer-lr for steer_lr; booleans as --flag / --no-flag)."""
    p = argparse.ArgumentParser(prog="python -m asru_min.train", description=__doc__.split("\n")[0])
    for f in dataclasses.fields(TrainConfig):
        flag, default = "--" + f.name.replace("_", "-"), f.default
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            p.add_argument(flag, type=type(default) if default is not None else str, default=default,
                           help=FLAG_HELP.get(f.name, f"default {default}"))
    p.add_argument("--restart", action="store_true", help="discard a previous run in --out")
    args = vars(p.parse_args(argv))
    restart = args.pop("restart")
    return TrainConfig(**args), restart


def main(argv=None) -> dict:
    cfg, restart = parse_args(argv)
    if cfg.dry_run:  # before any weights or data are read
        print(dry_run(cfg), flush=True)
        return {}
    try:
        return run(cfg, restart=restart)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    try:
        main()
    except SettingsError as e:  # a bad flag: its message, not a traceback
        raise SystemExit(f"python -m asru_min.train: error: {e}")
