"""The vanilla-model gates (pretrain.gate_report: forget 10 %, greedy) of saved model folders, one JSON line each.

    python examples/pretrain_gates.py weights/ /tmp/asru_facts [--threads 2]

For a model a `pretrain` run wrote with --no-eval (the facts run of examples/pretrain_default.sh), or to re-check
a folder after the fact. The world is `World.generate(100, seed)`; pass the seed the model was trained with.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asru_min.world.people import World  # noqa: E402
from asru_min.model import Qwen3VL  # noqa: E402
from asru_min.world.pretrain import gate_report  # noqa: E402
from asru_min.processor import Processor  # noqa: E402


def saved_models(description: str, argv=None):
    """The command line: MODEL [MODEL ...] [--seed] [--threads]. Checks every folder
    before loading any (argparse error otherwise), sets torch's thread count, and yields (folder, model in eval
    mode, processor, world of --seed) one folder at a time."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("models", nargs="+", help="folders with config.json, model.safetensors, tokenizer.json, ...")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    for d in args.models:
        if not (Path(d) / "config.json").is_file():
            ap.error(f"{d}: no config.json (not a saved model folder)")
    torch.set_num_threads(args.threads)
    world = World.generate(100, args.seed)
    for d in args.models:
        model, processor = Qwen3VL.from_pretrained(d), Processor.from_pretrained(d)
        yield d, model.eval(), processor, world


def main(argv=None) -> None:
    for d, model, processor, world in saved_models(__doc__.split("\n")[0], argv):
        report, _ = gate_report(model, processor, world)
        figures = {k: round(v, 3) for k, v in report["figures"].items() if v is not None}
        print(json.dumps({"model": d, "figures": figures, "gates": report["gates"]}), flush=True)


if __name__ == "__main__":
    main()
