"""One prepared check for a GPU machine: a Qwen3-VL-2B-shaped model at the paper's settings (docs/RUNNING.md).

    python examples/gpu_check.py                              # one GPU (~5 minutes on an H100: estimated, not run)
    torchrun --nproc_per_node 2 examples/gpu_check.py         # two GPUs: each process takes half the prompts
    python examples/gpu_check.py --max-new-tokens 2048        # the paper's response length (random weights never
                                                              # stop early: every row decodes all of them)

From a config alone (default examples/configs/qwen3vl_2b.json) it builds the model in bf16 with random weights on
the device, runs stage 1 (refusal filter and direction on --stage1-prompts portraits, --steer-steps steering
steps at layer 17) and one GRPO step (`grpo.grpo_step`: --prompts-per-step prompts x G, mini-batches of 16,
LoRA r 16 on every linear map of the decoder), and prints for each phase torch.cuda.max_memory_allocated (`memory.PeakMeter`) beside
`--dry-run`'s estimate for the same shapes, rollout and update tokens per second, and which scaled-dot-product
attention kernel ran for the padded, grouped-query calls the rollout and the update make. Prompts are the
synthetic world's questions with their portraits resized to 512 x 512 (256 image tokens under Qwen3-VL's
preprocessor); the tokenizer is the default model's. --time-limit stops the script (SIGALRM) and prints what was
measured so far. Under torchrun only rank 0 runs stage 1 and prints; the GRPO step runs on every rank with its
share of the prompts, without gradient all-reduce (this checks memory and speed, not training).
--device cpu with a tiny --config runs the same code on a CPU (tests/test_memory.py does).
"""

import argparse
import os
import signal
import sys
import time
import warnings

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from benchmark_2b_cpu import random_model, setup  # noqa: E402

from asru_min import grpo, memory, text  # noqa: E402
from asru_min.lora import apply_lora  # noqa: E402
from asru_min.steer import keep_refusals, knowledge_absence_direction, optimize_steering  # noqa: E402
from asru_min.train import TrainConfig  # noqa: E402

TODAY = {"rollout_batch": 0, "micro_batch_tokens": 0, "grad_checkpoint": "off", "logprob_chunk": 0}  # a TrainConfig
# without the memory flags runs like this (one rollout call, whole mini-batches, no checkpointing, unchunked)


def sdpa_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> str:
    """The SDPA kernel `text.grouped_attention(q, k, v, mask)` runs on: "cpu" off CUDA; on CUDA the first backend,
    in the dispatcher's priority order, that accepts the call when it is the only one allowed (e.g.
    "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")."""
    if not q.is_cuda:
        return "cpu"
    priority = getattr(torch._C, "_get_sdp_priority_order", lambda: [1, 2, 0, 3])()  # flash, efficient, math, cudnn
    order = [SDPBackend(i) for i in priority]
    for backend in order:
        try:
            with sdpa_kernel([backend]), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a refusing kernel warns why; only the one that runs matters
                text.grouped_attention(q, k, v, mask)
            return backend.name
        except RuntimeError:
            continue
    return "none"


def sdpa_kernels(cfg, rows: int, length: int, device, dtype) -> dict:
    """`sdpa_backend` (the kernel `text.grouped_attention` runs on) for the padded, grouped-query calls of a
    GRPO batch of rows x length tokens (one row left-padded): the full-sequence call of the log-prob passes and
    the update, and one decode step over that many keys."""
    from asru_min.model import attention_mask_4d

    t = cfg.text
    real = torch.ones(rows, length, dtype=torch.bool, device=device)
    real[0, 0] = False
    q = torch.randn(rows, t.num_attention_heads, length, t.head_dim, device=device, dtype=dtype)
    kv = torch.randn(rows, t.num_key_value_heads, length, t.head_dim, device=device, dtype=dtype)
    return {"sequence": sdpa_backend(q, kv, kv, attention_mask_4d(real, length, 0)),
            "decode step": sdpa_backend(q[:, :, -1:], kv, kv, real[:, None, None, :])}


class Recorder:
    """Wraps grpo's rollout / rows_logprobs / optimizer_step (module globals that grpo_step calls) so that each runs
    inside a meter phase and is timed: "rollout", "old / reference log-probs" (rows_logprobs without grad),
    "update" (rows_logprobs with grad, and the optimiser step); counts the tokens each processed."""

    def __init__(self, meter: memory.PeakMeter):
        self.meter, self.seconds, self.tokens = meter, {}, {}
        self.prompt_len = self.new_tokens = 0  # the longest the rollouts made
        self.originals = {n: getattr(grpo, n) for n in ("rollout", "rows_logprobs", "optimizer_step")}

    def _timed(self, phase, fn, *args, **kw):
        t0 = time.time()
        with self.meter.phase(phase):  # (a CUDA phase synchronises on exit)
            out = fn(*args, **kw)
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.time() - t0
        return out

    def __enter__(self):
        def rollout(*a, **kw):
            ro = self._timed("rollout", self.originals["rollout"], *a, **kw)
            self.tokens["rollout"] = self.tokens.get("rollout", 0) + int(ro.response_mask.sum())
            P = ro.prompt_ids.shape[1]
            self.prompt_len = max(self.prompt_len, P)
            self.new_tokens = max(self.new_tokens, ro.input_ids.shape[1] - P)
            return ro

        def rows_logprobs(model, ro, rows, *a, **kw):
            phase = "update" if torch.is_grad_enabled() else "old / reference log-probs"
            self.tokens[phase] = self.tokens.get(phase, 0) + int(ro.attention_mask[rows].sum())
            return self._timed(phase, self.originals["rows_logprobs"], model, ro, rows, *a, **kw)

        def optimizer_step(*a, **kw):
            return self._timed("update", self.originals["optimizer_step"], *a, **kw)

        grpo.rollout, grpo.rows_logprobs, grpo.optimizer_step = rollout, rows_logprobs, optimizer_step
        return self

    def __exit__(self, *exc):
        for name, fn in self.originals.items():
            setattr(grpo, name, fn)


def run_config(args, device: str) -> TrainConfig:
    """The paper's stage-2 settings as a TrainConfig (its `grpo()` is what train.py runs; the memory flags
    rollout_batch, micro_batch_tokens, grad_checkpoint, logprob_chunk keep their defaults where it has them)."""
    return TrainConfig(device=device, dtype=args.dtype, group_size=args.group_size, temperature=1.5, top_p=0.95,
                       max_new_tokens=args.max_new_tokens, prompts_per_step=args.prompts_per_step,
                       mini_batch_size=args.mini_batch_size, grpo_epochs=1, kl_coef=0.1, grpo_lr=1e-6,
                       eval_batch_size=args.stage1_prompts, lora_dropout=0.0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(HERE, "configs", "qwen3vl_2b.json"))
    p.add_argument("--preprocessor", default=os.path.join(HERE, "configs", "preprocessor_config.json"))
    p.add_argument("--tokenizer-model", default=os.path.join(HERE, "..", "weights"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-new-tokens", type=int, default=256, help="cap (paper: 2048); bounds the time")
    p.add_argument("--prompts-per-step", type=int, default=64)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--mini-batch-size", type=int, default=16)
    p.add_argument("--stage1-prompts", type=int, default=32)
    p.add_argument("--steer-steps", type=int, default=8)
    p.add_argument("--layer", type=int, default=17)
    p.add_argument("--portrait", type=int, default=512)
    p.add_argument("--time-limit", type=int, default=540, help="seconds before the script stops itself")
    args = p.parse_args(argv)

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device
    if world > 1:
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)

    def say(msg: str) -> None:
        if rank == 0:
            print(msg, flush=True)

    def out_of_time(*_):
        raise TimeoutError(f"--time-limit {args.time_limit} s reached")

    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, out_of_time)
        signal.alarm(args.time_limit)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    pre, processor, cfg, forget, retain = setup(args)
    per_rank = forget[rank * args.prompts_per_step // world:(rank + 1) * args.prompts_per_step // world]
    run_cfg = run_config(args, device)
    gcfg = run_cfg.grpo()
    flags = memory.Flags.from_train_config(run_cfg, world)
    flags.portrait = (args.portrait, args.portrait)
    for name, today in TODAY.items():
        if not hasattr(run_cfg, name):
            setattr(flags, name, today)
    layer = min(args.layer, cfg.text.num_hidden_layers - 1)
    say(f"{memory.parameter_count(cfg) / 1e9:.3f} B parameters, {args.dtype} on {device} x {world}; "
        f"{args.prompts_per_step} prompts x {args.group_size}, <= {args.max_new_tokens} new tokens, mini-batches of "
        f"{args.mini_batch_size}; GRPOConfig: {gcfg}")

    meter, results, t_start = memory.PeakMeter(device), {}, time.time()
    try:
        with meter:
            with meter.phase("weights"):
                model = random_model(cfg, dtype).to(device).eval()
            if rank == 0:
                t0 = time.time()
                with meter.phase("stage 1"):
                    positives = retain[:args.stage1_prompts]
                    kept = keep_refusals(model, processor, positives, batch_size=args.stage1_prompts)
                    v = knowledge_absence_direction(model, processor, kept or positives,
                                                    forget[:args.stage1_prompts], layer,
                                                    batch_size=args.stage1_prompts)
                    optimize_steering(model, processor, forget[:2 * args.steer_steps], retain[:2 * args.steer_steps],
                                      v, layer, c=3.0, alpha=1.0, lr=1e-4, batch_size=2, epochs=1, log_every=0)
                results["seconds"] = {"stage 1": time.time() - t0}
            say(f"stage 1 done ({time.time() - t_start:.0f} s)")
            apply_lora(model, targets=tuple(run_cfg.lora_targets.split(",")), r=run_cfg.lora_r,
                       alpha=run_cfg.lora_alpha, dropout=run_cfg.lora_dropout)
            params = [q for q in model.parameters() if q.requires_grad]
            optimizer = grpo.make_optimizer(params, gcfg)
            model.train()
            with Recorder(meter) as rec:
                t0 = time.time()
                record = grpo.grpo_step(model, processor, [(qa, True) for qa in per_rank], gcfg, optimizer, params, 0)
                step_seconds = time.time() - t0
            results["seconds"] = {**results.get("seconds", {}), **rec.seconds}
            results.update(record=record, tokens=rec.tokens, step_seconds=step_seconds,
                           prompt_len=rec.prompt_len, new_tokens=rec.new_tokens)
    except (TimeoutError, torch.OutOfMemoryError) as e:
        say(f"stopped: {type(e).__name__}: {e}")
    if hasattr(signal, "SIGALRM"):
        signal.alarm(0)

    # the estimate for the shapes the run realised (the assumed ones when it stopped before a rollout)
    P = results.get("prompt_len") or memory.default_prompt_tokens(pre, (args.portrait, args.portrait))
    T = results.get("new_tokens") or args.max_new_tokens
    n = memory.parameter_count(cfg)
    flags.prompt_tokens = P
    estimates = {"stage 1": memory.stage1(cfg, pre, flags, n, P), "rollout": memory.rollout(cfg, pre, flags, n, P),
                 "old / reference log-probs": memory.logprob_passes(cfg, flags, n, P, T),
                 "update": memory.update(cfg, flags, n, P, T)}
    say(f"{'phase':28s} {'measured peak GiB':>18s} {'dry-run estimate GiB':>21s} {'seconds':>8s} "
        f"{'tokens/s':>9s}")
    for name, est in estimates.items():
        measured = meter.peaks.get(name)
        seconds = results.get("seconds", {}).get(name)
        tokens = results.get("tokens", {}).get(name)
        say(f"{name:28s} {'-' if measured is None else f'{measured / memory.GiB:.2f}':>18s} "
            f"{est.total / memory.GiB:21.2f} {'-' if seconds is None else f'{seconds:.1f}':>8s} "
            f"{'-' if not (seconds and tokens) else f'{tokens / seconds:.0f}':>9s}")
    if "record" in results:
        say(f"GRPO step: {results['step_seconds']:.1f} s, mean response {results['record']['response_len']:.0f} "
            f"tokens, {results['record']['optimizer_steps']} optimiser steps")
    rows = max(1, flags.micro_batch_tokens // (P + T)) if flags.micro_batch_tokens else args.mini_batch_size
    say(f"SDPA kernel for {rows} padded rows x {P + T} tokens: {sdpa_kernels(cfg, rows, P + T, device, dtype)}")
    if world > 1:
        torch.distributed.destroy_process_group()
    return {"peaks": meter.peaks, "estimates": {k: v.total for k, v in estimates.items()}, **results}


if __name__ == "__main__":
    main()
