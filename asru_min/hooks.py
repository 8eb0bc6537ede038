"""Forward hooks on the residual stream: add or ablate a direction at a text-decoder layer, and run the model
only up to a layer, reading that layer's output (stage 1's activations).

`hook(module, fn)` is the one place that registers a hook; it removes the handle in a `finally`, so a hook never
outlives its `with` block even when the body raises (a stray hook silently corrupts every later forward, the
classic bug of hook-based steering). A decoder layer returns the residual stream h (B, L, D) as a plain tensor, so
a forward hook returning a tensor replaces h. Prompts are left-padded, so index -1 of every row is its last prompt
token: positions="last" steers h[:, -1] (B, D), "all" every position (B, L, D). In cached generation every decode
step is a forward with L = 1, so "last" then touches every generated token too.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

POSITIONS = ("last", "all")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The text decoder's layer list, `model.model.language_model.layers`."""
    try:
        return model.model.language_model.layers
    except AttributeError as e:
        raise ValueError("expected a Qwen3VL-like model with model.model.language_model.layers") from e


def decoder_layer(model: nn.Module, layer: int) -> nn.Module:
    """Text-decoder layer `layer` (0-based; negative indices count from the end)."""
    layers = decoder_layers(model)
    if not -len(layers) <= layer < len(layers):
        raise ValueError(f"layer {layer} out of range for a decoder with {len(layers)} layers")
    return layers[layer]


@contextmanager
def hook(module: nn.Module, fn: Callable, pre: bool = False) -> Iterator[None]:
    """Register fn for the block: a forward hook `fn(module, inputs, output) -> new output | None`, or with
    pre=True a forward pre-hook `fn(module, inputs) -> new inputs | None`."""
    handle = module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


def _check_positions(positions: str) -> None:
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")


def _check_direction(v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    if v.ndim != 1 or v.shape[0] != h.shape[-1]:
        raise ValueError(f"direction must have shape ({h.shape[-1]},), got {tuple(v.shape)}")
    return v.to(device=h.device, dtype=h.dtype)


@contextmanager
def add_direction(model: nn.Module, layer: int, v: torch.Tensor, scale: float = 1.0,
                  positions: str = "all") -> Iterator[None]:
    """Inference-time steering: decoder layer `layer`'s output becomes h + scale * v (at every position or the last)."""
    _check_positions(positions)

    def add(mod, inputs, h):
        delta = scale * _check_direction(v, h)  # (D,)
        if positions == "all":
            return h + delta
        h = h.clone()
        h[:, -1] = h[:, -1] + delta
        return h

    with hook(decoder_layer(model, layer), add):
        yield


@contextmanager
def ablate_direction(model: nn.Module, layer: int, v: torch.Tensor) -> Iterator[None]:
    """Directional ablation: the output of decoder layer `layer` becomes h - (h . u) u with u = v / |v|, at every
    position, so it has no component along v. The projection is computed in float32 for bf16/fp16 models."""
    if v.ndim != 1 or float(v.norm()) == 0.0:
        raise ValueError("ablation needs a non-zero 1-D direction")

    def ablate(mod, inputs, h):
        u = _check_direction(v, h).float()
        u = u / u.norm()
        hf = h.float()
        return (hf - (hf @ u).unsqueeze(-1) * u).to(h.dtype)  # (B, L, 1) * (D,) -> (B, L, D)

    with hook(decoder_layer(model, layer), ablate):
        yield


class _StopForward(Exception):
    """Raised by a hook after layer L: the rest of the forward cannot change h_L."""


def run_to_layer(model: nn.Module, batch: dict, layer: int, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model on `batch` (a data.qa_batch) up to and including decoder layer `layer` only (later layers
    cannot change its output). Returns (h, a): h (B, L, D), the output of layer `layer` (with its graph when
    `grad`), and a (B, L, F), the input of that layer's mlp.down_proj (detached; it does not depend on down_proj)."""
    module = decoder_layer(model, layer)
    seen: dict[str, list] = {"h": [], "a": []}

    def read_a(mod, args):
        seen["a"].append(args[0].detach())

    def read_h_and_stop(mod, args, h):
        seen["h"].append(h if grad else h.detach())
        raise _StopForward

    with torch.set_grad_enabled(grad), hook(module.mlp.down_proj, read_a, pre=True), hook(module, read_h_and_stop):
        try:
            model(batch["input_ids"], attention_mask=batch["attention_mask"],
                  pixel_values=batch.get("pixel_values"), image_grid_thw=batch.get("image_grid_thw"))
        except _StopForward:
            pass
    if len(seen["h"]) != 1 or len(seen["a"]) != 1:
        raise RuntimeError(f"expected one forward through layer {layer}, saw {len(seen['h'])}")
    return seen["h"][0], seen["a"][0]
