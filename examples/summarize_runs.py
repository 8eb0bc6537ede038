"""A short block per finished `python -m asru_min.train` run: the figures the ASRU targets are stated in.

    python examples/summarize_runs.py runs/asru_default runs/share25 ...   [--json out.json]

For each run folder: its stage-2 settings that differ from train.py's defaults, then, after ASRU (stage 1 in
brackets where it matters): forget refusal and leak (image / text), generation quality, test leak, retain MC,
cloze and ROUGE-L, retain refusals, utility, and U as a share of the vanilla model's (U = mean of retain MC,
retain cloze, retain ROUGE-L and utility accuracy, as in examples/compare.py). The vanilla figures are each
run's own metrics_vanilla.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), HERE]  # the package, and compare.py beside this file

from asru_min.train import TrainConfig  # noqa: E402

from compare import model_utility  # noqa: E402  (examples/compare.py, next to this file)

IGNORED = {"out", "model", "threads", "device"}


def load(run: str, stage: str) -> dict:
    path = os.path.join(run, f"metrics_{stage}.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {run!r} a finished train.py run?")
    with open(path) as f:
        return json.load(f)


def summary(run: str) -> dict:
    with open(os.path.join(run, "config.json")) as f:
        cfg = json.load(f)
    defaults = dataclasses.asdict(TrainConfig())
    changed = {k: v for k, v in cfg.items() if k not in IGNORED and k in defaults and v != defaults[k]}
    van, st1, asru = load(run, "vanilla"), load(run, "stage1"), load(run, "asru")
    f, r = asru["forget"], asru["retain"]["all"]
    u0 = model_utility(van)
    return {
        "run": run, "changed": changed,
        "forget_refusal": f["all"]["refusal_rate"], "forget_refusal_stage1": st1["forget"]["all"]["refusal_rate"],
        "forget_leak": f["all"]["leak_rate"], "forget_leak_image": f["image"]["leak_rate"],
        "forget_leak_text": f["text"]["leak_rate"], "quality": f["all"]["quality"],
        "quality_stage1": st1["forget"]["all"]["quality"], "test_leak": asru["test"]["all"]["leak_rate"],
        "retain_mc": r["mc_acc"], "retain_cloze": r["cloze_acc"], "retain_rougeL": r["rougeL"],
        "retain_refusal": r["refusal_rate"], "retain_refusal_stage1": st1["retain"]["all"]["refusal_rate"],
        "utility": asru["utility"]["all"]["acc"],
        "u_of_vanilla": model_utility(asru) / u0 if u0 else None,
        "retain_rougeL_of_vanilla": r["rougeL"] / r0 if (r0 := van["retain"]["all"]["rougeL"]) else None,
    }


def line(s: dict) -> str:
    p = lambda v: "  -  " if v is None else f"{100 * v:5.1f}"  # noqa: E731
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in s["changed"].items()) or "(defaults)"
    return (f"{s['run']}: {flags}\n"
            f"  forget refusal {p(s['forget_refusal'])} (stage 1 {p(s['forget_refusal_stage1'])})  leak "
            f"{p(s['forget_leak'])} (image {p(s['forget_leak_image'])}, text {p(s['forget_leak_text'])})  GQ "
            f"{s['quality']:.3f} (stage 1 {s['quality_stage1']:.3f})  test leak {p(s['test_leak'])}\n"
            f"  retain MC {p(s['retain_mc'])} cloze {p(s['retain_cloze'])} ROUGE-L {p(s['retain_rougeL'])} "
            f"({p(s['retain_rougeL_of_vanilla'])} % of vanilla)  refused {p(s['retain_refusal'])} (stage 1 "
            f"{p(s['retain_refusal_stage1'])})  utility {p(s['utility'])}  U {p(s['u_of_vanilla'])} % of vanilla")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="train.py --out folders")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    rows = [summary(run) for run in args.runs]
    for s in rows:
        print(line(s))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
