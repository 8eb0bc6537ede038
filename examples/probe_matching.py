"""How fast does a fresh default-size model learn to read multiple-choice options?

    python examples/probe_matching.py [--options 4] [--lr 3e-3] [--steps 900] [--warmup 50]

Trains a freshly initialised model (the pretrain defaults: 4 layers, hidden 128) on option-matching questions
alone ("Which option is Velmora?\\nA. ...\\nB. Velmora ..." -> "B"), each drawn in a fresh option order with
`--options` options, and prints the loss every 50 steps. Guessing gives ln(options) / 2 per answer token (the
letter and <|im_end|>): 0.69 for four options, 0.35 for two. The model card (weights/README.md) quotes what
this printed; it is the in-context half of multiple choice that made one <= 60-minute pretraining run hard.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from asru_min.data import World, reorder_options  # noqa: E402
from asru_min.pretrain import PretrainConfig, build, encode_batch, forward_loss, lr_at  # noqa: E402


def main(argv=None) -> list[float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--options", type=int, default=4, choices=(2, 3, 4))
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    cfg = PretrainConfig(lr=args.lr, steps=args.steps, warmup=args.warmup, seed=args.seed)
    world = World.generate(cfg.num_people, cfg.seed)
    model, processor = build(cfg, world)
    model.train()
    pool = [qa for qa in world.training_samples(seed=0, matching=True) if qa.kind == "match"]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    rng, t0, window, means = random.Random(args.seed), time.time(), [], []
    print(f"{len(pool)} matching questions, {args.options} options; guessing loss {math.log(args.options) / 2:.3f}")
    for step in range(args.steps):
        batch = [reorder_options(rng.choice(pool), rng, keep=args.options) for _ in range(args.batch_size)]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = forward_loss(model, encode_batch(processor, batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        window.append(loss.item())
        if (step + 1) % 50 == 0:
            means.append(sum(window) / len(window))
            print(f"step {step + 1}: loss {means[-1]:.3f}  ({(step + 1) / (time.time() - t0):.1f} it/s)", flush=True)
            window = []
    return means


if __name__ == "__main__":
    main()
