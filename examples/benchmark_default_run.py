"""Wall time of the default run (`python -m asru_min.train`) against another revision of this repository, in one
benchmark run:

    python examples/benchmark_default_run.py --baseline REV [--rounds 1] [--threads 1] [-- extra train flags]

The baseline revision is checked out into a temporary git worktree; both checkouts then run the same command
(`python -m asru_min.train --out TMP --restart --threads T` plus the extra flags) in alternation, R rounds, so load
on a shared machine hits both alike. Printed per checkout: wall and CPU time of each run (CPU: user + system time
of the child process), the medians, the ratio current / baseline (< 1: the current code is faster), and whether
the two runs wrote the same table.txt (a change of sampling streams changes it; a pure speed change does not).
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed_run(checkout: str, out: str, threads: int, extra: list[str]) -> tuple[float, float, str]:
    """One default run in `checkout`; returns (wall s, child CPU s, table.txt)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "asru_min.train", "--out", out, "--restart", "--threads", str(threads), *extra]
    subprocess.run(cmd, cwd=checkout, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(os.path.join(out, "table.txt")) as f:
        return wall, cpu, f.read()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", required=True, help="git revision to compare with (e.g. a commit hash, HEAD~3)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("extra", nargs="*", help="flags passed to both runs (after --)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    rev = subprocess.run(["git", "rev-parse", "--verify", args.baseline + "^{commit}"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="bench_default_")
    base = os.path.join(tmp, "baseline")
    subprocess.run(["git", "worktree", "add", "--detach", "-q", base, rev], cwd=REPO, check=True)
    times = {"baseline": [], "current": []}
    tables = {}
    try:
        for r in range(args.rounds):
            for name, checkout in (("baseline", base), ("current", REPO)):
                wall, cpu, table = timed_run(checkout, os.path.join(tmp, f"out_{name}"), args.threads, args.extra)
                times[name].append((wall, cpu))
                tables[name] = table
                print(f"round {r + 1}/{args.rounds}  {name:8s}  wall {wall:7.1f} s  cpu {cpu:7.1f} s", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", base], cwd=REPO, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    print(f"baseline {rev[:10]}: wall {med['baseline'][0]:.1f} s, cpu {med['baseline'][1]:.1f} s (median)")
    print(f"current  (work tree): wall {med['current'][0]:.1f} s, cpu {med['current'][1]:.1f} s (median)")
    print(f"ratio current / baseline: wall {med['current'][0] / med['baseline'][0]:.3f}, "
          f"cpu {med['current'][1] / med['baseline'][1]:.3f}")
    print("tables identical" if tables["baseline"] == tables["current"] else "tables differ:")
    if tables["baseline"] != tables["current"]:
        for name in ("baseline", "current"):
            print(f"--- {name}\n{tables[name]}")


if __name__ == "__main__":
    main()
