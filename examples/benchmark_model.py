"""CPU benchmark of asru_min's Qwen3-VL against the reference implementation, on two random configs.

    python examples/benchmark_model.py [--threads N] [--repeats R] [--shapes default,large]

Shapes: "default" is the project's default model (text 128 hidden, 6 layers, 4/2 heads, vocab 2048; vision 64
hidden, depth 3; 96x96 images = 9 image tokens); "large" is a ~20 M parameter one (text 384 hidden, 9 layers,
vocab 4096). Per shape, on the same weights saved with `save_pretrained` and loaded into transformers'
`Qwen3VLForConditionalGeneration` (attn_implementation="sdpa", fp32) in the same run:

  forward     one batched forward of 8 left-padded prompts with one image each (vision + text, full logits)
  generate    8 sampled continuations x 64 tokens of one image prompt (temperature 1.5, top_p 0.95)
  train step  forward + backward + AdamW step (all parameters) on 8 prompt+answer rows, loss on the answers

Times are the median of R rounds (the functions alternate inside a round, so load on a shared machine hits
them alike), as process CPU time (single-threaded runs: leaves out time spent waiting for a core) and wall
time. Ratios are reference time / asru_min time (> 1: asru_min is faster).
Before timing, greedy generation must give token-for-token the reference's output on the 8 image prompts and
on a text batch where the reference emits an image/video placeholder token (found by a seeded search).
Needs transformers (pip install transformers); without it only asru_min's times are printed.
"""

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout
from asru_min.model import Qwen3VL, Qwen3VLConfig
from asru_min.text import TextConfig
from asru_min.vision import VisionConfig

VS, VE, IMG, VID, EOS, BOS, USER = 2038, 2039, 2040, 2041, 2043, 2042, 2044  # special ids (below vocab 2048)
N_GEN = 64  # new tokens per generate sample


def small_config() -> Qwen3VLConfig:
    """The shape of the project's default model (asru_min/world/pretrain.py): text 128 hidden, 6 layers, 4/2 heads,
    vocab 2048; vision 64 hidden, depth 3, 2 heads; 96x96 images = 6x6 patches = 9 LLM tokens."""
    return Qwen3VLConfig(
        text=TextConfig(vocab_size=2048, hidden_size=128, intermediate_size=512, num_hidden_layers=6,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                        rope_theta=10000.0, mrope_section=[6, 5, 5], eos_token_id=[EOS], bos_token_id=BOS),
        vision=VisionConfig(depth=3, hidden_size=64, intermediate_size=256, num_heads=2, out_hidden_size=128,
                            num_position_embeddings=36, deepstack_visual_indexes=[0, 1]),
        image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS, vision_end_token_id=VE,
        tie_word_embeddings=True)


def large_config() -> Qwen3VLConfig:
    """~20 M parameters: text 384 hidden, 9 layers, 6/2 heads of 64, vocab 4096; vision 192 hidden, depth 6."""
    return Qwen3VLConfig(
        text=TextConfig(vocab_size=4096, hidden_size=384, intermediate_size=1024, num_hidden_layers=9,
                        num_attention_heads=6, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
                        rope_theta=10000.0, mrope_section=[12, 10, 10], eos_token_id=[EOS], bos_token_id=BOS),
        vision=VisionConfig(depth=6, hidden_size=192, intermediate_size=768, num_heads=3, out_hidden_size=384,
                            num_position_embeddings=36, deepstack_visual_indexes=[1, 3]),
        image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS, vision_end_token_id=VE,
        tie_word_embeddings=True)


def random_model(cfg: Qwen3VLConfig) -> Qwen3VL:
    torch.manual_seed(0)
    model = Qwen3VL(cfg).eval()
    with torch.no_grad():  # small random weights everywhere (norms near 1) so activations stay sane
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.02 * torch.randn_like(p))
    return model


def image_batch():
    """8 chat-like prompts, one 96x96-pixel image each (6x6 patches -> 9 image tokens), 30..44 tokens, left-padded."""
    grid = torch.tensor([[1, 6, 6]] * 8)
    pix = torch.randn(8 * 36, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(1))
    rows = [[USER, 10 + i, VS] + [IMG] * 9 + [VE] + list(range(100 + i, 100 + i + 16 + 2 * i)) + [USER, 11]
            for i in range(8)]
    L = max(map(len, rows))
    ids = torch.tensor([[0] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, pix, grid


def placeholder_batch(model: Qwen3VL, tries: int = 400):
    """A seeded search for 8 left-padded text prompts on which greedy decoding (nothing suppressed) emits an
    image or video placeholder token: the case `generate` used to ban by default."""
    for seed in range(tries):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(4, 12, (8,), generator=g).tolist()
        rows = [torch.randint(12, 2000, (n,), generator=g).tolist() for n in lengths]
        L = max(lengths)
        ids = torch.tensor([[0] * (L - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
        tokens, _ = model.generate(ids, mask, max_new_tokens=32)
        if torch.isin(tokens, torch.tensor([IMG, VID])).any():
            return seed, ids, mask
    return None, None, None


def ref_greedy(ref, ids, mask, **images):
    out = ref.generate(input_ids=ids, attention_mask=mask, **images, do_sample=False, max_new_tokens=32,
                       pad_token_id=0, eos_token_id=[EOS])
    return out[:, ids.shape[1]:]


def check_greedy(model, ref, ids, mask, pix, grid) -> None:
    """Greedy tokens (real EOS, nothing suppressed) equal the reference's, on the image prompts and on a batch
    where the reference emits a placeholder token."""
    ours, _ = model.generate(ids, mask, pix, grid, max_new_tokens=32)
    theirs = ref_greedy(ref, ids, mask, pixel_values=pix, image_grid_thw=grid, mm_token_type_ids=(ids == IMG).int())
    same = ours.shape == theirs.shape and torch.equal(ours, theirs)
    print(f"  greedy, 8 image prompts x 32 tokens: identical to the reference: {same}")
    assert same, (ours, theirs)
    seed, tids, tmask = placeholder_batch(model)
    if seed is None:
        print("  no placeholder case found in the search")
        return
    ours, _ = model.generate(tids, tmask, max_new_tokens=32)
    theirs = ref_greedy(ref, tids, tmask)
    same = ours.shape == theirs.shape and torch.equal(ours, theirs)
    hits = [(int(r), int(c), int(theirs[r, c])) for r, c in torch.isin(theirs, torch.tensor([IMG, VID])).nonzero()]
    print(f"  greedy, text batch of search seed {seed}: the reference emits placeholders at (row, step, id) "
          f"{hits[:4]}{' ...' if len(hits) > 4 else ''}; identical to the reference: {same}")
    assert same, (ours, theirs)


def train_step_fn(model, ids, mask, pix, grid, reference: bool):
    """forward + backward + AdamW step on prompt + 8 answer tokens per row; cross-entropy on the answers."""
    answers = torch.arange(8 * 8).view(8, 8) % 1000 + 200
    full = torch.cat([ids, answers], 1)
    full_mask = torch.cat([mask, torch.ones_like(answers)], 1)
    P = ids.shape[1]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    kw = dict(input_ids=full, attention_mask=full_mask, pixel_values=pix, image_grid_thw=grid)
    if reference:
        kw["mm_token_type_ids"] = (full == IMG).int()

    def step():
        logits = model(**kw).logits if reference else model(**kw)
        loss = torch.nn.functional.cross_entropy(logits[:, P - 1:-1].flatten(0, 1), answers.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def median_times(fns: dict, repeats: int) -> dict:
    """Median (process CPU seconds, wall seconds) of each function over `repeats` alternating rounds."""
    for fn in fns.values():
        fn()  # warm-up
    runs = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            c, w = time.process_time(), time.perf_counter()
            fn()
            runs[k].append((time.process_time() - c, time.perf_counter() - w))
    return {k: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v)) for k, v in runs.items()}


def bench_shape(name: str, cfg: Qwen3VLConfig, repeats: int, ref_cls) -> None:
    model = random_model(cfg)
    ids, mask, pix, grid = image_batch()
    print(f"\n[{name}] params {model.num_parameters() / 1e6:.2f} M, vocab {cfg.text.vocab_size}, batch 8 x "
          f"{ids.shape[1]} tokens, 8 images of 6x6 patches")
    ids1, mask1, pix1, grid1 = ids[-1:], mask[-1:], pix[-36:], grid[-1:]
    gen_kw = dict(max_new_tokens=N_GEN, temperature=1.5, top_p=0.95, num_samples=8, eos_token_ids=[])
    fns = {"forward": torch.no_grad()(lambda: model(ids, mask, pix, grid)),
           "generate": lambda: model.generate(ids1, mask1, pix1, grid1, generator=torch.Generator().manual_seed(0),
                                              **gen_kw)}
    trained = copy.deepcopy(model)  # the train step changes the weights; generation keeps the loaded ones
    fns["train step"] = train_step_fn(trained, ids, mask, pix, grid, reference=False)
    if ref_cls is not None:
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            ref = ref_cls.from_pretrained(d, attn_implementation="sdpa", dtype=torch.float32).eval()
            ref_trained = ref_cls.from_pretrained(d, attn_implementation="sdpa", dtype=torch.float32).eval()
        mm = (ids == IMG).int()
        ref_kw = dict(input_ids=ids, attention_mask=mask, pixel_values=pix, image_grid_thw=grid, mm_token_type_ids=mm)
        with torch.no_grad():
            delta = (model(ids, mask, pix, grid) - ref(**ref_kw).logits)[mask.bool()].abs().max().item()
        print(f"  reference: transformers Qwen3VLForConditionalGeneration, sdpa, fp32; max |delta logits| {delta:.2e}")
        check_greedy(model, ref, ids, mask, pix, grid)
        fns["ref forward"] = torch.no_grad()(lambda: ref(**ref_kw))
        fns["ref generate"] = lambda: ref.generate(
            input_ids=ids1, attention_mask=mask1, pixel_values=pix1, image_grid_thw=grid1, mm_token_type_ids=mm[-1:],
            do_sample=True, temperature=1.5, top_p=0.95, top_k=0, num_return_sequences=8, max_new_tokens=N_GEN,
            min_new_tokens=N_GEN, pad_token_id=0)  # min_new_tokens: no EOS, like eos_token_ids=[]
        fns["ref train step"] = train_step_fn(ref_trained, ids, mask, pix, grid, reference=True)
    t = median_times(fns, repeats)
    print(f"  median of {repeats}                     CPU ms   (wall ms)")
    for k in ("forward", "generate", "train step"):
        for who in ("", "ref "):
            if who + k in t:
                c, w = t[who + k]
                extra = f"  {8 * N_GEN / c:7.0f} tokens/s" if k == "generate" else ""
                print(f"  {'reference' if who else 'asru_min':9s} {k:12s}        {c * 1e3:8.1f}  ({w * 1e3:8.1f}){extra}")
    if ref_cls is not None:
        for k, target in (("forward", 1.2), ("generate", 3.0), ("train step", 1.3)):
            r = [t["ref " + k][i] / t[k][i] for i in (0, 1)]
            print(f"  ratio {k:10s} reference / asru_min: {r[0]:5.2f}x CPU, {r[1]:5.2f}x wall (target >= {target}x)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1, as pretrain.py uses on the shared "
                    "2-core machine; 0 = torch's default)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--shapes", default="default,large")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from transformers import Qwen3VLForConditionalGeneration as ref_cls
        from transformers.utils import logging
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    except ImportError:
        ref_cls = None
        print("transformers not importable: no reference timing")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    shapes = {"default": small_config, "large": large_config}
    for name in args.shapes.split(","):
        bench_shape(name, shapes[name](), args.repeats, ref_cls)


if __name__ == "__main__":
    main()
