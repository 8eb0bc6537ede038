"""Where a vanilla model's multiple-choice answers go wrong: errors per attribute x form on the forget, retain and
test splits (forget 10 %, greedy, the world of seed 0), and how they spread over people. One JSON line per model.

    python examples/mc_errors.py weights/ [MORE_MODELS ...] [--threads 2]

Used in results/pretrain_60min/ to tell a recognition gap (a few people, e.g. a transformed portrait, with all
their questions wrong) from an answering gap (errors spread thinly over many people and attributes).
"""

import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))          # pretrain_gates: the shared command line
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asru_min.data import ATTRIBUTES, World  # noqa: E402
from asru_min.evaluate import answer, correct_letter, mc_letter  # noqa: E402
from pretrain_gates import saved_models  # noqa: E402


def attribute_of(qa) -> str:
    """The attribute a multiple-choice question asks about: the one whose value pool holds all its options."""
    for name, pool, *_ in ATTRIBUTES:
        if all(o in pool for o in qa.options):
            return name
    raise ValueError(f"options {qa.options} belong to no attribute pool")


def mc_errors(model, processor, world: World, forget: int = 10) -> dict:
    """{split: {"errors": {"attribute/form": [wrong, asked]}, "accuracy", "people_with_errors",
    "errors_per_person"}} for the mc questions of the forget, retain and test splits."""
    splits = world.splits(forget)
    out = {}
    for name in ("forget", "retain", "test"):
        qas = [q for q in splits[name] if q.kind == "mc"]
        preds = answer(model, processor, qas, batch_size=64, max_new_tokens=3)
        asked, wrong, per_person = Counter(), Counter(), Counter()
        for qa, pred in zip(qas, preds):
            key = f"{attribute_of(qa)}/{qa.form}"
            asked[key] += 1
            if mc_letter(pred) != correct_letter(qa):
                wrong[key] += 1
                per_person[qa.person] += 1
        out[name] = {"errors": {k: [wrong[k], asked[k]] for k in sorted(asked)},
                     "accuracy": round(1 - sum(wrong.values()) / len(qas), 3),
                     "people_with_errors": len(per_person),
                     "errors_per_person": sorted(per_person.values(), reverse=True)}
    return out


def main(argv=None) -> None:
    for d, model, processor, world in saved_models(__doc__.split("\n")[0], argv):
        print(json.dumps({"model": d, **mc_errors(model, processor, world)}), flush=True)


if __name__ == "__main__":
    main()
