"""torchrun: two CPU processes (gloo) train the adapter one process trains, skip a non-finite step together, and
resume from rank 0's checkpoint.

Each test launches `python -m torch.distributed.run --standalone --nproc_per_node 2 ...` (a free port) in its own
process group and kills the group if it runs past its timeout, so a hung collective fails the test instead of the
suite. Run as a script, this file is the worker of the tests that need more than the command line
(`python tests/test_distributed.py <case> <args>`, under torchrun).
"""

import json
import math
import os
import signal
import subprocess
import sys
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from asru_min import distributed
from asru_min.train import TrainConfig, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADAPTER = os.path.join("lora", "adapter_model.safetensors")


class Interrupt(Exception):
    pass


def tiny_config(model: str, out: str, **changes) -> TrainConfig:
    """test_train's tiny run (2 GRPO steps of 2 prompts x G=2): each of the 2 processes takes one prompt a step."""
    from test_train import tiny_config as config

    return config(model, out, **changes)


def flags(cfg: TrainConfig) -> list[str]:
    """The command line of cfg: one flag per field that differs from the default."""
    args = []
    for name, value in vars(cfg).items():
        if value == getattr(TrainConfig, name):
            continue
        flag = "--" + name.replace("_", "-")
        args += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return args


def torchrun(*args: str, timeout: float = 240) -> str:
    """Launch 2 processes; return their output. Fails (after killing every process it started) on a non-zero exit
    or when they run past `timeout` seconds."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: the workers die with it
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"2 processes did not finish in {timeout} s (a collective hung?):\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


def max_adapter_diff(out_a: str, out_b: str) -> float:
    a, b = load_file(os.path.join(out_a, ADAPTER)), load_file(os.path.join(out_b, ADAPTER))
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_blocks_of_a_step_cover_its_prompts_in_order(monkeypatch):
    """Rank r of W takes a contiguous block; the blocks in rank order are the step's prompts, sizes within one."""
    for world in (1, 2, 3, 8):
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        for n in (world, world + 1, 2 * world + 1, 64):
            blocks = []
            for r in range(world):
                monkeypatch.setattr(distributed, "rank", lambda: r)
                blocks.append(distributed.block(list(range(n))))
            assert sum(blocks, []) == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1 and min(map(len, blocks)) >= 1


def test_a_step_with_fewer_prompts_than_processes_is_refused(monkeypatch):
    from asru_min.grpo import check_process_count

    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    check_process_count([[0, 1, 2], [3, 4, 5]])
    with pytest.raises(ValueError, match="2 prompts, fewer than the 3 processes"):
        check_process_count([[0, 1, 2], [3, 4]])


@pytest.fixture(scope="module")
def one_process(tiny_ckpt, tmp_path_factory):
    """The tiny run in this process: the reference every 2-process run is held against."""
    out = str(tmp_path_factory.mktemp("one"))
    run(tiny_config(tiny_ckpt, out))
    return out


def test_two_processes_train_the_one_process_adapter(one_process, tiny_ckpt, tmp_path):
    """torchrun -m asru_min.train with the same flags: same responses and rewards, same adapter (1e-5), every
    file written once, by rank 0."""
    out = str(tmp_path / "two")
    printed = torchrun("-m", "asru_min.train", *flags(tiny_config(tiny_ckpt, out)))
    assert max_adapter_diff(one_process, out) < 1e-5
    logs = [[json.loads(line) for line in open(os.path.join(o, "grpo_log.jsonl"))] for o in (one_process, out)]
    for a, b in zip(*logs, strict=True):
        for key in ("reward_mean", "reward_forget_mean", "reward_retain_mean", "response_len", "sample_response",
                    "optimizer_steps", "skipped_steps"):
            assert a[key] == b[key], key
        for key in ("loss", "kl", "pg_loss", "ratio_mean"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert printed.count("grpo step 1/2") == 1  # rank 0 alone prints
    assert json.load(open(os.path.join(out, "state.json")))["done"] == \
        json.load(open(os.path.join(one_process, "state.json")))["done"]
    assert os.listdir(os.path.join(out, "ckpt")) == ["step_000001"]


def test_two_processes_resume_after_an_interruption(one_process, tiny_ckpt, tmp_path):
    """Both processes stop after GRPO step 0 (rank 0 has checkpointed it); a new torchrun of the same command
    loads the checkpoint in every process, runs step 1 only, and ends with the one-process adapter."""
    out = str(tmp_path / "resumed")
    torchrun(__file__, "interrupt", tiny_ckpt, out)
    state = json.load(open(os.path.join(out, "state.json")))
    assert state["grpo_step"] == 0 and "stage2" not in state["done"]
    printed = torchrun("-m", "asru_min.train", *flags(tiny_config(tiny_ckpt, out)))
    assert "resuming GRPO at step 1" in printed and "grpo step 1/2" not in printed
    assert max_adapter_diff(one_process, out) < 1e-5


def test_two_processes_off_policy_micro_batches_match_one_process_sgd(tiny_ckpt, tmp_path):
    """Mini-batches of 2 rows over both processes' rows, 2 inner epochs, one row per micro-batch (so a process
    often holds none of a mini-batch, or fewer pieces than the other), plain SGD without clipping (its step is
    proportional to the gradient, so the token-mean normalisation and DDP's averaging are checked, not only the
    gradient's direction): the 2-process adapter equals the 1-process one. In float64: in float32, rounding alone
    moves step 1's adapter by up to ~5e-5 on the tiny checkpoint (a 6e-8 change of one process's initial adapter
    does), which would hide a real difference; in float64 the two runs agree to 1e-16."""
    two = str(tmp_path / "two")
    torchrun(__file__, "sgd", tiny_ckpt, two, timeout=180)
    one = train_two_steps(tiny_ckpt, str(tmp_path / "one"), "sgd")
    ranks = [torch.load(os.path.join(two, f"rank{r}.pt")) for r in (0, 1)]
    moved = max((a - b).abs().max().item() for a, b in zip(one["initial"], one["after_step_1"]))
    assert moved > 1e-3
    for result in ranks:
        assert max((a - b).abs().max().item() for a, b in zip(one["after_step_1"], result["after_step_1"])) < 1e-12
        for a, b in zip(one["records"], result["records"], strict=True):
            assert a["reward_mean"] == b["reward_mean"] and a["optimizer_steps"] == b["optimizer_steps"] == 8
            for key in ("loss", "kl", "clip_frac", "ratio_mean"):
                assert a[key] == pytest.approx(b[key], abs=1e-5), key


def test_a_non_finite_loss_on_one_process_skips_the_step_on_both(tiny_ckpt, tmp_path):
    """Rank 1's rewards are NaN in step 0 (so is its loss, rank 0's is finite): both processes skip that step and
    leave the adapter as it was, with no hang; step 1 trains, both processes identically."""
    out = str(tmp_path / "nan")
    torchrun(__file__, "nan", tiny_ckpt, out, timeout=180)
    ranks = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in (0, 1)]
    for result in ranks:
        first, second = result["records"]
        assert (first["optimizer_steps"], first["skipped_steps"]) == (0, 1)
        assert (second["optimizer_steps"], second["skipped_steps"]) == (1, 0)
        assert math.isfinite(second["loss"])
        assert all(torch.equal(a, b) for a, b in zip(result["initial"], result["after_step_0"]))
        assert any(not torch.equal(a, b) for a, b in zip(result["initial"], result["after_step_1"]))
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["after_step_1"], ranks[1]["after_step_1"]))


# ---------------------------------------------------------------------------------------------- the workers


def interrupt(model: str, out: str) -> None:
    """The tiny run, stopped in every process after GRPO step 0."""
    def stop(event):
        if event == "grpo_step_0":
            raise Interrupt(event)
    try:
        run(tiny_config(model, out), interrupt=stop)
    except Interrupt:
        pass


def train_two_steps(model: str, out: str, case: str) -> dict:
    """LoRA + 2 GRPO steps on the tiny run's boundary set, in one process or under torchrun; returns (and saves to
    out/rank<r>.pt) the records and the adapter before, after step 0 and after step 1. case "nan": AdamW, rank
    1's rewards are NaN in step 0; "sgd": plain SGD (lr 1, no clipping), mini-batches of 2 rows x 2 inner epochs,
    micro-batches of one row, G = 4, the model in float64."""
    from asru_min import grpo
    from asru_min.grpo import make_optimizer, train_grpo
    from asru_min.lora import apply_lora, lora_parameters
    from asru_min.model import Qwen3VL
    from asru_min.processor import Processor
    from asru_min.train import stage_data
    from asru_min.world import load_world

    cfg = tiny_config(model, out, **({"group_size": 4, "mini_batch_size": 2, "epochs_per_rollout": 2,
                                      "micro_batch_tokens": 1, "grad_clip": 0.0} if case == "sgd" else {}))
    distributed.init(cfg.device)
    torch.manual_seed(0)  # the same adapter in every process
    net = Qwen3VL.from_pretrained(model, dtype=torch.float64 if case == "sgd" else None)
    apply_lora(net, r=4, alpha=8, dropout=0.0)
    samples = stage_data(cfg, load_world(None, cfg.forget, cfg.num_people, cfg.world_seed, model=model)[0])["boundary"]
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1.0) if case == "sgd" else make_optimizer(params, cfg.grpo())
    snapshots, scored = {"initial": [p.detach().clone() for p in lora_parameters(net)]}, []

    def reward(response, qa, forget, *settings):  # in place of grpo.sample_reward
        scored.append(response)
        step_0 = len(scored) <= cfg.group_size  # this rank's one prompt of step 0
        return float("nan") if case == "nan" and distributed.rank() == 1 and step_0 else float(len(response) % 3) / 2

    def snapshot(step, record, optimizer):
        snapshots[f"after_step_{step}"] = [p.detach().clone() for p in lora_parameters(net)]

    with mock.patch.object(grpo, "sample_reward", reward):
        records = train_grpo(net, Processor.from_pretrained(model), samples, cfg.grpo(), optimizer=optimizer,
                             on_step=snapshot, progress=lambda line: None)
    result = {"records": records, **snapshots}
    os.makedirs(out, exist_ok=True)
    torch.save(result, os.path.join(out, f"rank{distributed.rank()}.pt"))
    return result


if __name__ == "__main__":
    case, *args = sys.argv[1:]
    try:
        interrupt(*args) if case == "interrupt" else train_two_steps(*args, case)
    finally:
        distributed.shutdown()
