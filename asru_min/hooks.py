"""Forward hooks on the residual stream: read, add, or ablate a direction at a decoder layer.

Every hook here lives inside a context manager that removes its handle in a `finally` block, so a hook can
never outlive the `with` statement, even when the body raises (a stray hook silently corrupts every later
forward pass, which is the classic bug of hook-based steering code).

Two layers of API:
- generic, for any module (`get_module(model, "model.language_model.layers.3.mlp")`): `forward_hook`,
  `forward_pre_hook`, `read_output`, `read_input`, `add_to_output`, `ablate_from_output`;
- decoder-layer shortcuts used by ASRU stage 1 (`steer.py`): `read_layer_output`, `add_direction`,
  `ablate_direction`, which address text-decoder layer `L` at `model.model.language_model.layers[L]`.

A decoder layer returns the hidden-state tensor (B, L, D) (see docs/ARCHITECTURE.md), so a hook that returns
a tensor replaces the residual stream after that layer. Tuple outputs (e.g. other codebases' layers return
`(hidden, ...)`) are handled too: the first element is treated as the hidden state.

Positions. Prompts are left-padded, so the last prompt token is index -1 of every row. `positions="last"`
selects `h[:, -1]` (B, D); `positions="all"` keeps (B, L, D). During cached generation each decode step is a
forward with L = 1, so "last" then also touches every generated token.
"""

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

POSITIONS = ("last", "all")


# ----------------------------------------------------------------------------------------------------------
# module lookup


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path, e.g. "model.language_model.layers.3.mlp.down_proj" (list indices as
    plain components, exactly as in `named_modules()` and checkpoint keys)."""
    module = model
    for name in path.split(".") if path else []:
        if not hasattr(module, name):
            raise ValueError(f"{type(module).__name__} has no submodule {name!r} (path {path!r})")
        module = getattr(module, name)
    if not isinstance(module, nn.Module):
        raise ValueError(f"{path!r} is a {type(module).__name__}, not an nn.Module")
    return module


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


# ----------------------------------------------------------------------------------------------------------
# hook registration: the only two places that call register_*; both remove the handle in `finally`


@contextmanager
def forward_hook(module: nn.Module, fn: Callable) -> Iterator[None]:
    """Register `fn(module, inputs, output) -> new_output | None` for the duration of the block."""
    handle = module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def forward_pre_hook(module: nn.Module, fn: Callable) -> Iterator[None]:
    """Register `fn(module, inputs) -> new_inputs | None` for the duration of the block."""
    handle = module.register_forward_pre_hook(fn)
    try:
        yield
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------------------------
# helpers on hidden states


def _hidden(output):
    """The hidden-state tensor of a module output (a tensor, or the first element of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, h: torch.Tensor):
    return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h


def _select(h: torch.Tensor, positions: str) -> torch.Tensor:
    """(B, L, D) -> (B, D) for "last" (left padding puts every row's last real token at -1), or unchanged."""
    if positions == "last":
        return h[:, -1]
    if positions == "all":
        return h
    raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")


def _check_direction(v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    if v.ndim != 1 or v.shape[0] != h.shape[-1]:
        raise ValueError(f"direction must have shape ({h.shape[-1]},), got {tuple(v.shape)}")
    return v.to(device=h.device, dtype=h.dtype)


# ----------------------------------------------------------------------------------------------------------
# generic read / add / ablate on any module


@contextmanager
def read_output(module: nn.Module, positions: str = "last", detach: bool = True) -> Iterator[list]:
    """Collect the module's output on every forward inside the block.

    Yields a list that gets one tensor per forward call: (B, D) for positions="last", (B, L, D) for "all".
    `detach=False` keeps the autograd graph (used by the steering optimisation)."""
    _select(torch.zeros(1, 1, 1), positions)  # validate `positions` before any forward runs
    outputs: list[torch.Tensor] = []

    def hook(mod, inputs, output):
        h = _select(_hidden(output), positions)
        outputs.append(h.detach() if detach else h)

    with forward_hook(module, hook):
        yield outputs


@contextmanager
def read_input(module: nn.Module, detach: bool = True) -> Iterator[list]:
    """Collect the first positional input of the module on every forward inside the block (e.g. the input
    `a` of `mlp.down_proj`, shape (B, L, intermediate))."""
    inputs_seen: list[torch.Tensor] = []

    def hook(mod, inputs):
        x = inputs[0]
        inputs_seen.append(x.detach() if detach else x)

    with forward_pre_hook(module, hook):
        yield inputs_seen


@contextmanager
def add_to_output(module: nn.Module, v: torch.Tensor, scale: float = 1.0, positions: str = "all") -> Iterator[None]:
    """Activation addition: output h -> h + scale * v (at every position, or only at the last one)."""
    _select(torch.zeros(1, 1, 1), positions)

    def hook(mod, inputs, output):
        h = _hidden(output)
        delta = scale * _check_direction(v, h)  # (D,)
        if positions == "all":
            h = h + delta
        else:
            h = h.clone()
            h[:, -1] = h[:, -1] + delta
        return _replace_hidden(output, h)

    with forward_hook(module, hook):
        yield


@contextmanager
def ablate_from_output(module: nn.Module, v: torch.Tensor) -> Iterator[None]:
    """Directional ablation: h -> h - (h . u) u with u = v / |v|, at every position, so the output has no
    component along v. The projection is computed in float32 for bf16/fp16 models."""
    if v.ndim != 1 or float(v.norm()) == 0.0:
        raise ValueError("ablation needs a non-zero 1-D direction")

    def hook(mod, inputs, output):
        h = _hidden(output)
        u = _check_direction(v, h).float()
        u = u / u.norm()
        hf = h.float()
        proj = (hf @ u).unsqueeze(-1) * u  # (B, L, 1) * (D,) -> (B, L, D)
        return _replace_hidden(output, (hf - proj).to(h.dtype))

    with forward_hook(module, hook):
        yield


# ----------------------------------------------------------------------------------------------------------
# the decoder-layer shortcuts used by ASRU


@contextmanager
def read_layer_output(model: nn.Module, layer: int, positions: str = "last", detach: bool = True) -> Iterator[list]:
    """Read the residual stream after text-decoder layer `layer`:

        with read_layer_output(model, L) as acts:
            model(**batch)
        h = acts[0]            # (B, D): the last prompt token of each (left-padded) row
    """
    with read_output(decoder_layer(model, layer), positions=positions, detach=detach) as outputs:
        yield outputs


@contextmanager
def add_direction(model: nn.Module, layer: int, v: torch.Tensor, scale: float = 1.0,
                  positions: str = "all") -> Iterator[None]:
    """Inference-time steering: the output of decoder layer `layer` becomes h + scale * v."""
    with add_to_output(decoder_layer(model, layer), v, scale=scale, positions=positions):
        yield


@contextmanager
def ablate_direction(model: nn.Module, layer: int, v: torch.Tensor) -> Iterator[None]:
    """The output of decoder layer `layer` becomes h - (h . u) u, u = v / |v| (no component along v)."""
    with ablate_from_output(decoder_layer(model, layer), v):
        yield
