"""LoRA: low-rank adapters on nn.Linear layers, switchable on/off, explicit merge/unmerge, PEFT-format files.

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T          A: (r, in), B: (out, r)

A starts Kaiming-uniform and B at zero, so at init the adapted model equals the base model exactly; W, b stay frozen.
- `LoRALinear` subclasses nn.Linear and keeps W, b as `weight` / `bias`: the base state-dict keys are unchanged,
  the adapters add `...q_proj.lora_A.weight` / `...q_proj.lora_B.weight`.
- Adapters off (`lora_enabled(model, False)`) IS the reference policy for GRPO/NPO/KL: no second model copy.
- Merging is only explicit (`.eval()` never merges, unlike loralib), so train/eval cannot change "adapters off".
- `save_lora` / `load_lora` use PEFT's layout, so PEFT loads our adapters onto the Hugging Face Qwen3-VL (same paths).
"""

import json
import math
import os
import re
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .optim import temporarily

TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TEXT_PREFIX = "model.language_model.layers."
PEFT_PREFIX = "base_model.model."  # PEFT wraps the model twice: PeftModel.base_model (LoraModel).model
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class LoRALinear(nn.Linear):
    """nn.Linear plus a low-rank update: y = x W^T + b + scaling * B(A(dropout(x))), scaling = alpha / r."""

    def __init__(self, in_features: int, out_features: int, bias: bool, r: int, alpha: float, dropout: float,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got {r}")
        self.r, self.lora_alpha, self.scaling = r, alpha, alpha / r
        self.lora_A = nn.Linear(in_features, r, bias=False, device=device, dtype=dtype)  # weight (r, in)
        self.lora_B = nn.Linear(r, out_features, bias=False, device=device, dtype=dtype)  # weight (out, r)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True  # adapters on
        self.merged = False  # delta currently folded into self.weight
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # nn.Linear's default init
        nn.init.zeros_(self.lora_B.weight)

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int, alpha: float, dropout: float) -> "LoRALinear":
        """Wrap an existing nn.Linear, adopting (not copying) its weight and bias parameters."""
        w = linear.weight
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, r=r, alpha=alpha,
                     dropout=dropout, device="meta", dtype=w.dtype)  # meta: allocates nothing
        module.weight, module.bias = w, linear.bias
        # Adapters of a bf16/fp16 model are float32 (as in PEFT): an AdamW step (lr 1e-6 .. 1e-4) on A is far
        # below bf16's resolution, so bf16 adapters would silently stop learning.
        lora_dtype = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
        module.lora_A.to_empty(device=w.device).to(lora_dtype)
        module.lora_B.to_empty(device=w.device).to(lora_dtype)
        module.reset_lora_parameters()
        module.train(linear.training)
        return module

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A, shape (out, in): what merging adds to W."""
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if not self.enabled and self.merged:
            raise RuntimeError("LoRA adapters are merged into the weight; unmerge_lora before switching them off")
        if self.enabled and not self.merged:
            xa = self.lora_dropout(x).to(self.lora_A.weight.dtype)
            y = y + (self.scaling * self.lora_B(self.lora_A(xa))).to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.lora_alpha}, merged={self.merged}"


# ---------------------------------------------------------------------------------------- applying, switching

def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Module path -> LoRALinear, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All adapter parameters (A and B of every LoRALinear): what the optimizer trains."""
    return [p for m in lora_modules(model).values() for p in (m.lora_A.weight, m.lora_B.weight)]


def _install(model: nn.Module, paths: list[str], r: int, alpha: float, dropout: float) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for path in paths:
        parent_path, _, leaf = path.rpartition(".")
        parent = model.get_submodule(parent_path)  # "" is the model itself
        linear = getattr(parent, leaf)
        if isinstance(linear, LoRALinear) or not isinstance(linear, nn.Linear):
            raise ValueError(f"{path} is a {type(linear).__name__}, not an nn.Linear without a LoRA adapter")
        setattr(parent, leaf, LoRALinear.from_linear(linear, r, alpha, dropout))


def apply_lora(model: nn.Module, targets=TEXT_TARGETS, r: int = 16, alpha: float = 16.0,
               dropout: float = 0.0) -> list[str]:
    """Wrap the nn.Linear layers named `targets` in every decoder layer (default: all seven linear maps, as the
    authors' fine-tuning) in LoRALinear; freeze every other parameter. Returns the wrapped module paths. The one
    place LoRA's defaults live (r 16, alpha 16 as the release; dropout 0, the default run's `lora_dropout`)."""
    if lora_modules(model):
        raise ValueError("model already has LoRA adapters")
    targets = tuple(targets)
    paths = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and name.startswith(TEXT_PREFIX) and name.rsplit(".", 1)[-1] in targets]
    if not paths:
        raise ValueError(f"no nn.Linear named {targets} under {TEXT_PREFIX}*")
    _install(model, paths, r, alpha, dropout)
    return paths


@contextmanager
def lora_enabled(model: nn.Module, on: bool) -> Iterator[None]:
    """Switch all adapters on or off inside the block, restoring the previous state after (even on error).
    Off = the base model = the reference policy."""
    modules = list(lora_modules(model).values())
    if not modules:
        raise ValueError("model has no LoRA adapters: call apply_lora first")
    if not on and any(m.merged for m in modules):
        raise RuntimeError("LoRA adapters are merged into the weights; call unmerge_lora before switching them off")
    with temporarily(modules, "enabled", on):
        yield


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """W <- cast(float32(W) + scaling * B @ A) in every unmerged layer; returns their number. The sum is formed in
    float32 (the adapters' dtype) and rounded once to W's dtype: adding a bf16-rounded delta to a bf16 W would
    round twice. A bf16 W still cannot hold a delta below half its spacing (0.2-0.4 % of |W|); the bf16 forward of
    the unmerged model rounds such a delta's effect on each layer's output too, so the merged model stays within
    bf16 rounding of it (tests/test_lora.py). A merge/unmerge round trip restores W only up to that rounding
    (~1e-7 relative in float32, ~1e-2 in bf16): train unmerged."""
    todo = [m for m in lora_modules(model).values() if not m.merged]
    for m in todo:
        m.weight.copy_(m.weight.float() + m.delta_weight().float())
        m.merged = True
    return len(todo)


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> int:
    """W <- cast(float32(W) - scaling * B @ A) in every merged layer (undoes merge_lora); returns their number."""
    todo = [m for m in lora_modules(model).values() if m.merged]
    for m in todo:
        m.weight.copy_(m.weight.float() - m.delta_weight().float())
        m.merged = False
    return len(todo)


def unload_lora(model: nn.Module, merge: bool = True) -> int:
    """Replace every LoRALinear by a plain nn.Linear holding the same weight (merged first if `merge`), so the
    model is the plain architecture again (e.g. before save_pretrained). Returns the number of layers."""
    if merge:
        merge_lora(model)
    modules = lora_modules(model)
    for path, m in modules.items():
        if m.merged != merge:
            raise RuntimeError(f"{path}: cannot unload {'unmerged' if merge else 'merged'} adapters here")
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        plain.weight, plain.bias = m.weight, m.bias
        plain.train(m.training)
        parent_path, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent_path), leaf, plain)
    return len(modules)


# ---------------------------------------------------------------------------------------- PEFT-format files

def save_lora(model: nn.Module, directory: str, base_model_name_or_path: str | None = None) -> None:
    """Write adapter_model.safetensors (keys `base_model.model.<path>.lora_{A,B}.weight`) and adapter_config.json."""
    modules = lora_modules(model)
    if any(m.merged for m in modules.values()):
        raise RuntimeError("save_lora needs unmerged adapters (call unmerge_lora first)")
    if len({(m.r, m.lora_alpha) for m in modules.values()}) != 1:  # also for a model without adapters
        raise ValueError("save_lora needs LoRA adapters, all with one rank and alpha")
    os.makedirs(directory, exist_ok=True)
    tensors = {f"{PEFT_PREFIX}{path}.{ab}.weight": getattr(m, ab).weight.detach().cpu().contiguous()
               for path, m in modules.items() for ab in ("lora_A", "lora_B")}
    save_file(tensors, os.path.join(directory, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    # PEFT's target_modules: the leaf names when they name exactly the wrapped layers (PEFT matches `*.q_proj`
    # etc. anywhere in the model: `apply_lora`'s adapters); else a regex PEFT full-matches against module paths,
    # listing exactly the wrapped ones (an adapter loaded on a subset of the layers).
    leaves = sorted({p.rsplit(".", 1)[-1] for p in modules})
    named = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in leaves]
    target_modules = leaves if named == list(modules) else "(" + "|".join(re.escape(p) for p in modules) + ")"
    m0 = next(iter(modules.values()))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
              "r": m0.r, "lora_alpha": m0.lora_alpha,
              "lora_dropout": m0.lora_dropout.p if isinstance(m0.lora_dropout, nn.Dropout) else 0.0,
              "target_modules": target_modules, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
              "init_lora_weights": True, "use_rslora": False, "use_dora": False, "modules_to_save": None}
    with open(os.path.join(directory, ADAPTER_CONFIG), "w") as f:
        json.dump(config, f, indent=2)


def load_lora(model: nn.Module, directory: str) -> list[str]:
    """Load a PEFT-format adapter. A model without adapters gets them on exactly the file's module paths (r / alpha /
    dropout from adapter_config.json); one with adapters must match paths and ranks. Returns the adapted paths."""
    weights_path, config_path = os.path.join(directory, ADAPTER_WEIGHTS), os.path.join(directory, ADAPTER_CONFIG)
    for p in (directory, weights_path, config_path):
        if not os.path.exists(p):
            raise FileNotFoundError(f"LoRA adapter: {p} not found")
    with open(config_path) as f:
        config = json.load(f)
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{config_path}: peft_type {config.get('peft_type')!r} is not LORA")

    by_path: dict[str, dict[str, torch.Tensor]] = {}  # path -> {"lora_A": A, "lora_B": B}
    for key, t in load_file(weights_path).items():  # PEFT's in-memory ".default" adapter name is tolerated
        m = re.fullmatch(re.escape(PEFT_PREFIX) + r"(.+)\.(lora_[AB])(?:\.default)?\.weight", key)
        if m is None:
            raise ValueError(f"{weights_path}: unexpected key {key!r} (expected {PEFT_PREFIX}<path>.lora_A.weight)")
        by_path.setdefault(m.group(1), {})[m.group(2)] = t
    for path, pair in by_path.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise ValueError(f"{weights_path}: {path} lacks lora_A or lora_B")

    existing = lora_modules(model)
    if not existing:
        _install(model, list(by_path), int(config["r"]), float(config["lora_alpha"]),
                 float(config.get("lora_dropout", 0.0)))
    elif set(existing) != set(by_path):
        missing, extra = sorted(set(existing) - set(by_path)), sorted(set(by_path) - set(existing))
        raise ValueError(f"adapter paths differ from the model's: missing in file {missing[:3]}, "
                         f"not in model {extra[:3]}")
    modules = lora_modules(model)
    with torch.no_grad():
        for path, pair in by_path.items():
            m = modules[path]
            if m.merged:
                raise RuntimeError("cannot load into merged adapters (call unmerge_lora first)")
            for name, t in pair.items():
                param = getattr(m, name).weight
                if t.shape != param.shape:
                    raise ValueError(f"{path}.{name}.weight: file shape {tuple(t.shape)} != model shape "
                                     f"{tuple(param.shape)} (different r or a different base model?)")
                param.copy_(t)
            m.lora_alpha = float(config["lora_alpha"])
            m.scaling = m.lora_alpha / m.r
    return list(by_path)
