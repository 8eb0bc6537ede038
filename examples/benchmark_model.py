"""CPU benchmark of asru_min's Qwen3-VL on one small random config.

    python examples/benchmark_model.py [--threads N] [--repeats R]

(1) one batched forward of 8 prompts with one image each (vision + text, full logits);
(2) 64 new tokens for 8 sampled continuations of one image prompt (one prefill, cache copied 8 ways).
If transformers is importable, the same weights are saved with `save_pretrained`, loaded into the reference
`Qwen3VLForConditionalGeneration` (attn_implementation="sdpa") and timed on the same inputs in the same run:
forward, and `generate(num_return_sequences=8, do_sample=True)`. Times are the best of R repeats.
"""

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout
from asru_min.model import Qwen3VL, Qwen3VLConfig
from asru_min.text import TextConfig
from asru_min.vision import VisionConfig

IMG, VS, VE = 2040, 2038, 2039


def small_config() -> Qwen3VLConfig:
    """The shape of the project's default model (asru_min/world/pretrain.py): text 128 hidden, 4 layers, 4/2 heads,
    vocab 2048; vision 64 hidden, depth 3, 2 heads; 96x96 images = 6x6 patches = 9 LLM tokens."""
    return Qwen3VLConfig(
        text=TextConfig(vocab_size=2048, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                        rope_theta=10000.0, mrope_section=[6, 5, 5], eos_token_id=[2043], bos_token_id=2042),
        vision=VisionConfig(depth=3, hidden_size=64, intermediate_size=256, num_heads=2, out_hidden_size=128,
                            num_position_embeddings=36, deepstack_visual_indexes=[0, 1]),
        image_token_id=IMG, video_token_id=2041, vision_start_token_id=VS, vision_end_token_id=VE,
        tie_word_embeddings=True)


def best_times(fns: dict, repeats: int) -> dict:
    """Best time of each function over `repeats` rounds, as (process CPU seconds, wall seconds). The functions
    alternate inside a round, so load on a shared machine hits them alike; CPU time (single-threaded runs)
    also leaves out the time the process spent waiting for a core."""
    for fn in fns.values():
        fn()  # warm-up
    best = {k: (float("inf"), float("inf")) for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            c, w = time.process_time(), time.perf_counter()
            fn()
            c, w = time.process_time() - c, time.perf_counter() - w
            best[k] = (min(best[k][0], c), min(best[k][1], w))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1, as pretrain.py uses on the shared "
                    "2-core machine; 0 = torch's default)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Qwen3VL(small_config()).eval()
    with torch.no_grad():  # small random weights everywhere (norms near 1) so activations stay sane
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.02 * torch.randn_like(p))

    # 8 chat-like prompts, one 96x96-pixel image each (6x6 patches -> 9 image tokens), 30..44 tokens, left-padded
    grid = torch.tensor([[1, 6, 6]] * 8)
    pix = torch.randn(8 * 36, 3 * 2 * 16 * 16)
    rows = [[2044, 10 + i, VS] + [IMG] * 9 + [VE] + list(range(100 + i, 100 + i + 16 + 2 * i)) + [2044, 11]
            for i in range(8)]
    L = max(map(len, rows))
    ids = torch.tensor([[0] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, params {model.num_parameters() / 1e6:.2f} M, "
          f"batch 8 x {L} tokens, 8 images of 6x6 patches")

    ids1, mask1, pix1, grid1 = ids[-1:], mask[-1:], pix[-36:], grid[-1:]
    fns = {
        "fwd": torch.no_grad()(lambda: model(ids, mask, pix, grid)),
        "gen": lambda: model.generate(ids1, mask1, pix1, grid1, max_new_tokens=64, temperature=1.5, top_p=0.95, num_samples=8,
                                      generator=torch.Generator().manual_seed(0), eos_token_ids=[]),
    }
    try:
        from transformers import Qwen3VLForConditionalGeneration
    except ImportError:
        Qwen3VLForConditionalGeneration = None
        print("transformers not importable: no reference timing")
    attn = "sdpa"
    if Qwen3VLForConditionalGeneration is not None:
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            ref = Qwen3VLForConditionalGeneration.from_pretrained(d, attn_implementation=attn,
                                                                  dtype=torch.float32).eval()
        mm = (ids == IMG).int()
        ref_kw = dict(input_ids=ids, attention_mask=mask, pixel_values=pix, image_grid_thw=grid, mm_token_type_ids=mm)
        with torch.no_grad():
            delta = (model(ids, mask, pix, grid) - ref(**ref_kw).logits)[mask.bool()].abs().max().item()
        print(f"reference: transformers Qwen3VLForConditionalGeneration, attn_implementation={attn!r}, fp32; "
              f"max |delta logits| on real tokens {delta:.2e}")
        fns["ref_fwd"] = torch.no_grad()(lambda: ref(**ref_kw))
        fns["ref_gen"] = lambda: ref.generate(
            input_ids=ids1, attention_mask=mask1, pixel_values=pix1, image_grid_thw=grid1, mm_token_type_ids=mm[-1:],
            do_sample=True, temperature=1.5, top_p=0.95, top_k=0, num_return_sequences=8, max_new_tokens=64,
            min_new_tokens=64, eos_token_id=None, pad_token_id=0)
    t = best_times(fns, args.repeats)
    print("                                         CPU time   (wall)")
    ms = lambda k: f"{t[k][0] * 1e3:8.1f} ms ({t[k][1] * 1e3:6.1f})"
    print(f"asru_min  forward (8 prompts):          {ms('fwd')}")
    print(f"asru_min  generate 8 x 64 tokens:       {ms('gen')}  = {512 / t['gen'][0]:7.1f} tokens/s")
    if "ref_fwd" in t:
        print(f"reference forward (8 prompts):          {ms('ref_fwd')}")
        print(f"reference generate 8 x 64 tokens:       {ms('ref_gen')}  = {512 / t['ref_gen'][0]:7.1f} tokens/s")
        for i, what in enumerate(("CPU time", "wall time")):
            print(f"{what:9s}: forward asru_min / reference = {t['fwd'][i] / t['ref_fwd'][i]:.2f}x (target <= 1.0x); "
                  f"generate tokens/s asru_min / reference = {t['ref_gen'][i] / t['gen'][i]:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
