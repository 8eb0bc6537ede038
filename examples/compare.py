"""Compare ASRU with the unlearning baselines on the default world, for forget 5, 10 and 15 %.

    python examples/compare.py [--model weights/] [--out results/] [--forget 5,10,15] [--quick]

Per forget level it runs
    asru_min.train.run      -> vanilla (no unlearning), stage 1 alone (steering), full ASRU (stage 1 + GRPO)
    asru_min.baselines      -> GA, GradDiff, KL-Min, NPO, refusal SFT (idk), each from the vanilla weights
and evaluates all of them with the same evaluate_model settings (greedy, <= 50 new tokens, the same
`--eval-limit` questions per split / kind / form). Runs are resumable: a run whose JSON exists is not redone
when it was made from the same model file (SHA-256) with the same configuration; otherwise it is run again.

Writes, under --out:
    runs/<method>_f<k>.json   metrics (evaluate_model output) + timing of every run; runs/asru_f<k>/ is train.py's folder
    README.md                 the tables, the two headline ratios with their definitions, example answers
    summary.json              the numbers behind README.md
    chart.png                 (left) forget leakage vs retain/utility score, (right) generation quality per method

Definitions (all on the "all" form = image + text questions; every metric in [0, 1]):
    forget knowledge  K(m) = mean of forget mc_acc, forget cloze_acc, forget leak_rate, forget rougeL and the
                             same four on the test split (paraphrased questions, transformed images)
    unlearning effectiveness  UE(m) = 1 - K(m) / K(vanilla)   (share of the vanilla model's forget knowledge
                             removed; 0 = nothing forgotten, 1 = everything)
    model utility      U(m) = mean of retain mc_acc, retain cloze_acc, retain rougeL and utility acc
    generation quality GQ(m) = mean metrics.judge score over forget generation answers (the rule-based
                             stand-in for the paper's GPT-4o-mini judge: contextual refusal, no leakage,
                             naturalness; halved for a hallucinated fact)
    headline 1, UE gain     = (UE(ASRU) - mean_b UE(b)) / mean_b UE(b)   (relative, in %; the absolute
                             difference in points is printed beside it)
    headline 2, GQ ratio    = GQ(ASRU) / mean_b GQ(b)
    b ranges over the five baselines; every number is averaged over the forget levels run.
The paper reports +24.6 % unlearning effectiveness and 5.8x generation quality on average over its baselines
(its judge and metric mix differ; see docs/METHOD.md).

Budget: the full run (3 forget levels x (train.py + 5 baselines)) takes about 15-20 min on 2 free CPU cores with
the tiny default model (train.py ~2 min per level, a baseline ~30 s), well inside 60 min even on shared cores;
--quick runs forget 10 % only with 20 evaluation questions per split / kind / form (5 min measured on a
default-size checkpoint, one torch thread, shared cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from asru_min.baselines.methods import LR_SCALE, METHODS, PAPER_LR, BaselineConfig, run_baseline  # noqa: E402
from asru_min.train import weights_sha256  # noqa: E402

NAMES = {"vanilla": "Vanilla", "ga": "GA", "graddiff": "GradDiff", "klmin": "KL-Min", "npo": "NPO",
         "idk": "Refusal SFT", "stage1": "ASRU stage 1", "asru": "ASRU"}
ORDER = ("vanilla", "ga", "graddiff", "klmin", "npo", "idk", "stage1", "asru")
COLORS = {"vanilla": (120, 120, 120), "ga": (230, 120, 20), "graddiff": (200, 170, 0), "klmin": (150, 80, 200),
          "npo": (30, 150, 200), "idk": (120, 170, 60), "stage1": (240, 90, 150), "asru": (210, 30, 30)}


# ---------------------------------------------------------------------------------------------------------------
# Scores from evaluate_model results


def _get(metrics: dict, split: str, key: str, form: str = "all"):
    v = metrics.get(split, {}).get(form, {}).get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


FORGET_KEYS = ("mc_acc", "cloze_acc", "leak_rate", "rougeL")


def forget_knowledge(m: dict) -> float | None:
    """K(m): mean of mc_acc, cloze_acc, leak_rate, rougeL on the forget and test splits."""
    return _mean([_get(m, s, k) for s in ("forget", "test") for k in FORGET_KEYS])


def model_utility(m: dict) -> float | None:
    """U(m): mean of retain mc_acc, cloze_acc, rougeL and utility acc."""
    return _mean([_get(m, "retain", k) for k in ("mc_acc", "cloze_acc", "rougeL")] + [_get(m, "utility", "acc")])


def unlearning_effectiveness(m: dict, vanilla: dict) -> float | None:
    """UE(m) = 1 - K(m) / K(vanilla)."""
    k, k0 = forget_knowledge(m), forget_knowledge(vanilla)
    return None if k is None or not k0 else 1.0 - k / k0


def row(method: str, m: dict, vanilla: dict) -> dict:
    """The numbers of one table row."""
    return {
        "forget_mc": _get(m, "forget", "mc_acc"), "forget_cloze": _get(m, "forget", "cloze_acc"),
        "forget_rougeL": _get(m, "forget", "rougeL"), "forget_leak": _get(m, "forget", "leak_rate"),
        "forget_refusal": _get(m, "forget", "refusal_rate"), "test_mc": _get(m, "test", "mc_acc"),
        "test_leak": _get(m, "test", "leak_rate"), "retain_mc": _get(m, "retain", "mc_acc"),
        "retain_cloze": _get(m, "retain", "cloze_acc"), "retain_rougeL": _get(m, "retain", "rougeL"),
        "utility_acc": _get(m, "utility", "acc"), "private_refusal": _get(m, "private", "refusal_rate"),
        "gq": _get(m, "forget", "quality"), "K": forget_knowledge(m), "UE": unlearning_effectiveness(m, vanilla),
        "U": model_utility(m),
    }


COLUMNS = (("Forget MC", "forget_mc"), ("Forget cloze", "forget_cloze"), ("Forget R-L", "forget_rougeL"),
           ("Forget leak", "forget_leak"), ("Forget refuse", "forget_refusal"), ("Test MC", "test_mc"),
           ("Test leak", "test_leak"), ("Retain MC", "retain_mc"), ("Retain cloze", "retain_cloze"),
           ("Retain R-L", "retain_rougeL"), ("Utility acc", "utility_acc"), ("Private refuse", "private_refusal"),
           ("GQ", "gq"), ("UE", "UE"), ("U", "U"))


def _fmt(v, scale=100.0, digits=1):
    return "-" if v is None else f"{scale * v:.{digits}f}"


def markdown_table(rows: dict) -> str:
    head = "| method | " + " | ".join(h for h, _ in COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(COLUMNS)
    lines = [head, sep]
    for method in ORDER:
        if method in rows:
            lines.append(f"| {NAMES[method]} | " + " | ".join(_fmt(rows[method][k]) for _, k in COLUMNS) + " |")
    return "\n".join(lines)


def headlines(summary: dict, baselines: tuple) -> dict:
    """The two headline ratios over the forget levels in `summary` (see the module docstring)."""
    def avg(method, key):
        return _mean([summary[f][method][key] for f in summary if method in summary[f]])

    ue_base = _mean([avg(b, "UE") for b in baselines])
    gq_base = _mean([avg(b, "gq") for b in baselines])
    ue_asru, gq_asru = avg("asru", "UE"), avg("asru", "gq")
    out = {"UE_asru": ue_asru, "UE_baselines_mean": ue_base, "GQ_asru": gq_asru, "GQ_baselines_mean": gq_base,
           "UE_gain_relative": None, "UE_gain_points": None, "GQ_ratio": None}
    if ue_asru is not None and ue_base is not None:
        out["UE_gain_points"] = 100 * (ue_asru - ue_base)
        out["UE_gain_relative"] = (ue_asru - ue_base) / abs(ue_base) if ue_base else None
    if gq_asru is not None and gq_base:
        out["GQ_ratio"] = gq_asru / gq_base
    return out


def tradeoff(summary: dict, keep: float = 0.95) -> dict:
    """Per forget level, the issue's trade-off test: among the methods whose U stays >= `keep` x U(vanilla),
    the one with the lowest forget leak; and the method with the highest GQ (vanilla excluded from both)."""
    out = {}
    for f, rows in summary.items():
        u0 = rows.get("vanilla", {}).get("U")
        kept = [(r["forget_leak"], m) for m, r in rows.items() if m != "vanilla" and u0 and r["U"] is not None
                and r["forget_leak"] is not None and r["U"] >= keep * u0]
        gq = [(r["gq"], m) for m, r in rows.items() if m != "vanilla" and r["gq"] is not None]
        out[f] = {"lowest_leak_kept": min(kept)[1] if kept else None, "highest_gq": max(gq)[1] if gq else None,
                  "kept": sorted((m for _, m in kept), key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))}
    return out


# ---------------------------------------------------------------------------------------------------------------
# The chart (pillow only)


def draw_chart(summary: dict, path: str, width: int = 1100, height: int = 440) -> None:
    """Left: one point per (method, forget level), x = forget leak rate, y = model utility U (top-left is best).
    Right: generation quality GQ per method, averaged over the forget levels, one bar each."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    # left panel: scatter
    x0, y0, x1, y1 = 60, 40, width // 2 - 30, height - 60
    d.rectangle([x0, y0, x1, y1], outline="black")
    d.text((x0, 12), "forget leak rate (x) vs model utility U (y); top-left is best", fill="black")
    levels = sorted(summary)
    leaks = [r["forget_leak"] for f in levels for r in summary[f].values() if r["forget_leak"] is not None]
    x_max = min(1.0, math.ceil((max(leaks, default=0.0) + 0.02) * 4) / 4)  # x axis to the next 25 % above the data
    for i in range(5):
        tx, ty = x_max * i / 4, i / 4
        xt, yt = x0 + (x1 - x0) * i / 4, y1 - (y1 - y0) * ty
        d.line([xt, y1, xt, y1 + 4], fill="black")
        d.text((xt - 8, y1 + 6), f"{100 * tx:.3g}", fill="black")
        d.line([x0 - 4, yt, x0, yt], fill="black")
        d.text((x0 - 28, yt - 6), f"{100 * ty:.0f}", fill="black")
    d.text(((x0 + x1) // 2 - 60, y1 + 22), "forget leak rate (%)", fill="black")
    d.text((5, y0 - 18), "U (%)", fill="black")
    for method in ORDER:
        for f in levels:
            r = summary[f].get(method)
            if not r or r["forget_leak"] is None or r["U"] is None:
                continue
            px, py = x0 + (x1 - x0) * r["forget_leak"] / x_max, y1 - (y1 - y0) * r["U"]
            d.ellipse([px - 5, py - 5, px + 5, py + 5], fill=COLORS[method], outline="black")
            d.text((px + 6, py - 6), f"{f}", fill=COLORS[method])
    shown = [m for m in ORDER if any(m in summary[f] for f in levels)]
    for i, method in enumerate(shown):  # legend bottom-right: high leak + low utility is the emptiest corner
        ly = y1 - 8 - 14 * (len(shown) - i)
        d.rectangle([x1 - 120, ly + 2, x1 - 112, ly + 10], fill=COLORS[method])
        d.text((x1 - 106, ly), NAMES[method], fill="black")
    d.text((x0, height - 18), "labels next to points: forget %", fill="black")
    # right panel: bars
    bx0, by0, bx1, by1 = width // 2 + 40, 40, width - 20, height - 60
    d.rectangle([bx0, by0, bx1, by1], outline="black")
    d.text((bx0, 12), "generation quality on forget answers (GQ, %), mean over forget levels", fill="black")
    methods = [m for m in ORDER if any(m in summary[f] for f in levels)]
    slot = (bx1 - bx0) / max(len(methods), 1)
    for t in range(0, 101, 25):
        yt = by1 - (by1 - by0) * t / 100
        d.line([bx0 - 4, yt, bx0, yt], fill="black")
        d.text((bx0 - 26, yt - 6), f"{t}", fill="black")
    for i, method in enumerate(methods):
        gq = _mean([summary[f][method]["gq"] for f in levels if method in summary[f]])
        if gq is None:
            continue
        left, right = bx0 + slot * i + slot * 0.15, bx0 + slot * (i + 1) - slot * 0.15
        top = by1 - (by1 - by0) * gq
        d.rectangle([left, top, right, by1], fill=COLORS[method], outline="black")
        d.text((left, top - 14), f"{100 * gq:.0f}", fill="black")
        d.text((left - 4, by1 + 6 + 12 * (i % 2)), NAMES[method], fill="black")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path, format="PNG")


# ---------------------------------------------------------------------------------------------------------------
# Running


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="weights/")
    p.add_argument("--out", default=None, help="default results/ (results/quick/ with --quick)")
    p.add_argument("--forget", default=None, help="comma list of forget percentages (default 5,10,15; quick: 10)")
    p.add_argument("--methods", default=",".join(METHODS), help="baselines to run")
    p.add_argument("--no-asru", dest="asru", action="store_false", help="skip train.py (vanilla/stage 1/ASRU)")
    p.add_argument("--quick", action="store_true", help="forget 10 %% only and fewer evaluation questions")
    p.add_argument("--eval-limit", type=int, default=None,
                   help="questions per split/kind/form, 0 = all (default: train.py's, quick 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0 = torch default); the tiny model runs fastest on one")
    p.add_argument("--baseline-epochs", type=int, default=4, help="the release's 4")
    p.add_argument("--lr-scale", type=float, default=LR_SCALE,
                   help=f"baseline lr = the paper's lr x this (default baselines.LR_SCALE = {LR_SCALE:g})")
    p.add_argument("--train-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a train.py TrainConfig field, e.g. --train-set layer=1 (repeatable)")
    return p.parse_args(argv)


def train_config(args, forget: int, out: str):
    """train.py's config for one forget level: its defaults plus the shared evaluation settings and any
    --train-set overrides."""
    from asru_min.train import TrainConfig

    cfg = TrainConfig(model=args.model, forget=forget, out=out, seed=args.seed, eval_limit=args.eval_limit,
                      threads=args.threads)
    for item in args.train_set:
        name, _, value = item.partition("=")
        if name not in {f.name for f in dataclasses.fields(cfg)}:
            raise ValueError(f"--train-set {item!r}: TrainConfig has no field {name!r}")
        kind = type(getattr(cfg, name))
        value = value.lower() in ("1", "true", "yes") if kind is bool else kind(value) if getattr(cfg, name) is not None else value
        cfg = dataclasses.replace(cfg, **{name: value})
    return cfg


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = args.out or ("results/quick" if args.quick else "results")
    levels = [int(x) for x in (args.forget or ("10" if args.quick else "5,10,15")).split(",")]
    if args.eval_limit is None:
        from asru_min.train import TrainConfig

        args.eval_limit = 20 if args.quick else TrainConfig().eval_limit
    epochs = args.baseline_epochs
    methods = tuple(m for m in args.methods.split(",") if m)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown baselines {bad}; known: {METHODS}")
    if not os.path.isdir(args.model):
        raise FileNotFoundError(f"model folder {args.model!r} not found (python -m asru_min.world.pretrain)")
    if args.threads:
        torch.set_num_threads(args.threads)
    runs_dir = os.path.join(out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    t_start = time.time()
    total = len(levels) * (len(methods) + (1 if args.asru else 0))
    done = 0

    def progress(msg):
        print(f"[compare {time.time() - t_start:7.1f}s] {msg}", flush=True)

    results: dict = {}  # forget -> method -> evaluate_model metrics
    model_sha = weights_sha256(args.model)

    def reusable(path: str, config: dict) -> bool:
        ok = saved_run_matches(path, config, model_sha)
        if os.path.exists(path) and not ok:
            progress(f"{os.path.basename(path)}: made from other weights or settings; running it again")
        return ok
    from asru_min.train import load_world

    run_seconds = []  # each run's own time, also for runs reused from an earlier invocation
    for f in levels:
        results[f] = {}
        tcfg = train_config(args, f, os.path.join(runs_dir, f"asru_f{f}"))
        splits, vocabulary = load_world(tcfg)  # the baselines see exactly train.py's splits, questions and judge
        if args.asru:
            path = os.path.join(runs_dir, f"asru_f{f}.json")
            tconfig = json.loads(json.dumps(dataclasses.asdict(tcfg)))
            if reusable(path, tconfig):
                record = json.load(open(path))
            else:
                from asru_min.train import run as train_run

                progress(f"forget {f}%: train.py (vanilla -> stage 1 -> ASRU)")
                t0 = time.time()
                # a stale record means stale train.py folder too; without a record, train.py resumes its folder
                r = train_run(tcfg, restart=os.path.exists(path))
                record = {"vanilla": r["vanilla"], "stage1": r["stage1"], "asru": r["asru"],
                          "seconds": round(time.time() - t0, 1), "config": tconfig, "model_sha256": model_sha}
                with open(path, "w") as fh:
                    json.dump(record, fh, indent=1)
            for k in ("vanilla", "stage1", "asru"):
                results[f][k] = record[k]
            run_seconds.append(record.get("seconds", 0.0))
            done += 1
            progress(f"forget {f}%: ASRU done ({done}/{total} runs)")
        for method in methods:
            path = os.path.join(runs_dir, f"{method}_f{f}.json")
            cfg = BaselineConfig(method=method, forget=f, model=args.model, seed=args.seed, epochs=epochs,
                                 lr=PAPER_LR[method] * args.lr_scale,
                                 eval_limit=args.eval_limit, threads=args.threads,
                                 num_people=tcfg.num_people, world_seed=tcfg.world_seed,
                                 out=os.path.join(runs_dir, f"{method}_f{f}"))
            bconfig = json.loads(json.dumps(dataclasses.asdict(cfg)))
            if not reusable(path, bconfig):
                progress(f"forget {f}%: baseline {NAMES[method]}")
                run_baseline(cfg, splits=splits, progress=progress, vocabulary=vocabulary)
                record = json.load(open(os.path.join(cfg.out, "metrics.json")))
                record.update(config=bconfig, model_sha256=model_sha)
                with open(path, "w") as fh:
                    json.dump(record, fh, indent=1)
            saved = json.load(open(path))
            results[f][method] = saved["metrics"]
            run_seconds.append(saved.get("seconds", 0.0))
            done += 1
            elapsed = time.time() - t_start
            progress(f"forget {f}%: {NAMES[method]} done ({done}/{total} runs, ~{elapsed / done * (total - done):.0f}s left)")

    return write_report(results, out, methods, args, time.time() - t_start, sum(run_seconds))


def saved_run_matches(path: str, config: dict, model_sha: str) -> bool:
    """A saved run's JSON counts only if it came from the same weights and the same configuration; where its
    folder was (`out`) does not matter, so a results folder can be moved and still be reused."""
    if not os.path.exists(path):
        return False
    with open(path) as fh:
        record = json.load(fh)
    where = lambda c: {k: v for k, v in c.items() if k != "out"} if isinstance(c, dict) else c  # noqa: E731
    return record.get("model_sha256") == model_sha and where(record.get("config")) == where(config)


def write_report(results: dict, out: str, methods: tuple, args, seconds: float, run_seconds: float) -> dict:
    summary = {}
    for f, by_method in results.items():
        vanilla = by_method.get("vanilla")
        if vanilla is None:  # without train.py there is no vanilla row: UE is undefined
            vanilla = {}
        summary[f] = {m: row(m, metrics, vanilla) for m, metrics in by_method.items()}
    heads = headlines(summary, methods)
    lines = ["# ASRU vs. unlearning baselines on the default world", "",
             f"Model `{args.model}`, evaluation limit {args.eval_limit} questions per split / kind / form, greedy, "
             f"<= 50 new tokens; seed {args.seed}; baseline lr = paper lr x {args.lr_scale:g}; "
             f"{'quick run' if args.quick else 'full run'}; "
             f"runs {run_seconds / 60:.1f} min in all (this invocation {seconds / 60:.1f} min; runs saved by an "
             f"earlier one are reused). All numbers in %. Produced by `python examples/compare.py"
             f"{' --quick' if args.quick else ''}{''.join(f' --train-set {t}' for t in args.train_set)}"
             f"{'' if args.out is None else f' --out {args.out}'}`.", "",
             "## Headline ratios", ""]
    if heads["UE_gain_relative"] is not None:
        lines.append(f"- **Unlearning-effectiveness gain of ASRU over the average baseline: "
                     f"{100 * heads['UE_gain_relative']:+.1f} %** "
                     f"(UE(ASRU) = {_fmt(heads['UE_asru'])}, mean UE of the baselines = "
                     f"{_fmt(heads['UE_baselines_mean'])}, difference {heads['UE_gain_points']:+.1f} points).")
    if heads["GQ_ratio"] is not None:
        lines.append(f"- **Generation-quality ratio of ASRU to the average baseline: {heads['GQ_ratio']:.2f}x** "
                     f"(GQ(ASRU) = {_fmt(heads['GQ_asru'])}, mean GQ of the baselines = "
                     f"{_fmt(heads['GQ_baselines_mean'])}).")
    lines += ["", "Definitions (form \"all\" = image + text questions, every metric in [0, 1]):", "",
              "- forget knowledge K(m) = mean of MC accuracy, cloze accuracy, leak rate and ROUGE-L on the forget "
              "split and on the test split (the forget people with transformed images and paraphrased questions);",
              "- unlearning effectiveness UE(m) = 1 - K(m) / K(vanilla): the share of the vanilla model's forget "
              "knowledge that is gone;",
              "- model utility U(m) = mean of retain MC accuracy, retain cloze accuracy, retain ROUGE-L and "
              "utility (general question) accuracy;",
              "- generation quality GQ(m) = mean `metrics.judge` score of the forget-split generation "
              "answers: (contextual refusal + no leakage + naturalness) / 3 on [0, 1], halved for a hallucinated "
              "fact, a rule-based stand-in for the paper's GPT-4o-mini judge;",
              "- UE gain = (UE(ASRU) - mean_b UE(b)) / mean_b UE(b); GQ ratio = GQ(ASRU) / mean_b GQ(b); b = the "
              f"baselines ({', '.join(NAMES[m] for m in methods)}); each averaged over the forget levels run.",
              "", "Caveat: a method that breaks the model (gibberish answers) scores a high UE; read UE together "
              "with U and GQ.", "", "![chart](chart.png)", ""]
    trade = tradeoff(summary)
    lines += ["## Trade-off per forget level", "",
              "Lowest forget leak among the methods whose U stays >= 95 % of vanilla's, and the highest GQ:", "",
              "| forget | methods keeping U >= 95 % | lowest leak among them | highest GQ |", "|---|---|---|---|"]
    for f in sorted(trade):
        t, rows = trade[f], summary[f]
        low, top = t["lowest_leak_kept"], t["highest_gq"]
        low_s = f"{NAMES[low]} ({_fmt(rows[low]['forget_leak'])})" if low else "-"
        top_s = f"{NAMES[top]} ({_fmt(rows[top]['gq'])})" if top else "-"
        lines.append(f"| {f} % | {', '.join(NAMES[m] for m in t['kept']) or 'none'} | {low_s} | {top_s} |")
    lines.append("")
    for f in sorted(summary):
        lines += [f"## Forget {f} %", "", markdown_table(summary[f]), ""]
    lines += ["## Example answers to the same forget questions", ""]
    f = min(results)  # one forget level is enough to read; the others are in runs/*.json
    first = next(iter(results[f].values()))
    for qi, ex in enumerate(first.get("examples", {}).get("forget", [])[:3]):
        lines += [f"**Forget {f} %, question {qi + 1}** ({ex.get('form', '')}): {ex['question']}  ",
                  f"reference answer: {ex['answer']}", ""]
        for method in ORDER:
            if method in results[f]:
                exs = results[f][method].get("examples", {}).get("forget", [])
                match = [e for e in exs if e["question"] == ex["question"] and e.get("form") == ex.get("form")]
                text = (" ".join(match[0]["prediction"].split()) or "(empty)") if match else "(not evaluated)"
                lines.append(f"- {NAMES[method]}: {text}")
        lines.append("")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "README.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump({"levels": {str(f): s for f, s in summary.items()}, "headlines": heads,
                   "tradeoff": {str(f): t for f, t in trade.items()}, "train_set": args.train_set,
                   "seconds": round(seconds, 1), "run_seconds": round(run_seconds, 1)}, fh, indent=1)
    draw_chart(summary, os.path.join(out, "chart.png"))
    print("\n".join(lines[:12]), flush=True)
    return {"summary": summary, "headlines": heads}


if __name__ == "__main__":
    main()
