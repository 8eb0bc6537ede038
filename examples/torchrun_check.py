"""Two processes train the adapter one process trains: a short run of the default model, once with
`python -m asru_min.train` and once with `torchrun --nproc_per_node 2 -m asru_min.train` (gloo on the CPU, or
--device cuda on two GPUs), same flags; prints the largest absolute difference between the two LoRA adapters
(target: below 1e-5) and compares the GRPO logs step by step.

    python examples/torchrun_check.py [--out runs/torchrun_check] [--nproc 2] [-- train flags ...]

Default train flags: the default run cut to 12 GRPO steps (one epoch over a 96-prompt boundary set) with 10
evaluation questions per split / kind / form. Both runs go to --out/one and --out/two (started afresh).
"""

import argparse
import json
import os
import subprocess
import sys
import time

from safetensors.torch import load_file

SHORT = ["--grpo-epochs", "1", "--boundary-size", "96", "--eval-limit", "10"]


def launch(cmd: list[str]) -> float:
    """Run cmd (its output shown as it comes); returns its wall time in seconds."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t0


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/torchrun_check")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("train_flags", nargs="*", help=f"flags for asru_min.train (default: {' '.join(SHORT)})")
    args = p.parse_args(argv)
    flags = args.train_flags or SHORT
    one, two = os.path.join(args.out, "one"), os.path.join(args.out, "two")
    seconds = {
        "1 process": launch([sys.executable, "-m", "asru_min.train", "--out", one, "--restart", *flags]),
        f"{args.nproc} processes": launch([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                           "--nproc_per_node", str(args.nproc), "-m", "asru_min.train",
                                           "--out", two, "--restart", *flags]),
    }
    a = load_file(os.path.join(one, "lora", "adapter_model.safetensors"))
    b = load_file(os.path.join(two, "lora", "adapter_model.safetensors"))
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max(a[k].abs().max().item() for k in a if "lora_B" in k)  # B starts at zero: how far training went
    logs = [[json.loads(line) for line in open(os.path.join(o, "grpo_log.jsonl"))] for o in (one, two)]
    same_rewards = all(x["reward_mean"] == y["reward_mean"] for x, y in zip(*logs)) and len(logs[0]) == len(logs[1])
    loss_diff = max(abs(x["loss"] - y["loss"]) for x, y in zip(*logs))
    print(f"\nGRPO steps: {len(logs[0])}; rewards equal at every step: {same_rewards}; "
          f"largest loss difference: {loss_diff:.2e}")
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(f"largest |lora_B| (trained from 0): {moved:.4f}")
    print(f"adapter max abs difference, {args.nproc} processes vs 1: {diff:.3e} "
          f"({'within' if diff < 1e-5 else 'OVER'} the 1e-5 target)")
    return diff


if __name__ == "__main__":
    main()
