"""A Qwen3-VL-2B-shaped model on this CPU: measured peak memory of every phase beside the --dry-run estimate.

    python examples/benchmark_2b_cpu.py [--config examples/configs/qwen3vl_2b.json] [--prompts 2] [--group-size 2]
                                        [--max-new-tokens 32] [--portrait 256] [--threads 2]

Run by hand, not in CI (12 to 40 minutes on 2 shared CPU cores, 8.5 GiB of RAM). The model is built from the config
alone, in bf16, with random weights (meta device, then `to_empty` and a seeded normal fill: no download); the
tokenizer is the default model's (its few thousand ids are all the prompts use; the special-token ids of the config
are remapped to it), the images are the synthetic world's portraits resized to --portrait pixels and read with
Qwen3-VL's preprocessor (examples/configs/preprocessor_config.json: a 256 x 256 portrait is 64 image tokens).
`memory.measure_phases` runs evaluation, stage 1 and one GRPO step (rollout of --prompts x --group-size, reference
log-probs, update) under a `memory.PeakMeter` (torch.profiler's allocation events); each phase's peak is printed
beside `memory`'s estimate for the same shapes, with the process's peak RSS (getrusage) at the end.
The settings are today's code's: one rollout call, unchunked log-probs, no checkpointing, no micro-batches.
"""

import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from asru_min import memory  # noqa: E402
from asru_min.model import Qwen3VL, Qwen3VLConfig  # noqa: E402
from asru_min.processor import ImageProcessorConfig, Processor  # noqa: E402
from asru_min.world import load_world  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def random_model(cfg: Qwen3VLConfig, dtype: torch.dtype, seed: int = 0) -> Qwen3VL:
    """The model on the meta device, materialised empty on the CPU in `dtype`, then filled: N(0, 0.02) matrices,
    norm weights 1, biases 0 (no float32 copy, no per-layer init cost)."""
    with torch.device("meta"):
        model = Qwen3VL(cfg)
    model = model.to_empty(device="cpu").to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02, generator=gen)
            else:
                p.fill_(1.0 if "norm" in name else 0.0)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    return model


def config_for_tokenizer(path: str, processor: Processor) -> Qwen3VLConfig:
    """config.json with its special-token ids replaced by the tokenizer's (shapes unchanged)."""
    with open(path) as fh:
        d = json.load(fh)
    d.update(image_token_id=processor.image_token_id, video_token_id=processor.video_token_id,
             vision_start_token_id=processor.vision_start_token_id, vision_end_token_id=processor.vision_end_token_id)
    d["text_config"]["eos_token_id"] = processor.eos_token_ids
    return Qwen3VLConfig.from_dict(d)


def portrait_qas(qas: list, size: int) -> list:
    import dataclasses

    return [dataclasses.replace(qa, image=qa.image.resize((size, size))) for qa in qas if qa.image is not None]


def setup(args) -> tuple:
    """(image processor config, processor, model config, forget QA, retain QA) of a 2B-shaped check: the default
    model's tokenizer with --preprocessor's image settings, --config's shapes, the world's generation questions
    with --portrait-sized portraits."""
    tok = Processor.from_pretrained(args.tokenizer_model).tokenizer
    with open(args.preprocessor) as fh:
        pre = ImageProcessorConfig.from_dict(json.load(fh))
    processor = Processor(tok, image_config=pre)
    cfg = config_for_tokenizer(args.config, processor)
    splits, _ = load_world(None, 10, 100, 0)
    forget = portrait_qas([qa for qa in splits["forget"] if qa.kind == "gen"], args.portrait)
    retain = portrait_qas([qa for qa in splits["retain"] if qa.kind == "gen"], args.portrait)
    return pre, processor, cfg, forget, retain


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(HERE, "configs", "qwen3vl_2b.json"))
    p.add_argument("--preprocessor", default=os.path.join(HERE, "configs", "preprocessor_config.json"))
    p.add_argument("--tokenizer-model", default="weights/", help="folder whose tokenizer.json is used")
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--group-size", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--portrait", type=int, default=256, help="portrait side in pixels")
    p.add_argument("--layer", type=int, default=17, help="stage 1's layer (clamped to the model's depth)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    pre, processor, cfg, forget, retain = setup(args)
    f = memory.Flags(device="cpu", dtype=args.dtype, eval_batch_size=args.prompts,
                     eval_max_new_tokens=args.max_new_tokens, steer_batch_size=2, group_size=args.group_size,
                     max_new_tokens=args.max_new_tokens, prompts_per_step=args.prompts, mini_batch_size=0,
                     rollout_batch=0, micro_batch_tokens=0, logprob_chunk=0, grad_checkpoint="off",
                     portrait=(args.portrait, args.portrait))
    layer = min(args.layer, cfg.text.num_hidden_layers - 1)
    print(f"{memory.parameter_count(cfg) / 1e9:.3f} B parameters, {args.dtype}, {args.threads} threads; "
          f"{args.prompts} prompts x {args.group_size} samples, {args.max_new_tokens} new tokens, "
          f"{args.portrait}x{args.portrait} portraits ({memory.image_tokens(pre, (args.portrait,) * 2)[1]} image "
          f"tokens); stage 1 at layer {layer}", flush=True)
    t0 = time.time()
    res = memory.measure_phases(lambda: random_model(cfg, getattr(torch, args.dtype)), processor, forget, retain, f,
                                layer)
    P, T = res["prompt_tokens"], res["new_tokens"]
    f.prompt_tokens = P
    n = memory.parameter_count(cfg)
    estimates = {"evaluation": memory.evaluation(cfg, pre, f, n, P), "stage 1": memory.stage1(cfg, pre, f, n, P),
                 "rollout": memory.rollout(cfg, pre, f, n, P),
                 "old / reference log-probs": memory.logprob_passes(cfg, f, n, P, T),
                 "update": memory.update(cfg, f, n, P, T)}
    print(f"prompt {P} tokens, responses {T} tokens; {time.time() - t0:.0f} s in all")
    print(f"{'phase':28s} {'measured GiB':>12s} {'estimate GiB':>12s} {'ratio':>6s} {'seconds':>8s}")
    for name, est in estimates.items():
        measured = res["peaks"][name]
        print(f"{name:28s} {measured / memory.GiB:12.2f} {est.total / memory.GiB:12.2f} "
              f"{est.total / measured:6.2f} {res['seconds'][name]:8.1f}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(f"process peak RSS (getrusage): {rss / memory.GiB:.2f} GiB (Python, tokenizer, world data and the "
          "allocator's cache included)")
    return {"peaks": res["peaks"], "estimates": {k: v.total for k, v in estimates.items()}, "rss": rss}


if __name__ == "__main__":
    main()
