"""Robustness of unlearning (beyond the paper): are the forget facts gone from the weights, or only hidden?

    python examples/robustness.py --model weights/ [--run RUN_DIR] [--adapter DIR] [--forget 10] [--limit N]
                                  [--out robustness.json] [--relearn-steps 30] [--relearn-lr 1e-3]

RUN_DIR is a `python -m asru_min.train` output folder. Models measured: vanilla (--model alone), with --run also
stage 1 (+ RUN_DIR/stage1.safetensors copied into the named parameters) and ASRU (stage 1 + the RUN_DIR/lora/
adapter), with --adapter also one baseline adapter on the vanilla model. Four measures per model:

    likelihood_mc  knowledge independent of the output format: for each generation question with a ground truth,
                   does the reference sentence out-score three distractor sentences (the same sentence with the
                   fact replaced by another value of the same attribute: the other options of the person's
                   multiple-choice question with that ground truth, else other questions' ground truths) by the
                   sum of answer-token log-probs? accuracy over forget and retain (chance 25 %)
    relearn        fine-tune a copy with fresh LoRA adapters (an already loaded adapter is merged into the weights
                   first) on the generation questions of half of the forget people (seeded split by person) for
                   a fixed number of steps; forget leak on the OTHER half's generation questions before / after;
                   control: the same fine-tune on as many retain questions
    ablate         forget generation leak and refusal with `hooks.ablate_direction(model, L, v)` active (v, L from
                   RUN_DIR/direction.safetensors or --direction), against the same model without it
    release_mc     forget / retain multiple choice asked and parsed the release's way (`mllmu.with_protocol`,
                   `evaluate.release_letter`): accuracy (a refusal is wrong) and the share of answers that are
                   refusals or start with no option letter

Writes a JSON file (--out) and prints a table; progress goes to stderr.
`python examples/compare.py` runs the suite on every method's model (its --robustness, on by default).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from asru_min.data import qa_batch  # noqa: E402
from asru_min.evaluate import answer, correct_letter, limit_split, release_letter  # noqa: E402
from asru_min.hooks import ablate_direction  # noqa: E402
from asru_min.lora import apply_lora, load_lora, lora_modules, lora_parameters, unload_lora  # noqa: E402
from asru_min.metrics import is_refusal, leaks, normalize, unmarked  # noqa: E402
from asru_min.mllmu import question_stem, with_protocol  # noqa: E402
from asru_min.optim import answer_logprobs, eval_mode, optimizer_step, train_mode  # noqa: E402
from asru_min.steer import load_changed_tensors, load_direction  # noqa: E402


def _log(msg: str) -> None:
    print(f"[robustness] {msg}", file=sys.stderr, flush=True)


def _mean(xs: list):
    return sum(xs) / len(xs) if xs else None


def gen_questions(qas: list) -> list:
    """The generation questions of a split that state a fact (a non-empty ground truth)."""
    return [qa for qa in qas if qa.kind == "gen" and qa.ground_truth]


# --- 1. likelihood multiple choice
def replace_fact(sentence: str, truth: str, value: str) -> str | None:
    """`sentence` with its first case-insensitive occurrence of `truth` replaced by `value` (both without the
    brackets of `metrics.leaks`' notation); None without one."""
    pattern = re.compile(re.escape(unmarked(truth)), re.IGNORECASE)
    return pattern.sub(lambda m: unmarked(value), sentence, count=1) if pattern.search(sentence) else None


def distractors(qa, split: list, k: int = 3, seed: int = 0) -> list[str]:
    """k other values of `qa`'s attribute: the wrong options of the multiple-choice question about the same person
    with the same ground truth (same form first), then the ground truths of generation questions asking the same
    question about others, then any other ground truths of the split (drawn with `seed`)."""
    truth = normalize(qa.ground_truth)
    seen, out = {truth}, []

    def take(values):
        for v in values:
            if len(out) < k and normalize(v) not in seen:
                seen.add(normalize(v))
                out.append(v)

    mcs = [m for m in split if m.kind == "mc" and m.person == qa.person and m.options
           and normalize(m.ground_truth) == truth]
    mcs.sort(key=lambda m: m.form != qa.form)  # the same form's options first
    for m in mcs:
        take(m.options)
    if len(out) < k:
        rng = random.Random(f"{seed}/{qa.person}/{qa.question}")
        others = [g for g in gen_questions(split) if g.person != qa.person]
        same = [g.ground_truth for g in others if question_stem(g) == question_stem(qa)]
        rest = [g.ground_truth for g in others]
        rng.shuffle(same)
        rng.shuffle(rest)
        take(same)
        take(rest)
    return out


@torch.no_grad()
def likelihood_mc(model, processor, qas: list, split: list | None = None, batch_size: int = 32,
                  seed: int = 0) -> dict:
    """Share of generation questions in `qas` whose reference sentence (qa.answer) has a strictly higher sum of
    answer-token log-probs than each of its three distractor sentences (`distractors` from `split`, default
    `qas`). Questions whose fact does not appear in the sentence, or with fewer than 3 distractors, are skipped."""
    split = qas if split is None else split
    device = model.device
    items = []  # (qa, [reference, d1, d2, d3])
    skipped = 0
    for qa in gen_questions(qas):
        alts = [replace_fact(qa.answer, qa.ground_truth, d) for d in distractors(qa, split, 3, seed)]
        if len(alts) < 3 or any(a is None for a in alts):
            skipped += 1
            continue
        items.append((qa, [qa.answer] + alts))
    correct = []
    with eval_mode(model):
        for with_image in (True, False):  # a batch is all-image or all-text
            group = [it for it in items if (it[0].image is not None) == with_image]
            per = max(1, batch_size // 4)
            for s in range(0, len(group), per):
                chunk = group[s : s + per]
                qs = [qa for qa, sents in chunk for _ in sents]
                sents = [x for _, ss in chunk for x in ss]
                batch = qa_batch(processor, qs, answers=sents, device=device)
                score = answer_logprobs(model, batch)[0].view(len(chunk), 4)  # (Q, 4) log p(option | question)
                correct += (score[:, 0] > score[:, 1:].max(dim=1).values).tolist()
    return {"acc": _mean(correct), "n": len(correct), "skipped": skipped}


# --- generation leak (used by relearn and ablate)
def gen_scores(model, processor, qas: list, batch_size: int = 32, max_new_tokens: int = 50) -> dict:
    """Greedy answers (`evaluate.answer`) to generation questions: leak_rate (`metrics.leaks` of the ground
    truth), refusal_rate (`metrics.is_refusal`), n."""
    preds = answer(model, processor, qas, batch_size=batch_size, max_new_tokens=max_new_tokens) if qas else []
    return {"leak_rate": _mean([leaks(p, qa.ground_truth) for qa, p in zip(qas, preds)]),
            "refusal_rate": _mean([is_refusal(p) for p in preds]), "n": len(qas)}


# --- 2. relearning attack
def split_people(qas: list, seed: int = 0) -> tuple[list, list]:
    """The people of `qas` in two halves (sorted, then shuffled with `seed`): (train people, held-out people)."""
    people = sorted({qa.person for qa in qas})
    random.Random(f"{seed}/relearn").shuffle(people)
    half = len(people) // 2
    return people[:half], people[half:]


def fresh_adapters(model, r: int = 16, alpha: float = 16.0) -> None:
    """Fresh LoRA adapters (text decoder, all seven maps, no dropout); an adapter already on the model is merged
    into its weights first, so the attack starts from exactly the loaded model."""
    if lora_modules(model):
        unload_lora(model, merge=True)
    apply_lora(model, r=r, alpha=alpha, dropout=0.0)


def finetune(model, processor, qas: list, steps: int, lr: float, batch_size: int = 4, seed: int = 0) -> list[float]:
    """`steps` AdamW steps on the LoRA parameters minimising the token-mean NLL of `qas`' answers (batches drawn
    without replacement per pass, seeded). Returns the loss of every step."""
    params = lora_parameters(model)
    if not params:
        raise ValueError("finetune needs LoRA adapters (fresh_adapters)")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = model.device
    rng, order, losses = random.Random(f"{seed}/finetune"), [], []
    with train_mode(model):
        for _ in range(steps):
            # not optim.shuffled_batches: a batch begins with what the last pass left (other batches than its)
            if len(order) < batch_size:
                more = list(range(len(qas)))
                rng.shuffle(more)
                order += more
            idx, order = order[:batch_size], order[batch_size:]
            batch = qa_batch(processor, [qas[i] for i in idx], device=device)
            loss = -answer_logprobs(model, batch)[1].mean()  # the answers' mean NLL
            optimizer_step(loss, params, optimizer, grad_clip=1.0)
            losses.append(float(loss.detach()))
    return losses


def relearn(model, processor, forget: list, retain: list, steps: int = 30, lr: float = 1e-3, batch_size: int = 4,
            seed: int = 0, limit: int | None = None, eval_batch_size: int = 32, max_new_tokens: int = 50) -> dict:
    """The relearning attack (module docstring): leak on the held-out forget half before, after fine-tuning on the
    other half ("forget"), and after the control fine-tune on as many retain questions ("retain"); also the leak
    on the fine-tuned half itself after its fine-tune (did the attack take?). `model` is not changed."""
    gens = gen_questions(forget)
    train_people, held_people = split_people(gens, seed)
    train = [qa for qa in gens if qa.person in train_people]
    held = limit_split([qa for qa in gens if qa.person in held_people], limit)
    pool = gen_questions(retain)
    control = random.Random(f"{seed}/control").sample(pool, min(len(train), len(pool)))
    out = {"steps": steps, "lr": lr, "batch_size": batch_size, "adapters": "fresh LoRA r=16 (loaded adapter merged)",
           "train_people": train_people, "held_out_people": held_people, "n_train": len(train),
           "before": gen_scores(model, processor, held, eval_batch_size, max_new_tokens)}
    for name, data in (("forget", train), ("retain", control)):
        attacked = copy.deepcopy(model)
        with torch.random.fork_rng(devices=[]):  # the adapters' init from `seed`, whatever ran before
            torch.manual_seed(seed)
            fresh_adapters(attacked)
        losses = finetune(attacked, processor, data, steps, lr, batch_size, seed)
        out[f"after_{name}"] = gen_scores(attacked, processor, held, eval_batch_size, max_new_tokens)
        out[f"loss_{name}"] = [losses[0], losses[-1]] if losses else []
        if name == "forget":
            out["trained_half_after"] = gen_scores(attacked, processor, limit_split(train, limit), eval_batch_size,
                                                   max_new_tokens)
        del attacked
    return out


# --- 3. direction ablation
def ablate(model, processor, forget: list, direction: torch.Tensor, layer: int, limit: int | None = None,
           batch_size: int = 32, max_new_tokens: int = 50) -> dict:
    """Forget generation leak / refusal without and with `hooks.ablate_direction(model, layer, direction)`."""
    qas = limit_split(gen_questions(forget), limit)
    off = gen_scores(model, processor, qas, batch_size, max_new_tokens)
    with ablate_direction(model, layer, direction):
        on = gen_scores(model, processor, qas, batch_size, max_new_tokens)
    return {"layer": layer, "without": off, "with": on}


# --- 4. release-style multiple choice
def score_release_mc(qas: list, preds: list[str]) -> dict:
    """Release parsing (`evaluate.release_letter`): correct = the parsed letter is the right one and the answer is
    not a refusal; unparsed_rate = refusals and answers starting with no option letter; refusal_rate."""
    parsed = [release_letter(p) for p in preds]
    refused = [is_refusal(p) for p in preds]
    return {"acc": _mean([l == correct_letter(qa) and not r for qa, l, r in zip(qas, parsed, refused)]),
            "unparsed_rate": _mean([l == "" or r for l, r in zip(parsed, refused)]),
            "refusal_rate": _mean(refused), "n": len(qas)}


def release_mc(model, processor, qas: list, shots_from: list, seed: int = 0, limit: int | None = None,
               batch_size: int = 32, max_new_tokens: int = 50) -> dict:
    """The multiple-choice questions of `qas` under the release protocol, answered greedily and scored."""
    asked = limit_split(with_protocol([qa for qa in qas if qa.kind == "mc"], "release", shots_from, seed), limit)
    preds = answer(model, processor, asked, batch_size=batch_size, max_new_tokens=max_new_tokens) if asked else []
    return score_release_mc(asked, preds)


# --- the suite
def run_suite(model, processor, splits: dict, args, direction=None, name: str = "model") -> dict:
    """All four measures on one model (direction: (v, layer) or None to skip the ablation)."""
    forget, retain = splits["forget"], splits["retain"]
    lim, bs, mnt = args.limit, args.batch_size, args.max_new_tokens
    out, t0 = {}, time.time()
    _log(f"{name}: likelihood_mc")
    out["likelihood_mc"] = {s: likelihood_mc(model, processor, limit_split(q, lim), q, bs, args.seed)
                            for s, q in (("forget", forget), ("retain", retain))}
    _log(f"{name}: relearn ({args.relearn_steps} steps, lr {args.relearn_lr}, batch {args.relearn_batch_size})")
    out["relearn"] = relearn(model, processor, forget, retain, args.relearn_steps, args.relearn_lr,
                             args.relearn_batch_size, args.seed, lim, bs, mnt)
    if direction is not None:
        _log(f"{name}: ablate (layer {direction[1]})")
        out["ablate"] = ablate(model, processor, forget, direction[0], direction[1], lim, bs, mnt)
    _log(f"{name}: release_mc")
    out["release_mc"] = {s: release_mc(model, processor, q, q, args.seed, lim, bs, mnt)  # example: the split's own
                         for s, q in (("forget", forget), ("retain", retain))}
    out["seconds"] = round(time.time() - t0, 1)
    _log(f"{name}: done in {out['seconds']} s")
    return out


COLUMNS = (("LMC-f", ("likelihood_mc", "forget", "acc")), ("LMC-r", ("likelihood_mc", "retain", "acc")),
           ("RL-pre", ("relearn", "before", "leak_rate")), ("RL-f", ("relearn", "after_forget", "leak_rate")),
           ("RL-r", ("relearn", "after_retain", "leak_rate")), ("Leak", ("ablate", "without", "leak_rate")),
           ("Leak-abl", ("ablate", "with", "leak_rate")), ("RMC-f", ("release_mc", "forget", "acc")),
           ("Unpars-f", ("release_mc", "forget", "unparsed_rate")), ("RMC-r", ("release_mc", "retain", "acc")))


def format_table(results: dict) -> str:
    """One row per model, values x 100 ("-" where not measured)."""
    width = max([5] + [len(n) for n in results])
    header = f"{'model':<{width + 2}}" + "".join(f"{h:>10}" for h, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        cells = []
        for _, path in COLUMNS:
            v = r
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            cells.append(f"{100 * v:>10.1f}" if isinstance(v, (int, float)) else f"{'-':>10}")
        lines.append(f"{name:<{width + 2}}" + "".join(cells))
    legend = ("LMC: likelihood MC acc (forget / retain); RL: held-out forget leak before relearning, after relearning "
              "on the other forget half, after the retain control; Leak / Leak-abl: forget leak without / with the "
              "direction ablated; RMC: release-parsed MC acc; Unpars-f: forget MC answers refused or without a letter")
    return "\n".join(lines + [legend])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python examples/robustness.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="weights/", help="the vanilla checkpoint directory")
    p.add_argument("--run", default=None, help="a python -m asru_min.train output folder: adds stage 1 and ASRU")
    p.add_argument("--adapter", default=None, help="a baseline LoRA adapter directory, measured on the vanilla model")
    p.add_argument("--direction", default=None, help="direction file (default: RUN/direction.safetensors)")
    p.add_argument("--forget", type=int, default=10)
    p.add_argument("--data", default=None, help="MLLMU-Bench root; default: the synthetic world")
    p.add_argument("--num-people", type=int, default=100)
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="person split, distractors, fine-tune order, shots")
    p.add_argument("--limit", type=int, default=60, help="at most N questions per kind and form per measure (0: all)")
    p.add_argument("--relearn-steps", type=int, default=30)
    p.add_argument("--relearn-lr", type=float, default=1e-3)
    p.add_argument("--relearn-batch-size", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="robustness.json")
    args = p.parse_args(argv)
    args.limit = args.limit or None
    return args


def load_run_direction(path: str) -> tuple[torch.Tensor, int]:
    """(v, layer) of a direction file (`steer.save_direction`; a train.py run's direction.safetensors)."""
    v, meta = load_direction(path)
    if "layer" not in meta:
        raise ValueError(f"{path}: no layer in its .json metadata")
    return v, int(meta["layer"])


def model_builders(vanilla, run: str | None = None, adapters: dict | None = None) -> list:
    """[(name, build)] of the models to measure: vanilla itself; each adapter folder of `adapters` ({name: dir}) on
    a copy; with `run` (a train.py folder) stage 1 (its stage1.safetensors on a copy) and ASRU (+ its lora/)."""
    def with_adapter(path):
        m = copy.deepcopy(vanilla)
        load_lora(m, path)
        return m.eval()

    def stage1():
        m = copy.deepcopy(vanilla)
        load_changed_tensors(m, os.path.join(run, "stage1.safetensors"))
        return m.eval()

    def asru():
        m = stage1()
        load_lora(m, os.path.join(run, "lora"))
        return m.eval()

    models = [("vanilla", lambda: vanilla)]
    models += [(name, lambda path=path: with_adapter(path)) for name, path in (adapters or {}).items()]
    return models + ([("stage1", stage1), ("asru", asru)] if run else [])


def main(argv=None) -> dict:
    args = parse_args(argv)
    from asru_min.model import Qwen3VL
    from asru_min.processor import Processor
    from asru_min.world import load_world

    torch.set_num_threads(args.threads)
    vanilla = Qwen3VL.from_pretrained(args.model, device=args.device)
    processor = Processor.from_pretrained(args.model)
    splits, _ = load_world(args.data, args.forget, args.num_people, args.world_seed, model=args.model)
    path = args.direction or (os.path.join(args.run, "direction.safetensors") if args.run else None)
    direction = load_run_direction(path) if path else None
    adapters = {os.path.basename(os.path.normpath(args.adapter)): args.adapter} if args.adapter else {}
    results = {}
    for name, build in model_builders(vanilla, args.run, adapters):
        results[name] = run_suite(build(), processor, splits, args, direction, name)
    results["meta"] = {k: v for k, v in vars(args).items()}
    print(format_table({k: v for k, v in results.items() if k != "meta"}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        _log(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
