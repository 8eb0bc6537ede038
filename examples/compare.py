"""Compare ASRU with unlearning baselines tuned on a validation split, over seeds and forget levels (mean ± std).

    python examples/compare.py [--model weights/] [--out results/] [--forget 5,10,15] [--seeds 0,1,2] [--quick]
                               [--no-tune] [--no-robustness] [--no-asru] [--methods ga,graddiff,klmin,npo,idk]

1. Tuning (forget TUNE_FORGET %, seed 0). Every baseline is trained at each point of its grid (GRIDS) and
   evaluated on the generation questions of the two validation splits only (`validation`: forget people x
   held-out phrasings x held-out views; `retain_validation`: the same for retain people; TUNE_LIMIT questions per
   split and form); `choose_setting` (the rule, in its docstring) picks one point per baseline. ASRU is not
   tuned here: its settings are TrainConfig's defaults (asru_min/train.py), chosen on the same validation
   splits; a grid of train.py runs (~5 min each) does not fit the budget. Tuning needs the validation
   splits: MLLMU-Bench has none, so there compare stops with a message unless --no-tune is given (every
   baseline then runs at lr = the paper's lr x --lr-scale for --baseline-epochs).
2. Final runs: the chosen setting of every method, for every seed and forget level: train.py (vanilla, stage 1,
   ASRU, with --train-set overrides) and the five baselines from the vanilla weights, all evaluated alike
   (evaluate.EVAL_SPLITS, greedy, <= 50 new tokens, --eval-limit questions per split / kind / form).
3. Robustness (--robustness, on by default): examples/robustness.py's suite (run_suite) on every method's model at
   forget 10 %, seed 0 (the first level and seed run when those are not).

Every run is saved as JSON and reused when it was made from the same weights (SHA-256) with the same
configuration, so an interrupted comparison resumes; progress lines carry an estimate of the time left.

Writes, under --out:
    runs/tune/<method>_<i>.json      grid point i of a baseline (runs/tune/vanilla.json: the vanilla model)
    runs/<method>_f<k>_s<seed>.json  a final run (asru_*: train.py's vanilla, stage 1 and ASRU; the folder beside
                                     it is train.py's output or the baseline's adapter)
    runs/robustness_<method>.json    the robustness suite of one model
    README.md, summary.json          the report and the numbers behind it; chart.png

Definitions (form "all" = image + text questions; every metric in [0, 1]; split pairs: held-out = test with
retain_test, trained prompts = forget with retain):
    knowledge     K(m) = mean of mc_acc, cloze_acc, leak_rate, rougeL on the forget-people split (test: no cloze)
    unlearning effectiveness  UE(m) = 1 - K(m) / K(vanilla)
    utility       U(m) = mean of the same four on the retain-people split, and utility acc
    generation quality  GQ(m) = mean `metrics.judge` score (`quality`) of the forget-people split's generation
                  answers: contextual refusal, no leakage, naturalness; halved for a hallucinated fact
    UE gain       = (UE(ASRU) - mean_b UE(b)) / |mean_b UE(b)|,  GQ ratio = GQ(ASRU) / mean_b GQ(b), b over the
                  baselines; per seed with UE and GQ averaged over the forget levels, then mean ± std over seeds
    mean ± std    over seeds; std is the sample standard deviation (n - 1), 0 for one seed
The headline figures are the held-out ones; the trained-prompt ones stand beside them.

Budget, measured on the 2-core machine with the shipped weights (one torch thread per process; results/): the
runs' own times add up to 49.5 min: tuning 20 runs 3.5 min (1-26 s each), 9 train.py runs 31.5 min (169-229 s),
45 final baseline runs 13.2 min (7-48 s), the robustness suite of 8 models 1.3 min (9-10 s each); one invocation
from an empty folder took 50.6 min wall and wrote the same 82 records (times aside). --quick (forget
10 %, seed 0, the first two points of each grid, 5 tuning and 20 evaluation questions per split and form, a
5-question robustness suite with 5 relearning steps) took 6.9 min.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # robustness.py

import torch  # noqa: E402

from asru_min.baselines.methods import LR_SCALE, METHODS, PAPER_LR, BaselineConfig, run_baseline  # noqa: E402
from asru_min.evaluate import evaluate_model  # noqa: E402
from asru_min.train import TrainConfig, weights_sha256  # noqa: E402
from asru_min.world import load_world  # noqa: E402

NAMES = {"vanilla": "Vanilla", "ga": "GA", "graddiff": "GradDiff", "klmin": "KL-Min", "npo": "NPO",
         "idk": "Refusal SFT", "stage1": "ASRU stage 1", "asru": "ASRU"}
ORDER = ("vanilla", "ga", "graddiff", "klmin", "npo", "idk", "stage1", "asru")
COLORS = {"vanilla": (120, 120, 120), "ga": (230, 120, 20), "graddiff": (200, 170, 0), "klmin": (150, 80, 200),
          "npo": (30, 150, 200), "idk": (120, 170, 60), "stage1": (240, 90, 150), "asru": (210, 30, 30)}
VALIDATION = ("validation", "retain_validation")
TUNE_FORGET, TUNE_SEED, TUNE_LIMIT, KEEP = 10, 0, 30, 0.95
ROBUST_FORGET = 10


def grid(method: str, lr_scales: tuple, epochs: tuple) -> list[dict]:
    """BaselineConfig settings: lr = the paper's lr x each scale, for each number of epochs (scale-major order)."""
    return [{"lr": PAPER_LR[method] * s, "epochs": e} for s in lr_scales for e in epochs]


# The baselines' grids (LR_SCALE = 25 was the one untuned setting; methods.py has the measurements behind it). GA
# collapses one doubling above 25, so its grid goes down; NPO, the least active, goes up. Refusal SFT converges:
# its refusal NLL (epoch mean, forget 10 %) levels off at ~0.45 (x50) and ~0.4 (x100) by epochs 6-8, while at x25
# it is still at 0.6 and falling after 8 epochs.
GRIDS = {
    "ga": grid("ga", (10, 25), (2, 4)),
    "graddiff": grid("graddiff", (25, 50), (2, 4)),
    "klmin": grid("klmin", (25, 50), (2, 4)),
    "npo": grid("npo", (25, 50, 100), (4,)),
    "idk": grid("idk", (50, 100), (4, 8)),
}
QUICK_GRID_POINTS = 2  # --quick tunes on the first two points of each grid


def choose_setting(rows: list[dict], vanilla_utility: float, keep: float = KEEP) -> tuple[int, bool]:
    """The tuning rule. `rows` are a method's grid points in grid order, each with
        leak     validation forget leak: the share of generation answers on `validation` (form "all") that
                 contain the ground truth (`leak_rate`)
        utility  validation utility: the same share on `retain_validation`, i.e. how many retain questions are
                 still answered with their fact.
    Among the points whose utility >= keep x vanilla_utility, the one with the lowest leak; ties go to the higher
    utility, then to the earlier grid point. If no point keeps that much utility, the point with the highest
    utility (ties: the lower leak, then the earlier point). Returns (index of the point, whether it kept utility)."""
    if not rows:
        raise ValueError("choose_setting: no grid points")
    if vanilla_utility is None or vanilla_utility < 0:
        raise ValueError(f"choose_setting: the vanilla utility must be >= 0, got {vanilla_utility!r}")
    bad = [i for i, r in enumerate(rows) if r.get("leak") is None or r.get("utility") is None]
    if bad:
        raise ValueError(f"choose_setting: grid points {bad} have no validation leak or utility")
    kept = [i for i, r in enumerate(rows) if r["utility"] >= keep * vanilla_utility]
    if kept:
        return min(kept, key=lambda i: (rows[i]["leak"], -rows[i]["utility"], i)), True
    return min(range(len(rows)), key=lambda i: (-rows[i]["utility"], rows[i]["leak"], i)), False


# ---------------------------------------------------------------------------------------------------------------
# Scores from evaluate_model results


def _get(metrics: dict, split: str, key: str, form: str = "all"):
    v = metrics.get(split, {}).get(form, {}).get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


PAIRS = {"test": "retain_test", "forget": "retain"}  # forget-people split -> the retain-people split beside it
KNOWLEDGE = ("mc_acc", "cloze_acc", "leak_rate", "rougeL")
METRIC_OF = {  # table key -> (split, evaluate_model key[, form; default "all"])
    "test_leak": ("test", "leak_rate"), "test_refusal": ("test", "refusal_rate"),
    "test_clean_image": ("test", "clean_refusal_rate", "image"),
    "test_clean_text": ("test", "clean_refusal_rate", "text"),
    "test_halluc": ("test", "hallucination_rate"), "test_gq": ("test", "quality"), "test_mc": ("test", "mc_acc"),
    "retain_test_answer": ("retain_test", "leak_rate"), "retain_test_mc": ("retain_test", "mc_acc"),
    "retain_test_rouge": ("retain_test", "rougeL"), "utility_acc": ("utility", "acc"),
    "forget_leak": ("forget", "leak_rate"), "forget_refusal": ("forget", "refusal_rate"),
    "forget_halluc": ("forget", "hallucination_rate"), "forget_gq": ("forget", "quality"),
    "forget_mc": ("forget", "mc_acc"), "forget_cloze": ("forget", "cloze_acc"),
    "retain_answer": ("retain", "leak_rate"), "retain_mc": ("retain", "mc_acc"),
    "retain_cloze": ("retain", "cloze_acc"), "private_refusal": ("private", "refusal_rate"),
}


def knowledge(m: dict, split: str) -> float | None:
    """K(m) on a forget-people split: the mean of KNOWLEDGE the split has."""
    return _mean([_get(m, split, k) for k in KNOWLEDGE])


def model_utility(m: dict, split: str) -> float | None:
    """U(m) beside a forget-people split: KNOWLEDGE on its retain-people split and utility acc."""
    return _mean([_get(m, PAIRS[split], k) for k in KNOWLEDGE] + [_get(m, "utility", "acc")])


def unlearning_effectiveness(m: dict, vanilla: dict, split: str) -> float | None:
    """UE(m) = 1 - K(m) / K(vanilla) on one forget-people split."""
    k, k0 = knowledge(m, split), knowledge(vanilla, split)
    return None if k is None or not k0 else 1.0 - k / k0


def row(m: dict, vanilla: dict) -> dict:
    """The numbers of one table row of one run (vanilla: the vanilla model's metrics of the same seed and level)."""
    out = {key: _get(m, *where) for key, where in METRIC_OF.items()}
    for split in PAIRS:
        out[f"K_{split}"] = knowledge(m, split)
        out[f"UE_{split}"] = unlearning_effectiveness(m, vanilla, split)
        out[f"U_{split}"] = model_utility(m, split)
    return out


def mean_std(values) -> dict:
    """{"mean", "std", "n"} of the values that are not None; std = sample standard deviation (n - 1), 0 for one."""
    xs = [v for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    m = sum(xs) / len(xs)
    std = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": m, "std": std, "n": len(xs)}


def summarise(rows: dict) -> dict:
    """rows[level][method][seed] = row(...) -> summary[level][method][key] = mean_std over the seeds."""
    return {f: {m: {k: mean_std([r[k] for r in by_seed.values()]) for k in next(iter(by_seed.values()))}
                for m, by_seed in by_method.items()} for f, by_method in rows.items()}


def headlines(rows: dict, baselines: tuple, split: str) -> dict:
    """The two headline ratios on one forget-people split ("test": held-out, "forget": trained prompts): per seed
    UE and GQ of ASRU and of the mean baseline, each averaged over the levels, the gain and the ratio; then
    mean ± std of each over the seeds (module docstring)."""
    def level_mean(method, key, seed):
        return _mean([rows[f][method][seed][key] for f in rows if seed in rows[f].get(method, {})])

    seeds = sorted({s for by_method in rows.values() for s in by_method.get("asru", {})})
    per_seed = {k: [] for k in ("UE_asru", "UE_baselines", "UE_gain_relative", "UE_gain_points", "GQ_asru",
                                "GQ_baselines", "GQ_ratio")}
    for s in seeds:
        ue_a, gq_a = level_mean("asru", f"UE_{split}", s), level_mean("asru", f"{split}_gq", s)
        ue_b = _mean([level_mean(b, f"UE_{split}", s) for b in baselines])
        gq_b = _mean([level_mean(b, f"{split}_gq", s) for b in baselines])
        both = ue_a is not None and ue_b is not None
        per_seed["UE_asru"].append(ue_a)
        per_seed["UE_baselines"].append(ue_b)
        per_seed["UE_gain_relative"].append((ue_a - ue_b) / abs(ue_b) if both and ue_b else None)
        per_seed["UE_gain_points"].append(100 * (ue_a - ue_b) if both else None)
        per_seed["GQ_asru"].append(gq_a)
        per_seed["GQ_baselines"].append(gq_b)
        per_seed["GQ_ratio"].append(gq_a / gq_b if gq_a is not None and gq_b else None)
    return {**{k: mean_std(v) for k, v in per_seed.items()}, "seeds": seeds}


def tradeoff(summary: dict, keep: float = KEEP) -> dict:
    """Per forget level, on the held-out split: among the methods whose mean U stays >= `keep` x vanilla's, those
    with the lowest mean test leak; and those with the highest mean test GQ (vanilla excluded from both). Ties are
    all listed, in table order (a name must not break a tie)."""
    def in_order(methods):
        return sorted(methods, key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))

    out = {}
    for f, rows in summary.items():
        mean = {m: {k: v["mean"] for k, v in r.items()} for m, r in rows.items()}
        u0 = mean.get("vanilla", {}).get("U_test")
        kept = {m: r["test_leak"] for m, r in mean.items() if m != "vanilla" and u0 and r["U_test"] is not None
                and r["test_leak"] is not None and r["U_test"] >= keep * u0}
        gq = {m: r["test_gq"] for m, r in mean.items() if m != "vanilla" and r["test_gq"] is not None}
        out[f] = {"lowest_leak_kept": in_order(m for m, v in kept.items() if v == min(kept.values())),
                  "highest_gq": in_order(m for m, v in gq.items() if v == max(gq.values())), "kept": in_order(kept)}
    return out


HELDOUT_COLUMNS = (("Test leak", "test_leak"), ("Test refuse", "test_refusal"),
                   ("Test clean refusal image", "test_clean_image"), ("Test clean refusal text", "test_clean_text"),
                   ("Test halluc", "test_halluc"),
                   ("Test GQ", "test_gq"), ("Test MC", "test_mc"), ("Retain-test answered", "retain_test_answer"),
                   ("Retain-test MC", "retain_test_mc"), ("Retain-test ROUGE-L", "retain_test_rouge"),
                   ("Utility acc", "utility_acc"), ("UE", "UE_test"),
                   ("U", "U_test"))
TRAINED_COLUMNS = (("Forget leak", "forget_leak"), ("Forget refuse", "forget_refusal"),
                   ("Forget halluc", "forget_halluc"), ("Forget GQ", "forget_gq"), ("Forget MC", "forget_mc"),
                   ("Forget cloze", "forget_cloze"), ("Retain answered", "retain_answer"), ("Retain MC", "retain_mc"),
                   ("Retain cloze", "retain_cloze"), ("Private refuse", "private_refusal"), ("UE", "UE_forget"),
                   ("U", "U_forget"))


def _fmt(v, scale=100.0, digits=1):
    return "-" if v is None else f"{scale * v:.{digits}f}"


def _pm(s: dict, scale=100.0, digits=1) -> str:
    """mean ± std (x scale); the mean alone for one value."""
    if s["mean"] is None:
        return "-"
    return _fmt(s["mean"], scale, digits) + (f" ± {_fmt(s['std'], scale, digits)}" if s["n"] > 1 else "")


def markdown_table(rows: dict, columns: tuple) -> str:
    lines = ["| method | " + " | ".join(h for h, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    for method in ORDER:
        if method in rows:
            lines.append(f"| {NAMES[method]} | " + " | ".join(_pm(rows[method][k]) for _, k in columns) + " |")
    return "\n".join(lines)


def describe_setting(setting: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in setting.items())


# ---------------------------------------------------------------------------------------------------------------
# The chart (pillow only)


def draw_chart(summary: dict, path: str, width: int = 1100, height: int = 440) -> None:
    """Left: one point per (method, forget level), x = mean test leak rate, y = mean held-out utility U (top-left
    is best). Right: mean test generation quality GQ per method over the forget levels, one bar each."""
    from PIL import Image, ImageDraw

    mean = {f: {m: {k: v["mean"] for k, v in r.items()} for m, r in rows.items()} for f, rows in summary.items()}
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = 60, 40, width // 2 - 30, height - 60
    d.rectangle([x0, y0, x1, y1], outline="black")
    d.text((x0, 12), "held-out: test leak rate (x) vs utility U (y); top-left is best", fill="black")
    levels = sorted(mean)
    leaks = [r["test_leak"] for f in levels for r in mean[f].values() if r["test_leak"] is not None]
    x_max = min(1.0, math.ceil((max(leaks, default=0.0) + 0.02) * 4) / 4)  # x axis to the next 25 % above the data
    for i in range(5):
        xt, yt = x0 + (x1 - x0) * i / 4, y1 - (y1 - y0) * i / 4
        d.line([xt, y1, xt, y1 + 4], fill="black")
        d.text((xt - 8, y1 + 6), f"{100 * x_max * i / 4:.3g}", fill="black")
        d.line([x0 - 4, yt, x0, yt], fill="black")
        d.text((x0 - 28, yt - 6), f"{25 * i}", fill="black")
    d.text(((x0 + x1) // 2 - 60, y1 + 22), "test leak rate (%)", fill="black")
    d.text((5, y0 - 18), "U (%)", fill="black")
    for method in ORDER:
        for f in levels:
            r = mean[f].get(method)
            if not r or r["test_leak"] is None or r["U_test"] is None:
                continue
            px, py = x0 + (x1 - x0) * r["test_leak"] / x_max, y1 - (y1 - y0) * r["U_test"]
            d.ellipse([px - 5, py - 5, px + 5, py + 5], fill=COLORS[method], outline="black")
            d.text((px + 6, py - 6), f"{f}", fill=COLORS[method])
    shown = [m for m in ORDER if any(m in mean[f] for f in levels)]
    for i, method in enumerate(shown):  # legend bottom-right: high leak + low utility is the emptiest corner
        ly = y1 - 8 - 14 * (len(shown) - i)
        d.rectangle([x1 - 120, ly + 2, x1 - 112, ly + 10], fill=COLORS[method])
        d.text((x1 - 106, ly), NAMES[method], fill="black")
    d.text((x0, height - 18), "labels next to points: forget %; means over seeds", fill="black")
    bx0, by0, bx1, by1 = width // 2 + 40, 40, width - 20, height - 60
    d.rectangle([bx0, by0, bx1, by1], outline="black")
    d.text((bx0, 12), "generation quality on test answers (GQ, %), mean over levels and seeds", fill="black")
    slot = (bx1 - bx0) / max(len(shown), 1)
    for t in range(0, 101, 25):
        yt = by1 - (by1 - by0) * t / 100
        d.line([bx0 - 4, yt, bx0, yt], fill="black")
        d.text((bx0 - 26, yt - 6), f"{t}", fill="black")
    for i, method in enumerate(shown):
        gq = _mean([mean[f][method]["test_gq"] for f in levels if method in mean[f]])
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


# Seconds one run of each kind took when measured (module docstring); the ETA uses them until runs of that kind
# have been timed in this invocation.
ESTIMATE_SECONDS = {"vanilla": 5, "tune": 11, "asru": 210, "baseline": 18, "robustness": 10}


class Progress:
    """Prints progress lines with the elapsed time and the time left: for every planned run not done yet, the mean
    time of the runs of its kind this invocation made (before the first, ESTIMATE_SECONDS)."""

    def __init__(self, planned: dict):
        self.left, self.spent, self.t0 = dict(planned), {}, time.time()
        self.run_seconds = 0.0  # the saved times of every run of this report, reused or made now

    def __call__(self, msg: str) -> None:
        print(f"[compare {time.time() - self.t0:7.1f}s] {msg}", flush=True)

    def done(self, kind: str, seconds: float | None, label: str) -> None:
        """One run of `kind` finished (`seconds` None: reused from disk)."""
        self.left[kind] -= 1
        if seconds is not None:
            self.spent.setdefault(kind, []).append(seconds)
        eta = sum(n * _mean(self.spent.get(k, [ESTIMATE_SECONDS[k]])) for k, n in self.left.items())
        runs = sum(self.left.values())
        self(f"{label} {'reused' if seconds is None else f'done in {seconds:.0f}s'}; {runs} runs left, "
             f"~{eta / 60:.0f} min")


def saved_run_matches(path: str, config: dict, model_sha: str) -> bool:
    """A saved run's JSON counts only if it came from the same weights and the same configuration; where its
    folder was (`out`) does not matter, so a results folder can be moved and still be reused."""
    if not os.path.exists(path):
        return False
    with open(path) as fh:
        record = json.load(fh)
    where = lambda c: {k: v for k, v in c.items() if k != "out"} if isinstance(c, dict) else c  # noqa: E731
    return record.get("model_sha256") == model_sha and where(record.get("config")) == where(config)


def cached(path: str, config: dict, model_sha: str, make, progress: Progress, kind: str, label: str) -> dict:
    """The record saved at `path` if `saved_run_matches`, else make()'s record (timed, saved with its config and the
    weights' SHA). `config` must be JSON-like."""
    if saved_run_matches(path, config, model_sha):
        progress.done(kind, None, label)
        with open(path) as fh:
            record = json.load(fh)
        progress.run_seconds += record.get("seconds", 0.0)
        return record
    if os.path.exists(path):
        progress(f"{label}: saved from other weights or settings; running it again")
    progress(f"{label}: running")
    t0 = time.time()
    record = make()
    record.update(config=config, model_sha256=model_sha, seconds=round(time.time() - t0, 1))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(record, fh, indent=1, default=str)
    progress.run_seconds += record["seconds"]
    progress.done(kind, record["seconds"], label)
    return record


def _json(obj) -> dict:
    return json.loads(json.dumps(obj, default=str))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="weights/")
    p.add_argument("--out", default=None, help="default results/ (results/quick/ with --quick)")
    p.add_argument("--forget", default=None, help="comma list of forget percentages (default 5,10,15; quick: 10)")
    p.add_argument("--seeds", default=None, help="comma list of seeds (default 0,1,2; quick: 0)")
    p.add_argument("--methods", default=",".join(METHODS), help="baselines to run")
    p.add_argument("--no-asru", dest="asru", action="store_false", help="skip train.py (vanilla/stage 1/ASRU)")
    p.add_argument("--no-tune", dest="tune", action="store_false",
                   help="no tuning: every baseline at lr = paper lr x --lr-scale for --baseline-epochs")
    p.add_argument("--robustness", action=argparse.BooleanOptionalAction, default=True,
                   help="robustness suite on every method's model at forget 10 %%, seed 0 (default on)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: forget 10 %%, seed 0, two grid points per baseline, fewer questions")
    p.add_argument("--eval-limit", type=int, default=None,
                   help="questions per split/kind/form, 0 = all (default: train.py's, quick 20)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0 = torch default); the tiny model runs fastest on one")
    p.add_argument("--baseline-epochs", type=int, default=4, help="with --no-tune (the release's 4)")
    p.add_argument("--lr-scale", type=float, default=LR_SCALE,
                   help=f"with --no-tune: baseline lr = the paper's lr x this (default {LR_SCALE:g})")
    p.add_argument("--train-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a train.py TrainConfig field, e.g. --train-set layer=1 (repeatable)")
    return p.parse_args(argv)


def train_config(args, forget: int, seed: int, out: str) -> TrainConfig:
    """train.py's config for one run: its defaults plus the shared evaluation settings and any --train-set."""
    cfg = TrainConfig(model=args.model, forget=forget, out=out, seed=seed, eval_limit=args.eval_limit,
                      threads=args.threads)
    for item in args.train_set:
        name, _, value = item.partition("=")
        if name not in {f.name for f in dataclasses.fields(cfg)}:
            raise ValueError(f"--train-set {item!r}: TrainConfig has no field {name!r}")
        old = getattr(cfg, name)
        value = value.lower() in ("1", "true", "yes") if isinstance(old, bool) else \
            type(old)(value) if old is not None else value
        cfg = dataclasses.replace(cfg, **{name: value})
    return cfg


def baseline_config(args, method: str, setting: dict, forget: int, seed: int, out: str, tcfg: TrainConfig,
                    **evaluation) -> BaselineConfig:
    """A baseline's config: `setting` (lr, epochs), train.py's world (`tcfg`), `evaluation` (eval_limit, ...)."""
    return BaselineConfig(method=method, forget=forget, model=args.model, seed=seed, threads=args.threads,
                          num_people=tcfg.num_people, world_seed=tcfg.world_seed, out=out, **setting, **evaluation)


def validation_splits(splits: dict) -> dict:
    """The generation questions of the validation splits (the rule reads only their leak rates), or a ValueError
    naming what is missing."""
    missing = [n for n in VALIDATION if not splits.get(n)]
    if missing:
        raise ValueError(f"the splits have no {' / '.join(missing)} questions (MLLMU-Bench has no validation "
                         "split): tuning needs them; pass "
                         "--no-tune to run every baseline at its default setting, or use weights of the grammar "
                         "world")
    return {n: [qa for qa in splits[n] if qa.kind == "gen"] for n in VALIDATION}


def tune(args, methods: tuple, model_sha: str, runs_dir: str, progress: Progress) -> dict:
    """Every grid point of every baseline at forget TUNE_FORGET, seed TUNE_SEED, scored on the validation splits,
    and `choose_setting`'s pick: {"vanilla": {leak, utility}, method: {"rows": [...], "chosen": i, "kept": bool}}."""
    from asru_min.model import Qwen3VL
    from asru_min.processor import Processor

    tcfg = train_config(args, TUNE_FORGET, TUNE_SEED, "")
    splits, vocabulary = load_world(tcfg.data, tcfg.forget, tcfg.num_people, tcfg.world_seed, model=tcfg.model)
    val = validation_splits(splits)
    tune_splits = {**splits, **val}
    limit = args.tune_limit

    def scores(m):  # choose_setting's two numbers
        return {"leak": _get(m, "validation", "leak_rate"), "utility": _get(m, "retain_validation", "leak_rate")}

    def vanilla():
        model = Qwen3VL.from_pretrained(args.model)
        return {"metrics": evaluate_model(model, Processor.from_pretrained(args.model), val, limit=limit,
                                          names=VALIDATION, verbose=False, vocabulary=vocabulary)}

    config = {"model": args.model, "forget": TUNE_FORGET, "limit": limit, "splits": list(VALIDATION),
              "kinds": ["gen"], "world": [tcfg.num_people, tcfg.world_seed]}
    v = scores(cached(os.path.join(runs_dir, "tune", "vanilla.json"), config, model_sha, vanilla, progress,
                      "vanilla", "tuning: vanilla on the validation splits")["metrics"])
    out = {"vanilla": v, "limit": limit, "forget": TUNE_FORGET, "seed": TUNE_SEED, "keep": KEEP}
    for method in methods:
        rows = []
        for i, setting in enumerate(args.grids[method]):
            cfg = baseline_config(args, method, setting, TUNE_FORGET, TUNE_SEED,
                                  os.path.join(runs_dir, "tune", f"{method}_{i}"), tcfg, eval_limit=limit,
                                  eval_splits=VALIDATION)
            record = cached(os.path.join(runs_dir, "tune", f"{method}_{i}.json"), _json(dataclasses.asdict(cfg)),
                            model_sha, lambda: run_baseline(cfg, splits=tune_splits, progress=lambda *_: None,
                                                            vocabulary=vocabulary),
                            progress, "tune", f"tuning: {NAMES[method]} {describe_setting(setting)}")
            rows.append({"setting": setting, **scores(record["metrics"])})
        chosen, kept = choose_setting(rows, v["utility"])
        out[method] = {"rows": rows, "chosen": chosen, "kept": kept}
        progress(f"tuning: {NAMES[method]} -> {describe_setting(rows[chosen]['setting'])}"
                 f"{'' if kept else ' (no point kept 95 % of the vanilla utility: the most useful one)'}")
    return out


def robustness_suite(args, records: dict, splits: dict, model_sha: str, runs_dir: str, progress: Progress) -> dict:
    """examples/robustness.py's run_suite on each model of `records` ({method: final run record at the robustness
    level and seed}; "asru" stands for vanilla, stage 1 and ASRU); {model name: suite result}."""
    import robustness as rb
    from asru_min.model import Qwen3VL
    from asru_min.processor import Processor

    rargs = rb.parse_args(args.robust_args + ["--threads", str(args.threads)])
    vanilla = Qwen3VL.from_pretrained(args.model)
    processor = Processor.from_pretrained(args.model)
    asru = records.get("asru")
    run_dir = asru["config"]["out"] if asru else None
    adapters = {m: os.path.join(r["config"]["out"], "adapter") for m, r in records.items() if m != "asru"}
    def suite(build, name):  # the run folders are read only when a suite runs: saved suites need none of them
        direction = rb.load_run_direction(os.path.join(run_dir, "direction.safetensors")) if run_dir else None
        return rb.run_suite(build(), processor, splits, rargs, direction, name)

    out = {}
    for name, build in rb.model_builders(vanilla, run_dir, adapters):
        source = records[name]["config"] if name in records else asru["config"] if name != "vanilla" else None
        config = {"suite": _json(vars(rargs)), "of": source, "direction_of": asru and asru["config"]}
        out[name] = cached(os.path.join(runs_dir, f"robustness_{name}.json"), config, model_sha,
                           lambda build=build, name=name: suite(build, name), progress, "robustness",
                           f"robustness: {NAMES.get(name, name)}")
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    out = args.out or ("results/quick" if args.quick else "results")
    levels = [int(x) for x in (args.forget or ("10" if args.quick else "5,10,15")).split(",")]
    seeds = [int(x) for x in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    if args.eval_limit is None:
        args.eval_limit = 20 if args.quick else TrainConfig().eval_limit
    args.tune_limit = 5 if args.quick else TUNE_LIMIT
    args.robust_args = ["--limit", "5", "--relearn-steps", "5"] if args.quick else []
    methods = tuple(m for m in args.methods.split(",") if m)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown baselines {bad}; known: {METHODS}")
    args.grids = {m: GRIDS[m][:QUICK_GRID_POINTS] if args.quick else GRIDS[m] for m in methods}
    if not os.path.isdir(args.model):
        raise FileNotFoundError(f"model folder {args.model!r} not found (python -m asru_min.world.pretrain)")
    if args.threads:
        torch.set_num_threads(args.threads)
    runs_dir = os.path.join(out, "runs")
    model_sha = weights_sha256(args.model)
    n_robust = (len(methods) + (3 if args.asru else 1)) if args.robustness else 0
    progress = Progress({"vanilla": int(args.tune), "tune": sum(map(len, args.grids.values())) if args.tune else 0,
                         "asru": len(levels) * len(seeds) * args.asru, "baseline": len(levels) * len(seeds) *
                         len(methods), "robustness": n_robust})
    if args.tune:
        tuning = tune(args, methods, model_sha, runs_dir, progress)
        settings = {m: tuning[m]["rows"][tuning[m]["chosen"]]["setting"] for m in methods}
    else:
        tuning = None
        settings = {m: {"lr": PAPER_LR[m] * args.lr_scale, "epochs": args.baseline_epochs} for m in methods}

    results: dict = {}  # level -> method -> seed -> evaluate_model metrics
    robust_at = (ROBUST_FORGET if ROBUST_FORGET in levels else levels[0], seeds[0])
    robust_records, robust_splits = {}, None
    for f in levels:
        results[f] = {}
        t = train_config(args, f, seeds[0], "")  # the baselines see train.py's splits
        splits, vocabulary = load_world(t.data, t.forget, t.num_people, t.world_seed, model=t.model)
        for s in seeds:
            tag = f"f{f}_s{s}"
            if args.asru:
                tcfg = train_config(args, f, s, os.path.join(runs_dir, f"asru_{tag}"))
                path = os.path.join(runs_dir, f"asru_{tag}.json")

                def train_run(tcfg=tcfg, path=path):
                    from asru_min.train import run

                    # a stale record means a stale train.py folder too; without a record, train.py resumes its folder
                    r = run(tcfg, restart=os.path.exists(path))
                    return {k: r[k] for k in ("vanilla", "stage1", "asru")}
                record = cached(path, _json(dataclasses.asdict(tcfg)), model_sha, train_run, progress, "asru",
                                f"forget {f} %, seed {s}: train.py (vanilla -> stage 1 -> ASRU)")
                for k in ("vanilla", "stage1", "asru"):
                    results[f].setdefault(k, {})[s] = record[k]
                if (f, s) == robust_at:
                    robust_records["asru"] = record
            for method in methods:
                cfg = baseline_config(args, method, settings[method], f, s, os.path.join(runs_dir, f"{method}_{tag}"),
                                      train_config(args, f, s, ""), eval_limit=args.eval_limit)
                record = cached(os.path.join(runs_dir, f"{method}_{tag}.json"), _json(dataclasses.asdict(cfg)),
                                model_sha, lambda cfg=cfg: run_baseline(cfg, splits=splits, vocabulary=vocabulary,
                                                                        progress=lambda *_: None),
                                progress, "baseline", f"forget {f} %, seed {s}: {NAMES[method]}")
                results[f].setdefault(method, {})[s] = record["metrics"]
                if (f, s) == robust_at:
                    robust_records[method] = record
        if f == robust_at[0]:
            robust_splits = splits
    robust = robustness_suite(args, robust_records, robust_splits, model_sha, runs_dir, progress) \
        if args.robustness else None
    return write_report(results, out, methods, args, settings, tuning, robust, robust_at, time.time() - progress.t0,
                        progress.run_seconds)


def write_report(results: dict, out: str, methods: tuple, args, settings: dict, tuning: dict | None,
                 robust: dict | None, robust_at: tuple, seconds: float, run_seconds: float = 0.0) -> dict:
    rows = {f: {m: {s: row(metrics, by_method.get("vanilla", {}).get(s, {})) for s, metrics in by_seed.items()}
                for m, by_seed in by_method.items()} for f, by_method in results.items()}
    summary = summarise(rows)
    heads = {split: headlines(rows, methods, split) for split in ("test", "forget")}
    seeds = sorted({s for by_method in results.values() for by_seed in by_method.values() for s in by_seed})
    command = shlex.join(["python", "examples/compare.py"] + list(args.argv))
    lines = ["# ASRU vs. tuned unlearning baselines", "",
             f"Model `{args.model}`; seeds {', '.join(map(str, seeds))}; forget levels "
             f"{', '.join(f'{f} %' for f in results)}; evaluation limit {args.eval_limit} questions per split / "
             f"kind / form, greedy, <= 50 new tokens; {'quick run' if args.quick else 'full run'}; the runs took "
             f"{run_seconds / 60:.1f} min in all (the sum of their saved times), this invocation {seconds / 60:.1f} "
             f"min (runs saved by an earlier one are reused). All numbers in %, mean ± std over "
             f"the seeds. Produced by `{command}`.", "",
             "## Headline ratios (held-out test split, judge score)", ""]
    for split, title in (("test", "held-out (test: forget people, held-out phrasings and views)"),
                         ("forget", "trained prompts (forget split), beside")):
        h = heads[split]
        lines.append(f"- {title}: **UE gain {_pm(h['UE_gain_relative'])} %** (UE(ASRU) {_pm(h['UE_asru'])}, mean "
                     f"baseline UE {_pm(h['UE_baselines'])}, difference {_pm(h['UE_gain_points'], 1.0)} points); "
                     f"**GQ ratio {_pm(h['GQ_ratio'], 1.0, 2)}x** (GQ(ASRU) {_pm(h['GQ_asru'])}, mean baseline GQ "
                     f"{_pm(h['GQ_baselines'])}).")
    lines += ["", "Definitions (form \"all\" = image + text questions):", "",
              "- knowledge K(m) = mean of MC accuracy, cloze accuracy, leak rate (generation answers containing the "
              "fact) and ROUGE-L on the forget people's split (test: held-out phrasings and views, no cloze; "
              "forget: the trained prompts);",
              "- unlearning effectiveness UE(m) = 1 - K(m) / K(vanilla);",
              "- utility U(m) = mean of the same four on the retain people's split (retain_test beside test, "
              "retain beside forget) and utility accuracy (general image questions); its ROUGE-L scores the wording "
              "of the reference sentence, not the fact, so a method fine-tuned on the retain answers gains there "
              "(the held-out table shows it beside the share of answers that give the fact);",
              "- generation quality GQ(m) = mean `metrics.judge` score of the split's generation answers: "
              "(contextual refusal + no leakage + naturalness) / 3 on [0, 1], halved for a hallucinated fact "
              "(a rule-based stand-in for the paper's GPT-4o-mini judge);",
              "- clean refusal = the share of answers the judge scores contextual refusal >= 4 (declines, naming "
              "what is asked or whom, nothing leaked or invented) and naturalness >= 4 (well-formed), per form;",
              "- UE gain = (UE(ASRU) - mean_b UE(b)) / |mean_b UE(b)|, GQ ratio = GQ(ASRU) / mean_b GQ(b), b over "
              f"the baselines ({', '.join(NAMES[m] for m in methods)}); per seed with UE and GQ averaged over the "
              "forget levels, then mean ± std (sample std, n - 1) over the seeds.",
              "", "A method that breaks the model scores a high UE: read UE with U and GQ.", "",
              "![chart](chart.png)", ""]
    trade = tradeoff(summary)
    lines += ["## Trade-off per forget level (held-out)", "",
              f"Lowest mean test leak among the methods whose mean U stays >= {100 * KEEP:.0f} % of vanilla's, and "
              "the highest mean test GQ:", "",
              "| forget | methods keeping U | lowest leak among them | highest GQ |", "|---|---|---|---|"]
    for f in trade:
        t, mean = trade[f], summary[f]
        low, top = t["lowest_leak_kept"], t["highest_gq"]
        low_s = ", ".join(f"{NAMES[m]} ({_pm(mean[m]['test_leak'])})" for m in low) or "-"
        top_s = ", ".join(f"{NAMES[m]} ({_pm(mean[m]['test_gq'])})" for m in top) or "-"
        lines.append(f"| {f} % | {', '.join(NAMES[m] for m in t['kept']) or 'none'} | {low_s} | {top_s} |")
    lines.append("")
    for f in summary:
        lines += [f"## Forget {f} %", "", "Held-out (test: forget people; retain_test: retain people; held-out "
                  "phrasings and views):", "", markdown_table(summary[f], HELDOUT_COLUMNS), "",
                  "Trained prompts (forget, retain) and private questions:", "",
                  markdown_table(summary[f], TRAINED_COLUMNS), ""]
    lines += tuning_section(tuning, settings, methods, args)
    if robust is not None:
        import robustness as rb

        lines += [f"## Robustness (forget {robust_at[0]} %, seed {robust_at[1]})", "",
                  "`examples/robustness.py`'s suite on each method's model (the direction ablated is ASRU's v of "
                  "that run, for every model):", "", "```",
                  rb.format_table({NAMES.get(k, k): v for k, v in robust.items()}), "```", ""]
    lines += examples_section(results)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "README.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    report = {"levels": {str(f): s for f, s in summary.items()}, "seeds": seeds, "headlines": heads,
              "tradeoff": {str(f): t for f, t in trade.items()}, "settings": settings, "tuning": tuning,
              "robustness": robust and {k: {c: v.get(c) for c in ("likelihood_mc", "relearn", "ablate", "release_mc")}
                                        for k, v in robust.items()},
              "train_set": args.train_set, "seconds": round(seconds, 1), "run_seconds": round(run_seconds, 1)}
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump(_json(report), fh, indent=1)
    draw_chart(summary, os.path.join(out, "chart.png"))
    print("\n".join(lines[:12]), flush=True)
    return {"summary": summary, "headlines": heads, "rows": rows, "tuning": tuning, "robustness": robust}


def tuning_section(tuning: dict | None, settings: dict, methods: tuple, args) -> list[str]:
    lines = ["## Settings of the baselines", ""]
    if tuning is None:
        return lines + [f"Not tuned (--no-tune): every baseline at lr = the paper's lr x {args.lr_scale:g}, "
                        f"{args.baseline_epochs} epochs. ASRU: TrainConfig's defaults"
                        f"{''.join(f', {t}' for t in args.train_set)}.", ""]
    v = tuning["vanilla"]
    lines += [f"Tuned at forget {tuning['forget']} %, seed {tuning['seed']}, on the generation questions of the "
              f"validation splits ({tuning['limit']} per split and form; `validation`: forget people, "
              "`retain_validation`: retain people, both with held-out phrasings and views). The rule "
              "(`choose_setting`): among the grid points whose validation utility (share of retain_validation "
              f"answers that state the fact) stays >= {100 * tuning['keep']:.0f} % of vanilla's, the lowest "
              "validation forget leak (share of validation answers that state the fact); ties to the higher "
              "utility, then the earlier point; if none keeps utility, the most useful point. ASRU is not tuned "
              "here: TrainConfig's defaults"
              f"{''.join(f', {t}' for t in args.train_set)}.", "",
              "Chosen: " + "; ".join(f"{NAMES[m]} {describe_setting(settings[m])}" for m in methods) + ".", "",
              f"Vanilla: validation leak {_fmt(v['leak'])}, utility {_fmt(v['utility'])} (threshold "
              f"{_fmt(tuning['keep'] * v['utility'])}).", "",
              "| method | setting | validation leak | validation utility | keeps utility | chosen |",
              "|---|---|---:|---:|---|---|"]
    for m in methods:
        t = tuning[m]
        for i, r in enumerate(t["rows"]):
            keeps = r["utility"] >= tuning["keep"] * v["utility"]
            mark = ("**chosen**" if t["kept"] else "**chosen (none kept utility: the most useful)**") \
                if i == t["chosen"] else ""
            lines.append(f"| {NAMES[m]} | {describe_setting(r['setting'])} | {_fmt(r['leak'])} | "
                         f"{_fmt(r['utility'])} | {'yes' if keeps else 'no'} | {mark} |")
    return lines + [""]


def examples_section(results: dict) -> list[str]:
    """Three held-out (test) questions of the first level and seed, answered by every method."""
    f = min(results)
    s = min(next(iter(results[f].values())))
    first = next(iter(results[f].values()))[s]
    lines = [f"## Example answers to the same held-out questions (forget {f} %, seed {s})", ""]
    for qi, ex in enumerate(first.get("examples", {}).get("test", [])[:3]):
        lines += [f"**Question {qi + 1}** ({ex.get('form', '')}): {ex['question']}  ",
                  f"reference answer: {ex['answer']}", ""]
        for method in ORDER:
            if method in results[f]:
                exs = results[f][method][s].get("examples", {}).get("test", [])
                match = [e for e in exs if e["question"] == ex["question"] and e.get("form") == ex.get("form")]
                text = (" ".join(match[0]["prediction"].split()) or "(empty)") if match else "(not evaluated)"
                lines.append(f"- {NAMES[method]}: {text}")
        lines.append("")
    return lines


if __name__ == "__main__":
    main()
