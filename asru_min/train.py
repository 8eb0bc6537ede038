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
"""

import argparse
import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from .evaluate import evaluate_model, format_table
from .grpo import GRPOConfig, build_boundary_set, make_optimizer, step_schedule, train_grpo
from .lora import apply_lora, load_lora, save_lora, unload_lora
from .model import Qwen3VL
from .data import PROTOCOLS, positive_questions
from .processor import Processor
from .steer import (changed_tensors, keep_refusals, knowledge_absence_direction, load_changed_tensors,
                    optimize_steering, save_direction)
from .world import load_world as world_splits_and_vocabulary


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run, one command-line flag each (--steer-lr for steer_lr); the one place the defaults
    live (the stage configs are built from it). They fit the tiny default model on a 2-core CPU (one run ~3 min);
    the paper's value is written next to a field where it differs."""

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
    alpha: float = 3.0  # retain weight (paper: 1; with steer_lr 3e-3 it keeps more retain answers, validation)
    steer_lr: float = 3e-3  # paper: 1e-4 (too small to move the tiny model in 3 epochs)
    steer_batch_size: int = 2
    steer_epochs: int = 3
    steer_retain_size: int = 720  # retain QA used for steering (0 = all of the retain split)
    # stage 2: data and LoRA
    boundary_size: int = 384  # paper: 200 + 200. At forget 10 % the default world has 100 forget generation QA,
    boundary_forget_share: float = 1 / 3  # so the set is 100 forget + 284 retain (paper: one half forget)
    boundary_kinds: str = "gen"  # the reward reads free text: generation QA only
    boundary_refusals: int = 0  # + this many questions to refuse, rewarded as forget QA (refusal 1.0, else 0.1):
    # private questions about known people (the world's private_train, version 2) and unknown-person questions
    # (the positives' `unknown`); none is a question of an evaluated split. 0: none (the paper's boundary set)
    lora_r: int = 16
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0  # rollouts, old log-probs: eval mode; updates: train mode; same policy only at 0
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    # stage 2: GRPO
    group_size: int = 8  # G
    temperature: float = 1.5
    top_p: float = 0.95
    max_new_tokens: int = 32  # paper: 2048; the tiny model answers in one sentence
    prompts_per_step: int = 8  # paper: 64
    mini_batch_size: int = 0  # responses per optimiser step (0 = all, on-policy; the release's 16: worse on validation)
    ppo_epochs: int = 1
    grpo_epochs: int = 3  # paper: 6 (over 400 samples); 3 x 384 / 8 = 144 steps
    clip_low: float = 0.2
    clip_high: float = 0.3
    dual_clip: float = 3.0  # release (verl clip_ratio_c); acts only off-policy (mini-batches / ppo_epochs)
    kl_coef: float = 0.1
    grpo_lr: float = 2e-3  # paper: 1e-6 with full fine-tuning; LoRA on the tiny model needs far more
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ckpt_every: int = 1  # GRPO steps between checkpoints

    def grpo(self) -> GRPOConfig:
        return GRPOConfig(group_size=self.group_size, temperature=self.temperature, top_p=self.top_p,
                          max_new_tokens=self.max_new_tokens, prompts_per_step=self.prompts_per_step,
                          mini_batch_size=self.mini_batch_size, ppo_epochs=self.ppo_epochs, epochs=self.grpo_epochs,
                          clip_low=self.clip_low, clip_high=self.clip_high, dual_clip=self.dual_clip,
                          kl_coef=self.kl_coef, lr=self.grpo_lr, weight_decay=self.weight_decay,
                          grad_clip=self.grad_clip, seed=self.seed)


# --- atomic files: write(tmp) then os.replace(tmp, path), so readers see the old file or the new one, never half
def write_atomic(path: str, write) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    if os.path.isdir(path):  # os.replace cannot replace a non-empty folder: that one is removed first
        shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=1))


def read_json(path: str):
    return json.loads(Path(path).read_text())


class Run:
    """The output folder of one run: paths, state.json, progress messages."""

    def __init__(self, cfg: TrainConfig, restart: bool = False, hook=None):
        self.cfg, self.dir, self.hook, self.t0 = cfg, cfg.out, hook, time.time()
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
        if self.hook:
            self.hook(stage)

    def log(self, msg: str) -> None:
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


def load_world(cfg: TrainConfig) -> tuple[dict, object]:
    """(splits, the judge's vocabulary of their world; None on the real benchmark): `asru_min.world.load_world`."""
    return world_splits_and_vocabulary(cfg.data, cfg.forget, cfg.num_people, cfg.world_seed, model=cfg.model)


def stage1_positives(cfg: TrainConfig, splits: dict) -> list:
    """Stage 1's positive questions: the synthetic world's `positives` split (people no evaluated split holds);
    with --positives, or when the data has none (MLLMU-Bench), `positive_size` unseen faces with a private question
    (`data.positive_questions`)."""
    positives = splits.get("positives", [])
    if cfg.positives or not positives:
        positives = positive_questions(cfg.positive_size, cfg.seed, cfg.positives, avoid_splits=splits)
    return positives


def stage_data(cfg: TrainConfig, splits: dict) -> dict:
    """Every set the two stages train on, drawn from `splits` without a model: "positives" (v's positives, before
    the refusal filter), "steer_forget" (v's negatives and the forget loss), "steer_retain" (the retain loss),
    "boundary" (GRPO's (qa, forget) pairs). In the grammar world none of them holds a question of an evaluated
    split other than forget / retain (tests/test_heldout.py). --protocol release keeps image questions only in
    steer_forget and boundary; the steering retain sample keeps both forms."""
    def usable(qas: list) -> list:
        return [qa for qa in qas if cfg.protocol != "release" or qa.image is not None]

    steer_forget = [qa for qa in usable(splits["forget"]) if qa.kind in cfg.steer_kinds.split(",")]
    positives = stage1_positives(cfg, splits)
    if not positives or not steer_forget:
        raise ValueError(f"stage 1 needs positive questions ({len(positives)}) and forget QA of kinds "
                         f"{cfg.steer_kinds!r} ({len(steer_forget)})")
    steer_retain = list(splits["retain"])
    if cfg.steer_retain_size and cfg.steer_retain_size < len(steer_retain):
        steer_retain = random.Random(cfg.seed).sample(steer_retain, cfg.steer_retain_size)
    boundary = build_boundary_set(usable(splits["forget"]), usable(splits["retain"]), cfg.boundary_size,
                                  tuple(cfg.boundary_kinds.split(",")), seed=cfg.seed,
                                  forget_share=cfg.boundary_forget_share)
    if cfg.boundary_refusals:
        boundary = with_refusals(boundary, usable(splits.get("private_train", []) + [
            qa for qa in splits.get("positives", []) if qa.kind == "unknown"]), cfg.boundary_refusals, cfg.seed)
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
    model.eval()
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
        base = Qwen3VL.from_pretrained(cfg.base_model, dtype=getattr(torch, cfg.dtype), device=cfg.device).eval()
    if cfg.refusal_filter:
        kept = keep_refusals(base, processor, positives, batch_size=cfg.eval_batch_size)
        run.log(f"stage1: {len(kept)}/{len(positives)} positive prompts answered with a refusal")
        positives = kept or positives  # an untrained model refuses nothing; fall back to all
    stats = {}
    v = knowledge_absence_direction(base, processor, positives, forget, cfg.layer, batch_size=cfg.eval_batch_size,
                                    negative_model=model, stats=stats)
    del base
    tmp = run.path(f"direction.tmp{os.getpid()}.safetensors")  # save_direction also writes the .json beside it
    save_direction(tmp, v, {**stats, "model": cfg.model})
    os.replace(os.path.splitext(tmp)[0] + ".json", run.path("direction.json"))
    os.replace(tmp, run.path("direction.safetensors"))
    run.log(f"stage1: direction at layer {cfg.layer}: |v| = {stats['norm']:.3f} "
            f"({stats['n_positive']} positive, {stats['n_negative']} negative prompts)")

    log_lines = []
    result = optimize_steering(model, processor, forget, data["steer_retain"], v, cfg.layer, c=cfg.forget_scale,
                               alpha=cfg.alpha, lr=cfg.steer_lr, batch_size=cfg.steer_batch_size,
                               epochs=cfg.steer_epochs, seed=cfg.seed, log_every=100,
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
        tmp = run.path(name + f".tmp{os.getpid()}")
        save_lora(model, tmp, base_model_name_or_path=cfg.model)
        torch.save(opt.state_dict(), os.path.join(tmp, "optimizer.pt"))
        os.replace(tmp, run.path(name))  # a fresh name: a directory rename is atomic
        old = run.state["grpo_ckpt"]
        run.commit(grpo_step=step, grpo_ckpt=name)
        if old and old != name:
            shutil.rmtree(run.path(old), ignore_errors=True)
        if run.hook:
            run.hook(f"grpo_step_{step}")

    model.train()
    records += train_grpo(model, processor, samples, gcfg, optimizer=optimizer, start_step=start, log_path=log_path,
                          on_step=checkpoint, progress=run.log)
    model.eval()
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


def run(cfg: TrainConfig, restart: bool = False, hook=None) -> dict:
    """The whole pipeline; returns {"vanilla": metrics, "stage1": metrics, "asru": metrics, "grpo_log": [...]}.
    hook(event) is called after every completed stage and every GRPO checkpoint (tests interrupt there)."""
    if not os.path.isdir(cfg.model):
        raise FileNotFoundError(f"model folder {cfg.model!r} not found "
                                "(train it with python -m asru_min.world.pretrain)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if cfg.ckpt_every < 1:
        raise ValueError(f"--ckpt-every must be >= 1 (GRPO steps between checkpoints), got {cfg.ckpt_every}")
    if cfg.protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {cfg.protocol!r}")
    splits, vocabulary = load_world(cfg)  # bad data, positives or base model stop the run here, before training
    processor = Processor.from_pretrained(cfg.model)
    check_base_model(cfg, processor)
    data = stage_data(cfg, splits)
    r = Run(cfg, restart, hook)
    r.log(f"output folder {cfg.out}; done before: {r.state['done'] or 'nothing'}")
    model = Qwen3VL.from_pretrained(cfg.model, dtype=getattr(torch, cfg.dtype), device=cfg.device)
    model.eval()
    r.log(f"model {cfg.model} ({model.num_parameters() / 1e6:.2f} M parameters); forget {cfg.forget} %: "
          + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))

    results = {"vanilla": evaluate_stage(r, "eval_vanilla", model, processor, splits, vocabulary)}
    stage1(r, model, processor, data)
    results["stage1"] = evaluate_stage(r, "eval_stage1", model, processor, splits, vocabulary)
    results["grpo_log"] = stage2(r, model, processor, data)
    results["asru"] = evaluate_stage(r, "eval_asru", model, processor, splits, vocabulary)

    table = format_table({k: results[k] for k in ("vanilla", "stage1", "asru")})
    write_text(r.path("table.txt"), table + "\n")
    print(table, flush=True)
    if cfg.save_merged:
        unload_lora(model, merge=True)  # plain nn.Linear layers holding W + (alpha / r) B A

        def save_merged(tmp: str) -> None:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
        write_atomic(r.path("merged"), save_merged)
        r.log(f"merged checkpoint written to {r.path('merged')}")
    r.log(f"finished; outputs in {cfg.out}")
    return results


def parse_args(argv=None) -> tuple[TrainConfig, bool]:
    """One flag per TrainConfig field (--steer-lr for steer_lr; booleans as --flag / --no-flag)."""
    p = argparse.ArgumentParser(prog="python -m asru_min.train", description=__doc__.split("\n")[0])
    for f in dataclasses.fields(TrainConfig):
        flag, default = "--" + f.name.replace("_", "-"), f.default
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            p.add_argument(flag, type=type(default) if default is not None else str, default=default,
                           help=f"default {default}")
    p.add_argument("--restart", action="store_true", help="discard a previous run in --out")
    args = vars(p.parse_args(argv))
    restart = args.pop("restart")
    return TrainConfig(**args), restart


def main(argv=None) -> dict:
    cfg, restart = parse_args(argv)
    return run(cfg, restart=restart)


if __name__ == "__main__":
    main()
