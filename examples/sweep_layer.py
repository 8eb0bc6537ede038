"""Choose the steering layer L from evidence: for every text-decoder layer, compute the knowledge-absence
direction v_L, then

  (a) inference-time steering: add c * v_L to the output of layer L at every position (hooks.add_direction)
      and answer the questions, for each c in --scales;
  (b) with --optimize, a short steering optimisation of layer L's down_proj (steer.optimize_steering), then
      answer the questions without hooks (the weights are restored afterwards),

and print, per layer and setting, the refusal rate and leak rate on forget questions and the accuracy and refusal
rate on retain questions and general (utility) questions. Forget / retain questions are the validation splits
(held-out phrasings and views; no reported figure uses them) where the data has them, else forget / retain. A
good L makes forget questions refused while retain and utility answers stay as they were.

    python examples/sweep_layer.py --model weights/ [--scales 1,3] [--optimize --c 1,3 --steer-lr 1e-3]
                                   [--refusal-filter] [--limit 20] [--out sweep.json]

Score used for the recommendation (higher is better), per row:
    boundary = forget_refusal - retain_refusal - max(0, base_retain_acc - retain_acc)
               - max(0, base_utility_acc - utility_acc)
i.e. refusals gained where they belong minus refusals and accuracy lost where they don't.
"""

import argparse
import json
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from asru_min.evaluate import answer, limit_split  # noqa: E402
from asru_min.data import qa_batch  # noqa: E402
from asru_min.hooks import add_direction, decoder_layers, run_to_layer  # noqa: E402
from asru_min.metrics import is_refusal, leaks  # noqa: E402
from asru_min.model import Qwen3VL  # noqa: E402
from asru_min.processor import Processor  # noqa: E402
from asru_min.train import TrainConfig, stage1_positives  # noqa: E402
from asru_min.world import load_splits  # noqa: E402
from asru_min.steer import (  # noqa: E402
    keep_refusals, knowledge_absence_direction, optimize_steering,
)


def _mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def _truth(qa):
    return qa.ground_truth or qa.answer


def score(model, processor, sets: dict, args) -> dict:
    """Answer the three question sets greedily and reduce them to the six numbers of the table."""
    preds = {name: answer(model, processor, qas, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
             for name, qas in sets.items()}
    f, r, u = (list(zip(sets[k], preds[k])) for k in ("forget", "retain", "utility"))
    return {
        "forget_refusal": _mean([is_refusal(p) for _, p in f]),
        "forget_leak": _mean([leaks(p, _truth(qa)) for qa, p in f]),
        "retain_acc": _mean([leaks(p, _truth(qa)) for qa, p in r]),
        "retain_refusal": _mean([is_refusal(p) for _, p in r]),
        "utility_acc": _mean([leaks(p, _truth(qa)) for qa, p in u]),
        "utility_refusal": _mean([is_refusal(p) for _, p in u]),
        "example_forget": f[0][1] if f else "",
        "example_retain": r[0][1] if r else "",
    }


@torch.no_grad()
def last_token_activations(model, processor, qas: list, layer: int, batch_size: int) -> torch.Tensor:
    """(N, D) float64: layer `layer`'s output at the last prompt token of every question."""
    device = model.device
    rows = [run_to_layer(model, qa_batch(processor, qas[s : s + batch_size], with_answers=False, device=device),
                         layer)[0][:, -1]
            for s in range(0, len(qas), batch_size)]
    return torch.cat(rows).double().cpu()


def separability(forget_acts: torch.Tensor, retain_acts: torch.Tensor) -> float:
    """Held-out accuracy of the difference-of-means classifier forget vs retain (fit on even rows, tested on
    odd rows; 0.5 = chance): can anything at this layer tell forget prompts from retain prompts? A steering
    update of one layer can only be selective where this is high."""
    fit_f, fit_r, test_f, test_r = forget_acts[::2], retain_acts[::2], forget_acts[1::2], retain_acts[1::2]
    w = fit_f.mean(0) - fit_r.mean(0)
    threshold = 0.5 * (fit_f.mean(0) + fit_r.mean(0)) @ w
    correct = int((test_f @ w > threshold).sum()) + int((test_r @ w <= threshold).sum())
    return correct / (len(test_f) + len(test_r))


def boundary(row: dict, base: dict) -> float:
    return (row["forget_refusal"] - row["retain_refusal"] - max(0.0, base["retain_acc"] - row["retain_acc"])
            - max(0.0, base["utility_acc"] - row["utility_acc"]))


COLUMNS = ("forget_refusal", "forget_leak", "retain_acc", "retain_refusal", "utility_acc", "utility_refusal")


def print_table(rows: list[dict]) -> None:
    head = (f"{'layer':>5} {'setting':<20} {'|v|':>7} {'sep':>5} " + " ".join(f"{c:>15}" for c in COLUMNS)
            + f" {'boundary':>9}")
    print(head)
    print("-" * len(head))
    for row in rows:
        layer = "-" if row["layer"] is None else str(row["layer"])
        norm = "" if row.get("norm") is None else f"{row['norm']:.2f}"
        sep = "" if row.get("separability") is None else f"{row['separability']:.2f}"
        print(f"{layer:>5} {row['setting']:<20} {norm:>7} {sep:>5} " + " ".join(f"{row[c]:>15.3f}" for c in COLUMNS)
              + f" {row['boundary']:>9.3f}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="weights/")
    p.add_argument("--data", default=None, help="MLLMU-Bench root; default: the synthetic world")
    p.add_argument("--forget", type=int, default=10)
    p.add_argument("--num-people", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", default="all", help="comma-separated layer indices or 'all'")
    p.add_argument("--scales", default="1,3", help="inference-time steering: h_L + c v for each c ('' = none)")
    p.add_argument("--positions", default="all", choices=("all", "last"))
    p.add_argument("--optimize", action="store_true", help="also run a short steering optimisation per layer")
    d = TrainConfig()
    p.add_argument("--c", default=str(d.forget_scale), help="forget_scale(s) c of the optimisation, comma-separated")
    p.add_argument("--steer-lr", default=str(d.steer_lr), help="learning rate(s) of the optimisation, comma-separated")
    p.add_argument("--steer-epochs", type=int, default=1)
    p.add_argument("--steer-retain", type=int, default=240, help="retain QA used by the optimisation")
    p.add_argument("--forget-kinds", default="gen", help="forget question kinds used for v and the forget loss")
    p.add_argument("--refusal-filter", action="store_true", help="keep only positives the model refuses")
    p.add_argument("--limit", type=int, default=20, help="questions per kind and form in each evaluated split")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="write all rows as JSON here")
    args = p.parse_args(argv)

    if not os.path.isdir(args.model):
        raise FileNotFoundError(f"model directory {args.model!r} not found (run python -m asru_min.world.pretrain)")
    model = Qwen3VL.from_pretrained(args.model, dtype=torch.float32, device=args.device)
    processor = Processor.from_pretrained(args.model)
    splits = load_splits(args.data, args.forget, args.num_people, args.seed, model=args.model)

    # evaluation sets: generation questions (where refusing is a visible behaviour) + general questions; the
    # validation splits (held-out questions no reported figure uses) where the data has them, so the layer is not
    # chosen on the prompts steering trains on nor on the test split
    held, held_retain = ("validation", "retain_validation") if splits.get("validation") else ("forget", "retain")
    sets = {"forget": [qa for qa in limit_split(splits[held], args.limit) if qa.kind == "gen"],
            "retain": [qa for qa in limit_split(splits[held_retain], args.limit) if qa.kind == "gen"],
            "utility": limit_split(splits["utility"], args.limit)}
    positives = stage1_positives(TrainConfig(), splits)  # as train.py: people no evaluated split holds
    if args.refusal_filter:
        kept = keep_refusals(model, processor, positives, batch_size=args.batch_size)
        print(f"refusal filter: {len(kept)}/{len(positives)} positive prompts answered with a refusal")
        positives = kept or positives
    # negatives and the steering forget set: forget questions of the kinds in --forget-kinds (default: open
    # "gen" questions, like the positives; multiple-choice prompts end in a very different state just because of
    # their format, and would dominate the difference of means)
    kinds = set(args.forget_kinds.split(","))
    negatives = [qa for qa in splits["forget"] if qa.kind in kinds]
    steer_retain = list(splits["retain"])
    if args.steer_retain and args.steer_retain < len(steer_retain):
        steer_retain = random.Random(args.seed).sample(steer_retain, args.steer_retain)
    retain_probe = [qa for qa in splits["retain"] if qa.kind in kinds][: len(negatives)]
    n_layers = len(decoder_layers(model))
    layers = list(range(n_layers)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    scales = [float(x) for x in args.scales.split(",") if x.strip()]
    print(f"model {args.model}: {n_layers} decoder layers; eval ({held} splits) forget {len(sets['forget'])} / retain "
          f"{len(sets['retain'])} / utility {len(sets['utility'])} questions; direction from {len(positives)} "
          f"positive and {len(negatives)} negative prompts", flush=True)

    t0 = time.time()
    base = score(model, processor, sets, args)
    rows = [{"layer": None, "setting": "no steering", "norm": None, **base}]
    rows[0]["boundary"] = boundary(base, base)
    for L in layers:
        stats = {}
        v = knowledge_absence_direction(model, processor, positives, negatives, L, batch_size=args.batch_size,
                                        stats=stats)
        sep = separability(last_token_activations(model, processor, negatives, L, args.batch_size),
                           last_token_activations(model, processor, retain_probe, L, args.batch_size))
        print(f"[sweep] layer {L}: |v| {stats['norm']:.2f}, forget/retain separability {sep:.2f}", flush=True)
        rows.append({"layer": L, "setting": "direction only", "norm": stats["norm"], "separability": sep,
                     **{k: float("nan") for k in COLUMNS}, "boundary": float("nan")})
        for c in scales:
            with add_direction(model, L, v.float(), c, positions=args.positions):
                row = {"layer": L, "setting": f"add {c:g}v", "norm": stats["norm"],
                       **score(model, processor, sets, args)}
            row["boundary"] = boundary(row, base)
            rows.append(row)
            print(f"[sweep] layer {L} add {c:g}v: forget refusal {row['forget_refusal']:.2f}, retain acc "
                  f"{row['retain_acc']:.2f} ({time.time() - t0:.0f}s)", flush=True)
        if args.optimize:
            W = decoder_layers(model)[L].mlp.down_proj.weight
            W0 = W.detach().clone()
            for c in [float(x) for x in args.c.split(",")]:
                for lr in [float(x) for x in args.steer_lr.split(",")]:
                    res = optimize_steering(model, processor, negatives, steer_retain, v, L, c=c,
                                            alpha=TrainConfig.steer_retain_weight, lr=lr,
                                            batch_size=TrainConfig.steer_batch_size, epochs=args.steer_epochs,
                                            seed=args.seed, log_every=0)
                    row = {"layer": L, "setting": f"opt c={c:g} lr={lr:g}", "norm": stats["norm"],
                           **score(model, processor, sets, args),
                           "first_forget_loss": res["forget_loss"][0], "final_forget_loss": res["forget_loss"][-1],
                           "final_retain_loss": res["retain_loss"][-1]}
                    row["boundary"] = boundary(row, base)
                    rows.append(row)
                    with torch.no_grad():
                        W.copy_(W0)  # every run starts from the vanilla model again
                    print(f"[sweep] layer {L} optimised c={c:g} lr={lr:g}: forget loss {res['forget_loss'][0]:.1f} "
                          f"-> {res['forget_loss'][-1]:.1f}, retain loss {res['retain_loss'][-1]:.2f}, forget "
                          f"refusal {row['forget_refusal']:.2f}, retain refusal {row['retain_refusal']:.2f} "
                          f"({time.time() - t0:.0f}s)", flush=True)

    print()
    print_table(rows)
    steered = [r for r in rows if r["layer"] is not None and r["setting"] != "direction only"]
    pool = [r for r in steered if r["setting"].startswith("opt")] or steered
    best = max(pool, key=lambda r: r["boundary"]) if pool else None
    if best is not None and best["boundary"] > 0:
        print(f"\nrecommended layer: {best['layer']} ({best['setting']}: boundary {best['boundary']:.3f}, forget "
              f"refusal {best['forget_refusal']:.2f}, retain refusal {best['retain_refusal']:.2f}, retain acc "
              f"{best['retain_acc']:.2f} vs {base['retain_acc']:.2f} unsteered)")
    else:
        print("\nno layer / setting refuses forget questions more than retain ones here (boundary <= 0): "
              "try other --c / --steer-lr / --steer-epochs")
    if pool:
        gap = max(pool, key=lambda r: (r["forget_refusal"] - r["retain_refusal"], r["utility_acc"]))
        print(f"largest forget - retain refusal gap: layer {gap['layer']} ({gap['setting']}): "
              f"{gap['forget_refusal']:.2f} - {gap['retain_refusal']:.2f} = "
              f"{gap['forget_refusal'] - gap['retain_refusal']:+.2f}, utility acc {gap['utility_acc']:.2f} vs "
              f"{base['utility_acc']:.2f} unsteered")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return {"rows": rows}


if __name__ == "__main__":
    main()
