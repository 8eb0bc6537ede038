"""Peak memory of each phase of a run, estimated from config.json alone (`python -m asru_min.train --dry-run`).

No weights and no data are read: the parameters are counted on a meta-device model, the prompt length is assumed
(`--dry-run-prompt-tokens`, default one portrait plus a question, `default_prompt_tokens`). Every estimate is a sum
of named terms, in bytes, for one process:

    phase peak = resident state (weights, adapter, optimiser)  +  the phase's largest working set

Notation: b bytes per weight / activation element (2 in bf16), L decoder layers, D hidden size, I intermediate
size, nq / nkv heads of width d, V vocabulary, P prompt tokens, T new tokens, G samples per prompt, S = P + T.
What the numbers assume: rollouts in chunks of `rollout_batch` prompts x G rows
whose KV cache is allocated at S tokens and copied G ways; finished rows only shrink it; old / reference / update
passes in micro-batches of at most `micro_batch_tokens` rows x S tokens; float32 logits of at most
`logprob_chunk` tokens at once, recomputed in backward; gradient checkpointing keeps one (tokens, D) input per
decoder layer and recomputes one layer at a time in backward; under torchrun every process holds the whole model
and adapter and takes 1 / N of each step's prompts. Stage 1 and the evaluations run on one process.
Not counted: the CUDA context and allocator slack (torch.cuda.max_memory_allocated does not count them either;
allow ~1-2 GiB on a GPU), the tokenizer and data, and the host copy of W0 that stage 1 keeps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .model import Qwen3VL, Qwen3VLConfig
from .processor import ImageProcessorConfig, smart_resize

GiB = 1024**3
PORTRAIT_HW = (512, 512)  # assumed MLLMU-Bench portrait size (pixels); 256 image tokens under Qwen3-VL's processor
QUESTION_TOKENS = 40  # chat markup (system / user / assistant turns) + one question, Qwen tokenizer
STEER_ANSWER_TOKENS = 64  # answer tokens appended to a retain prompt in stage 1's retain loss
SAMPLING_COPIES = 5  # float32 (rows, V) tensors of one sampling step: logits / T, softmax, cdf, masks
LOGIT_BYTES = 16  # bytes per (token, vocabulary entry) while log-probs are computed and differentiated:
#                   lm_head output (b) + float32 logits / T (4, kept for backward) + exp / softmax grad (4 + 4)
# without backward: lm_head's output (b), its float32 copy (4, none when b = 4), the logits / T (4)


@dataclass
class Flags:
    """The settings the estimate reads (a subset of `train.TrainConfig`, same names)."""

    device: str = "cpu"
    dtype: str = "float32"
    processes: int = 1
    prompt_tokens: int = 0  # 0: `default_prompt_tokens`
    portrait: tuple = PORTRAIT_HW  # (height, width) of each prompt's one image, in pixels
    eval_batch_size: int = 32
    eval_max_new_tokens: int = 50
    base_model_separate: bool = False  # --base-model: a second model reads stage 1's positives
    steer_batch_size: int = 2
    lora_r: int = 16
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    group_size: int = 8
    max_new_tokens: int = 32
    prompts_per_step: int = 8
    mini_batch_size: int = 0
    kl_coef: float = 0.1
    rollout_batch: int = 8
    micro_batch_tokens: int = 16384
    grad_checkpoint: str = "auto"
    logprob_chunk: int = 4096

    @classmethod
    def from_train_config(cls, cfg, processes: int) -> "Flags":
        """The fields of a `train.TrainConfig` of the same names (a field it lacks keeps the default above)."""
        skip = {"processes", "prompt_tokens", "portrait", "base_model_separate"}
        values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)
                  if f.name not in skip and hasattr(cfg, f.name)}
        return cls(**values, processes=processes, prompt_tokens=cfg.dry_run_prompt_tokens,
                   base_model_separate=bool(cfg.base_model))

    @property
    def bytes(self) -> int:
        """Bytes per element of --dtype."""
        return torch.empty(0, dtype=getattr(torch, self.dtype)).element_size()

    @property
    def checkpointing(self) -> bool:
        return self.grad_checkpoint == "on" or (self.grad_checkpoint == "auto" and self.device.startswith("cuda"))


# --- shapes read from the config files


def image_tokens(pre: ImageProcessorConfig, hw: tuple[int, int] = PORTRAIT_HW) -> tuple[int, int]:
    """(vision patches, LLM placeholder tokens) of one image of hw pixels: smart_resize to multiples of p*m within
    [min_pixels, max_pixels], then (h'/p)(w'/p) patches, merged m x m into one token each."""
    h, w = smart_resize(*hw, pre.patch_size * pre.merge_size, pre.min_pixels, pre.max_pixels)
    patches = (h // pre.patch_size) * (w // pre.patch_size)
    return patches, patches // pre.merge_size**2


def default_prompt_tokens(pre: ImageProcessorConfig, hw: tuple[int, int] = PORTRAIT_HW) -> int:
    """One portrait + <|vision_start|> / <|vision_end|> + QUESTION_TOKENS of chat and question."""
    return image_tokens(pre, hw)[1] + 2 + QUESTION_TOKENS


def parameter_count(cfg: Qwen3VLConfig) -> int:
    """Unique parameters of the model (a tied head once), counted on the meta device: nothing is allocated."""
    with torch.device("meta"):
        return Qwen3VL(cfg).num_parameters()


def adapter_parameters(cfg: Qwen3VLConfig, r: int, targets: str) -> int:
    """LoRA A (r, in) + B (out, r) for every targeted linear map of every decoder layer."""
    t = cfg.text
    q, kv, D, I = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim, t.hidden_size, t.intermediate_size
    shapes = {"q_proj": (D, q), "k_proj": (D, kv), "v_proj": (D, kv), "o_proj": (q, D), "gate_proj": (D, I),
              "up_proj": (D, I), "down_proj": (I, D)}  # (in, out)
    return t.num_hidden_layers * sum(r * sum(shapes[n]) for n in targets.split(",") if n in shapes)


def kv_bytes_per_token(cfg: Qwen3VLConfig, b: int) -> int:
    """K and V of every layer: 2 L nkv d b."""
    t = cfg.text
    return 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * b


def fused_copy_bytes(cfg: Qwen3VLConfig, b: int) -> int:
    """The [Wq; Wk; Wv] and [Wgate; Wup] copies `generate` builds for the duration of a call
    (`generate.fused_projections`): L ((nq + 2 nkv) d D + 2 I D) b."""
    t = cfg.text
    per_layer = (t.num_attention_heads + 2 * t.num_key_value_heads) * t.head_dim * t.hidden_size \
        + 2 * t.intermediate_size * t.hidden_size
    return t.num_hidden_layers * per_layer * b


def layer_saved_bytes_per_token(cfg: Qwen3VLConfig, b: int, targets: str, seq_len: int, cuda: bool) -> int:
    """Bytes one decoder layer keeps for backward per token when the LoRA adapters on `targets` train (float32
    adapters when b < 4, as `lora.LoRALinear` makes them):

        2 D 4                    the two RMSNorms' float32 inputs (their statistics run in float32)
        n_in D a                 each adapter's copy of its input in the adapter dtype (a = 4), one per adapter in
                                 bf16 (x.to(float32) is a new tensor each time); shared (one per input) in float32
        (nq + nkv) d 4           q_norm / k_norm float32 inputs
        (2 nq + 2 nkv) d b       attention q, k, v, output (fused SDPA kernel); on CUDA 4 nq d b: a masked call
                                 gets K / V expanded to the query heads (`text.grouped_attention`)
        S b                      the attention mask row of the query (bool mask converted to the dtype), S keys
        3 I b                    SwiGLU: gate (SiLU input), SiLU(gate), up
    """
    t = cfg.text
    D, I, q, kv = t.hidden_size, t.intermediate_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    names = set(targets.split(","))
    adapter_inputs = {"q_proj": D, "k_proj": D, "v_proj": D, "gate_proj": D, "up_proj": D, "o_proj": q, "down_proj": I}
    if b < 4:
        lora = sum(adapter_inputs[n] for n in names if n in adapter_inputs) * 4
    else:  # float32 model: q/k/v share one input tensor, gate/up another
        lora = b * ((D if names & {"q_proj", "k_proj", "v_proj"} else 0) + (D if names & {"gate_proj", "up_proj"} else 0)
                    + (q if "o_proj" in names else 0) + (I if "down_proj" in names else 0))
    attention = (4 * q if cuda else 2 * q + 2 * kv) * b
    return 2 * D * 4 + lora + (q + kv) * 4 + attention + seq_len * b + 3 * I * b


def layer_working_bytes_per_token(cfg: Qwen3VLConfig, b: int) -> int:
    """Largest no-grad working set of one decoder layer per token: the MLP's gate, up, SiLU(gate) * up (3 I b)
    beside the residual stream, its float32 norm copy and the normed input ((2 b + 4) D)."""
    t = cfg.text
    return 3 * t.intermediate_size * b + (2 * b + 4) * t.hidden_size


def vision_working_bytes(cfg: Qwen3VLConfig, patches: int, b: int) -> int:
    """No-grad vision tower on `patches` patches: one block's working set (residual, norm, qkv, MLP hidden, in b;
    the 2-D RoPE of q, k in float32) = patches (6 Dv b + 2 Iv b + 4 Dv 4)."""
    v = cfg.vision
    return patches * (6 * v.hidden_size * b + 2 * v.intermediate_size * b + 4 * v.hidden_size * 4)


def image_feature_bytes(cfg: Qwen3VLConfig, tokens: int, b: int) -> int:
    """Merged image rows and DeepStack rows kept for reuse by every row of a group: tokens (1 + K) D b."""
    return tokens * (1 + len(cfg.vision.deepstack_visual_indexes)) * cfg.text.hidden_size * b


# --- phases


@dataclass
class Phase:
    name: str
    terms: dict  # name -> bytes

    @property
    def total(self) -> int:
        return sum(self.terms.values())


def resident_terms(cfg, f: Flags, n_params: int, stage2: bool) -> dict:
    """Weights (b per parameter); in stage 2 also the adapter and AdamW's two moments (float32 when b < 4; the
    adapter's gradient exists only inside the update, `update`)."""
    terms = {"weights": n_params * f.bytes}
    if stage2:
        a = adapter_bytes(cfg, f)
        terms.update({"LoRA adapter": a, "AdamW moments": 2 * a})
    return terms


def adapter_bytes(cfg, f: Flags) -> int:
    """The adapter's bytes: float32 on a bf16 / fp16 model (`lora.LoRALinear.from_linear`), else the model's."""
    return adapter_parameters(cfg, f.lora_r, f.lora_targets) * (4 if f.bytes < 4 else f.bytes)


def generation_terms(cfg, pre, f: Flags, prompts: int, G: int, prompt_len: int, new_tokens: int, fused: bool) -> dict:
    """One `generate` call on `prompts` prompts of one image each, G samples each (rows = prompts x G): the image
    features kept for every row, the fused projection copies, and the largest of its four moments, which follow
    one another:

        vision tower            one block's working set on all the images' patches
        prefill                 KV cache of the prompts at S = P + T tokens + one layer's working set
        G-way copy              the prompts' cache and its copy for `rows` rows (both exist while it is copied)
        decode                  the rows' cache + the sampling step's float32 (rows, V) tensors
    """
    b, S, rows = f.bytes, prompt_len + new_tokens, prompts * G
    patches, img_tokens = image_tokens(pre, f.portrait)
    kv_prompts, kv_rows = prompts * S * kv_bytes_per_token(cfg, b), rows * S * kv_bytes_per_token(cfg, b)
    moments = {"vision tower": {"vision tower working set": vision_working_bytes(cfg, prompts * patches, b)},
               "prefill": {"KV cache (prompts)": kv_prompts,
                           "prefill working set": prompts * prompt_len * layer_working_bytes_per_token(cfg, b)},
               "copy": {"KV cache (prompts + G-way copy)": kv_prompts + (kv_rows if rows != prompts else 0)},
               "decode": {"KV cache (rows)": kv_rows,
                          "sampling logits": SAMPLING_COPIES * rows * cfg.text.vocab_size * 4}}
    terms = dict(max(moments.values(), key=lambda m: sum(m.values())))
    terms["image features"] = image_feature_bytes(cfg, prompts * img_tokens, b)
    if fused:
        terms["fused q|k|v, gate|up copies"] = fused_copy_bytes(cfg, b)
    return terms


def prompts_per_process(f: Flags) -> int:
    return math.ceil(f.prompts_per_step / f.processes)


def stage1(cfg, pre, f: Flags, n_params: int, P: int, base_params: int | None = None) -> Phase:
    """The largest of stage 1's moments:

        direction   the positives' refusal filter (greedy generation of eval_batch_size prompts x 32 tokens) and
                    the direction's forwards, on the base model (a second weight copy with --base-model)
        steering forward / step: only layer L's down_proj W (D, I) trains, so nothing before layer L keeps
                    activations; resident are W0 (a copy of W), the float32 master of W (when b < 4) and its
                    AdamW moments; the forward adds `steer.frozen_activation`'s float32 W, W0 and W - W0 (only the
                    difference in float32), W's saved input a (B, S, I) and the float32 loss tensors; the step
                    adds the gradient (float32, + W's own in b) and AdamW's float32 temporaries (~ one W)."""
    b, t = f.bytes, cfg.text
    D, I = t.hidden_size, t.intermediate_size
    direction = resident_terms(cfg, f, n_params, stage2=False)
    if f.base_model_separate:
        direction["base model weights"] = (base_params or n_params) * b
    direction.update(generation_terms(cfg, pre, f, f.eval_batch_size, 1, P, 32, fused=True))
    W = D * I
    rows_tokens = f.steer_batch_size * (P + STEER_ANSWER_TOKENS)
    resident = resident_terms(cfg, f, n_params, stage2=False)
    resident.update({"W0 copy": W * b, "float32 master of W": W * 4 if b < 4 else 0, "AdamW moments of W": 2 * W * 4})
    forward = dict(resident, **{"float32 W, W0, W - W0": (3 if b < 4 else 1) * W * 4,
                                "saved input of W": rows_tokens * I * b,
                                "forward working set": rows_tokens * layer_working_bytes_per_token(cfg, b),
                                "loss tensors (float32)": 4 * rows_tokens * D * 4})
    step = dict(resident, **{"W gradient": W * 4 + (W * b if b < 4 else 0), "AdamW temporaries": W * 4})
    return max((Phase("stage 1", direction), Phase("stage 1", forward), Phase("stage 1", step)), key=lambda p: p.total)


def rollout(cfg, pre, f: Flags, n_params: int, P: int) -> Phase:
    """One generation chunk: rollout_batch prompts (all of a process's prompts when 0) x G rows; the fused copies
    only in float32 (an active adapter on bf16 weights is not folded, `generate._fusable`); plus the step's token
    records (input ids, masks: 3 int64 / bool tensors of rows x S)."""
    prompts = prompts_per_process(f)
    chunk = min(f.rollout_batch or prompts, prompts)
    terms = resident_terms(cfg, f, n_params, stage2=True)
    terms.update(generation_terms(cfg, pre, f, chunk, f.group_size, P, f.max_new_tokens, fused=f.bytes == 4))
    terms["rollout records"] = prompts * f.group_size * (P + f.max_new_tokens) * (8 + 8 + 1)
    return Phase("rollout", terms)


def micro_batch_rows(f: Flags, S: int) -> int:
    """Rows per forward / backward: micro_batch_tokens // S (at least 1); 0 = the whole mini-batch (a process's
    share of mini_batch_size responses, or of the step's)."""
    rows = prompts_per_process(f) * f.group_size
    mini = min(math.ceil(f.mini_batch_size / f.processes), rows) if f.mini_batch_size else rows
    return mini if f.micro_batch_tokens == 0 else max(1, min(mini, f.micro_batch_tokens // S))


def logit_tokens(f: Flags, rows: int, T: int) -> int:
    """(rows x positions) whose float32 logits exist at once: the response positions (T + 1 per row), at most
    logprob_chunk of them."""
    n = rows * (T + 1)
    return min(n, f.logprob_chunk) if f.logprob_chunk else n


def logprob_passes(cfg, f: Flags, n_params: int, P: int, T: int | None = None) -> Phase:
    """Old-policy and reference log-probs (no grad) of one micro-batch of rows x S tokens: the larger of one
    layer's working set (with the attention mask, S b per token) and the logits of logit_tokens positions (they
    follow one another)."""
    T = f.max_new_tokens if T is None else T
    S = P + T
    rows = micro_batch_rows(f, S)
    terms = resident_terms(cfg, f, n_params, stage2=True)
    layers = rows * S * layer_working_bytes_per_token(cfg, f.bytes) + rows * S * S * f.bytes  # + attention mask
    logits = logit_tokens(f, rows, T) * cfg.text.vocab_size * (f.bytes + (4 if f.bytes < 4 else 0) + 4)  # LOGIT_BYTES
    terms.update({"layer working set + attention mask" if layers > logits else "logits": max(layers, logits),
                  "rollout records": prompts_per_process(f) * f.group_size * S * (8 + 8 + 1 + 4 + 4)})
    return Phase("old / reference log-probs", terms)


def update(cfg, f: Flags, n_params: int, P: int, T: int | None = None) -> Phase:
    """The policy update of one micro-batch of rows x S tokens, forward and backward:
    without checkpointing every layer keeps `layer_saved_bytes_per_token`; with it every layer keeps its input
    (D b per token) and one layer is recomputed at a time; plus the logits of logit_tokens positions
    (LOGIT_BYTES each) and the backward's gradient of the residual stream (2 D b per token)."""
    T = f.max_new_tokens if T is None else T
    S = P + T
    t, b = cfg.text, f.bytes
    rows = micro_batch_rows(f, S)
    tokens = rows * S
    per_layer = layer_saved_bytes_per_token(cfg, b, f.lora_targets, S, f.device.startswith("cuda"))
    terms = resident_terms(cfg, f, n_params, stage2=True)
    terms["adapter gradient"] = adapter_bytes(cfg, f)
    if f.processes > 1:
        terms["DDP gradient buckets"] = adapter_bytes(cfg, f)
    if f.checkpointing:
        terms["checkpointed layer inputs"] = t.num_hidden_layers * tokens * t.hidden_size * b
        terms["one recomputed layer"] = tokens * per_layer
    else:
        terms["saved activations (all layers)"] = t.num_hidden_layers * tokens * per_layer
    terms.update({"logits": logit_tokens(f, rows, T) * t.vocab_size * LOGIT_BYTES,
                  "residual-stream gradients": 2 * tokens * t.hidden_size * b,
                  "rollout records": prompts_per_process(f) * f.group_size * S * (8 + 8 + 1 + 4 + 4)})
    # (rollout records here: ids, attention mask, response mask and the old / reference log-probs, per row and token)
    return Phase("update", terms)


def evaluation(cfg, pre, f: Flags, n_params: int, P: int) -> Phase:
    """Greedy answers of eval_batch_size prompts x eval_max_new_tokens (one row per prompt), with the fused
    copies (the vanilla model has no adapter) and the adapter (after stage 2)."""
    terms = resident_terms(cfg, f, n_params, stage2=False)
    terms["LoRA adapter"] = adapter_bytes(cfg, f)
    terms.update(generation_terms(cfg, pre, f, f.eval_batch_size, 1, P, f.eval_max_new_tokens, fused=True))
    return Phase("evaluation", terms)


def estimate(cfg: Qwen3VLConfig, pre: ImageProcessorConfig, f: Flags, base_params: int | None = None) -> list[Phase]:
    """Every phase of a run (stage 1, rollout, old / reference passes, update, evaluation) for one process."""
    n = parameter_count(cfg)
    P = f.prompt_tokens or default_prompt_tokens(pre, f.portrait)
    return [stage1(cfg, pre, f, n, P, base_params), rollout(cfg, pre, f, n, P), logprob_passes(cfg, f, n, P),
            update(cfg, f, n, P), evaluation(cfg, pre, f, n, P)]


def load_config(path: str) -> tuple[Qwen3VLConfig, ImageProcessorConfig]:
    """config.json and preprocessor_config.json (Qwen3-VL's defaults when absent) of a model folder, or a config
    file itself (e.g. examples/configs/qwen3vl_2b.json) with the preprocessor_config.json beside it."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    path = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--dry-run needs a model folder with config.json, or a config file: {path} not found")
    with open(path) as fh:
        cfg = Qwen3VLConfig.from_dict(json.load(fh))
    pre, pre_path = ImageProcessorConfig(), os.path.join(folder, "preprocessor_config.json")
    if os.path.isfile(pre_path):
        with open(pre_path) as fh:
            pre = ImageProcessorConfig.from_dict(json.load(fh))
    return cfg, pre


def report(cfg: Qwen3VLConfig, pre: ImageProcessorConfig, f: Flags, base_params: int | None = None) -> str:
    """The dry run's text: settings, one block per phase (terms >= 1 MiB), the peak on the last line."""
    phases = estimate(cfg, pre, f, base_params)
    P = f.prompt_tokens or default_prompt_tokens(pre, f.portrait)
    patches, img = image_tokens(pre, f.portrait)
    prompt = "--dry-run-prompt-tokens" if f.prompt_tokens else \
        f"a {f.portrait[0]}x{f.portrait[1]} portrait = {patches} patches -> {img} image tokens, + {P - img} text"
    lines = [f"dry run: {parameter_count(cfg) / 1e9:.3f} B parameters, {f.dtype} on {f.device}, "
             f"{f.processes} process(es); prompt {P} tokens ({prompt})",
             f"  G={f.group_size}, T={f.max_new_tokens}, {f.prompts_per_step} prompts / step "
             f"({prompts_per_process(f)} per process), rollout_batch={f.rollout_batch}, "
             f"micro_batch_tokens={f.micro_batch_tokens}, logprob_chunk={f.logprob_chunk}, "
             f"grad_checkpoint={'on' if f.checkpointing else 'off'}"]
    for ph in phases:
        lines.append(f"{ph.name}: {ph.total / GiB:.2f} GiB")
        lines += [f"    {name:34s} {v / GiB:8.2f} GiB" for name, v in ph.terms.items() if v >= 2**20]
    peak = max(phases, key=lambda p: p.total)
    lines.append(f"dry-run peak: {peak.total / GiB:.2f} GiB ({peak.name})")
    return "\n".join(lines)


# --- measuring what a phase really allocates (tests, examples/benchmark_2b_cpu.py, examples/gpu_check.py)


class PeakMeter:
    """Peak bytes allocated by torch during named phases: `with meter: ... with meter.phase("update"): ...`,
    then `meter.peaks` {phase: bytes}. On CUDA: torch.cuda.max_memory_allocated after a reset at each phase's
    start (everything resident counts). On the CPU, where torch has no such counter: torch.profiler's allocation
    events (profile_memory), summed in time order from the moment the meter starts, so only tensors allocated
    after that moment count: start it before the model is built."""

    def __init__(self, device: str = "cpu"):
        self.cuda = str(device).startswith("cuda")
        self.peaks: dict[str, int] = {}
        self.starts: dict[str, int] = {}  # bytes allocated when the phase began
        self._names: list[str] = []

    def __enter__(self) -> "PeakMeter":
        if not self.cuda:
            self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            return
        self._prof.__exit__(*exc)
        events = self._prof.profiler.kineto_results.events()
        windows = sorted((e.start_ns(), e.end_ns(), e.name()[len("phase:"):]) for e in events
                         if e.name().startswith("phase:") and e.name()[len("phase:"):] in self._names)
        allocated, timeline = 0, []
        for e in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
            allocated += e.nbytes()
            timeline.append((e.start_ns(), allocated))
        for lo, hi, name in windows:  # a phase entered several times: its highest peak, its first start
            before = [a for t, a in timeline if t < lo]
            inside = [a for t, a in timeline if lo <= t <= hi]
            self.starts.setdefault(name, (before[-1:] or [0])[0])
            self.peaks[name] = max(inside + before[-1:] + [self.peaks.get(name, 0)])

    def phase(self, name: str):
        self._names.append(name)
        return self._cuda_phase(name) if self.cuda else torch.profiler.record_function(f"phase:{name}")

    @contextmanager
    def _cuda_phase(self, name: str):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.starts.setdefault(name, torch.cuda.memory_allocated())
        try:
            yield
        finally:
            torch.cuda.synchronize()
            self.peaks[name] = max(self.peaks.get(name, 0), torch.cuda.max_memory_allocated())


def measure_phases(build_model, processor, forget_qas: list, retain_qas: list, f: Flags, layer: int,
                   meter: PeakMeter | None = None, seed: int = 0) -> dict:
    """Run every phase the estimate covers once, with the settings in `f`, under a `PeakMeter`: the model is built
    (`build_model()`) inside it; evaluation (greedy answers of eval_batch_size forget prompts), stage 1 (refusal
    filter, direction and one epoch of steering on steer_batch_size forget / retain QA), then LoRA and one GRPO
    step split as `grpo.grpo_step` runs it: rollout of prompts_per_step forget prompts, the reference (and, with
    mini-batches, old-policy) log-probs, one update. Returns {"peaks": {phase: bytes}, "prompt_tokens": P,
    "new_tokens": T (the longest response), "seconds": {phase: s}} (P, T as the rollout realised them)."""
    import time

    from .grpo import GRPOConfig, make_optimizer, policy_loss, rollout, rows_logprobs, sampling_streams
    from .evaluate import answer
    from .lora import apply_lora, lora_enabled
    from .optim import optimizer_step, train_mode
    from .steer import keep_refusals, knowledge_absence_direction, optimize_steering

    meter = meter or PeakMeter(f.device)
    gcfg = GRPOConfig(group_size=f.group_size, temperature=1.5, top_p=0.95, max_new_tokens=f.max_new_tokens,
                      prompts_per_step=f.prompts_per_step, mini_batch_size=f.mini_batch_size, epochs_per_rollout=1,
                      grpo_epochs=1, clip_low=0.2, clip_high=0.3, dual_clip=3.0, kl_coef=f.kl_coef, grpo_lr=1e-4,
                      grpo_weight_decay=0.01, grad_clip=1.0, seed=seed, rollout_batch=f.rollout_batch,
                      micro_batch_tokens=f.micro_batch_tokens, grad_checkpoint=f.grad_checkpoint,
                      logprob_chunk=f.logprob_chunk)
    seconds, out = {}, {}

    @contextmanager
    def timed(name):
        with meter.phase(name):
            t0 = time.time()
            yield
        seconds[name] = time.time() - t0

    with meter:
        with timed("weights"):
            model = build_model().eval()
        with timed("evaluation"):
            answer(model, processor, forget_qas[:f.eval_batch_size], batch_size=f.eval_batch_size,
                   max_new_tokens=f.eval_max_new_tokens)
        with timed("stage 1"):
            kept = keep_refusals(model, processor, retain_qas[:f.eval_batch_size], batch_size=f.eval_batch_size)
            v = knowledge_absence_direction(model, processor, kept or retain_qas[:2], forget_qas[:f.eval_batch_size],
                                            layer, batch_size=f.eval_batch_size)
            optimize_steering(model, processor, forget_qas[:f.steer_batch_size], retain_qas[:f.steer_batch_size], v,
                              layer, c=3.0, alpha=1.0, lr=1e-4, batch_size=f.steer_batch_size, epochs=1, log_every=0)
        apply_lora(model, targets=tuple(f.lora_targets.split(",")), r=f.lora_r, alpha=float(f.lora_r), dropout=0.0)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, gcfg)
        for p in params:  # AdamW's moments exist from the first step on: allocate them as a later step finds them
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        samples = [(qa, True) for qa in forget_qas[:f.prompts_per_step]]
        generators = sampling_streams(seed, 0, list(range(len(samples))), f.device)
        with timed("rollout"):
            ro = rollout(model, processor, samples, gcfg, generators)
        rows = list(range(ro.input_ids.shape[0]))[:f.mini_batch_size or None]
        with timed("old / reference log-probs"), torch.no_grad():
            old = rows_logprobs(model, ro, rows, gcfg)[0] if f.mini_batch_size else None
            with lora_enabled(model, False):
                ref = rows_logprobs(model, ro, rows, gcfg)[0]
        advantages = torch.linspace(-1.0, 1.0, len(rows), device=ref.device)  # any non-zero advantages
        with timed("update"), train_mode(model):
            logp, resp = rows_logprobs(model, ro, rows, gcfg)
            loss, _ = policy_loss(logp, logp.detach() if old is None else old, ref, advantages, resp, 0.2, 0.3,
                                  f.kl_coef, 3.0)
            optimizer_step(loss, params, optimizer, 1.0)
        out["prompt_tokens"] = ro.prompt_ids.shape[1]
        out["new_tokens"] = ro.input_ids.shape[1] - ro.prompt_ids.shape[1]
    out.update(peaks=meter.peaks, starts=meter.starts, seconds=seconds)
    return out
