"""What the GRPO update's memory settings save at Qwen3-VL-2B widths, measured on the CPU on one or two layers:

    python examples/update_memory.py [--tokens 1024]

1. Decoder layer (hidden 2048, MLP 6144, 16 query / 8 KV heads of 128, bf16, LoRA r=16 on its seven maps): bytes
   autograd keeps for backward per token, plain and with --grad-checkpoint (saved-tensor hooks, each storage
   counted once, parameters excluded; one layer = the difference between a 2- and a 1-layer decoder). The CPU's
   SDPA keeps O(L) per token; a kernel that keeps the (heads, L, L) scores adds to the plain figure.
2. Log-prob head (lm_head 2048 -> 151,936, bf16): peak resident memory of `optim.token_logprobs` over --tokens
   target tokens, in units of one float32 (tokens, V) tensor: forward + backward whole and in chunks of --chunk,
   forward alone (no grad) whole. Each case runs in a fresh process and reads its maximum RSS, which cannot see a
   peak below one reached before (the no-grad chunked pass is one of those: it is bounded by the chunked pass
   with backward).
Then the figures for the paper's update: a mini-batch of 16 responses of 2,048 tokens after ~300 prompt tokens.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from asru_min.lora import apply_lora  # noqa: E402
from asru_min.optim import gradient_checkpointing, token_logprobs  # noqa: E402
from asru_min.text import TextConfig, TextModel  # noqa: E402

HIDDEN, LAYERS, VOCAB = 2048, 28, 151936  # Qwen3-VL-2B
GIB = 2**30


def saved_bytes_per_token(layers: int, checkpoint: bool, tokens: int = 256) -> float:
    """Bytes autograd saves for backward per token in a `layers`-layer 2B-wide decoder forward."""
    cfg = TextConfig(vocab_size=16, hidden_size=HIDDEN, intermediate_size=6144, num_hidden_layers=layers,
                     num_attention_heads=16, num_key_value_heads=8, head_dim=128)
    holder = torch.nn.Module()  # apply_lora looks for model.language_model.layers.*
    holder.model = torch.nn.Module()
    holder.model.language_model = TextModel(cfg).to(torch.bfloat16)
    apply_lora(holder, r=16, alpha=16, dropout=0.0)
    params = {p.untyped_storage().data_ptr() for p in holder.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    h = torch.randn(1, tokens, HIDDEN, dtype=torch.bfloat16)
    positions = torch.arange(tokens)[None]
    with gradient_checkpointing(holder, checkpoint), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        holder.model.language_model(h, positions)
    return sum(saved.values()) / tokens


class HeadOnly(torch.nn.Module):
    """Hidden states as a trainable input, then a 2B-sized lm_head: token_logprobs' head part alone."""

    def __init__(self, tokens: int):
        super().__init__()
        self.lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False, dtype=torch.bfloat16).requires_grad_(False)
        self.h = torch.nn.Parameter(torch.randn(1, tokens + 1, HIDDEN, dtype=torch.bfloat16))

    def forward(self, input_ids, logits_to_keep=0, return_hidden=False, **unused):
        h = self.h[:, -logits_to_keep:] * 1.0
        return h if return_hidden else self.lm_head(h)


def head_peak(tokens: int, chunk: int, grad: bool, out) -> None:
    """(Child process) peak RSS above the warmed-up baseline, in float32 (tokens, V) copies."""
    torch.set_num_threads(1)
    model = HeadOnly(tokens)
    ids = torch.randint(0, VOCAB, (1, tokens + 1))
    target = torch.ones_like(ids, dtype=torch.bool)
    target[0, 0] = False
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def run(chunk_tokens):
        with torch.set_grad_enabled(grad):
            logp = token_logprobs(model, batch, target, 1.5, chunk_tokens=chunk_tokens)
        if grad:
            logp.sum().backward()

    run(4)  # warm-up: everything but the (tokens, V) tensors is allocated once
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(chunk)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.put((peak - base) * 1024 / (tokens * VOCAB * 4))


def measure_head(tokens: int, chunk: int, grad: bool) -> float:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=head_peak, args=(tokens, chunk, grad, out))
    child.start()
    value = out.get()
    child.join()
    return value


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=1024, help="target tokens of the log-prob measurement")
    p.add_argument("--chunk", type=int, default=256, help="chunk of the log-prob measurement")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    plain = saved_bytes_per_token(2, False) - saved_bytes_per_token(1, False)
    ckpt = saved_bytes_per_token(2, True) - saved_bytes_per_token(1, True)
    print(f"decoder layer, saved for backward per token: plain {plain / 1024:.1f} KiB, checkpointed "
          f"{ckpt / 1024:.1f} KiB (its input)")
    copies = {(c, g): measure_head(args.tokens, c, g) for c, g in ((0, True), (args.chunk, True), (0, False))}
    share = args.chunk / args.tokens
    print(f"log-prob head peak over {args.tokens} tokens, in float32 (tokens, V) copies: "
          f"with backward {copies[0, True]:.2f} whole, {copies[args.chunk, True] / share:.2f} per chunk of "
          f"{args.chunk}; no grad {copies[0, False]:.2f} whole")

    # The paper's update at 2B: 16 responses x (300 + 2048) tokens; 2048 scored tokens per response.
    rows, length, scored = 16, 2348, 2048
    micro_rows = max(1, 16384 // length)  # --micro-batch-tokens 16384
    copy = VOCAB * 4 / GIB  # GiB per token of one float32 logits row
    print(f"\nQwen3-VL-2B, paper update (mini-batch {rows} x {length} tokens, {LAYERS} layers), estimates:")
    print(f"  decoder activations, mini-batch in one piece: plain {rows * length * plain * LAYERS / GIB:.1f} GiB, "
          f"checkpointed {rows * length * (ckpt * LAYERS + plain) / GIB:.1f} GiB")
    print(f"  decoder activations, micro-batches of {micro_rows} rows: plain "
          f"{micro_rows * length * plain * LAYERS / GIB:.1f} GiB, checkpointed "
          f"{micro_rows * length * (ckpt * LAYERS + plain) / GIB:.1f} GiB")
    print(f"  log-prob head with backward: whole mini-batch {copies[0, True] * rows * scored * copy:.1f} GiB, "
          f"one micro-batch {copies[0, True] * micro_rows * scored * copy:.1f} GiB, chunk 4096 "
          f"{copies[args.chunk, True] / share * 4096 * copy:.1f} GiB")
    print(f"  log-prob head, old / reference pass (no grad): whole {copies[0, False] * rows * scored * copy:.1f} "
          f"GiB, chunk 4096 at most {copies[args.chunk, True] / share * 4096 * copy:.1f} GiB")


if __name__ == "__main__":
    main()
