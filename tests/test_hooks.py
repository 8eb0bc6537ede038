"""Hooks: read equals a manual forward, add shifts by exactly scale*v, ablate removes the component along v,
and no hook handle survives its context (also when the body raises)."""

import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from asru_min.hooks import (
    ablate_direction, add_direction, decoder_layer, get_module, read_input, read_layer_output, read_output,
)


# ---- a toy decoder with the same attribute path as Qwen3VL: model.model.language_model.layers[i].mlp.down_proj


class ToyAttention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, x, mask):  # x (B, L, D), mask (B, L) bool
        L = x.shape[1]
        s = self.q_proj(x) @ self.k_proj(x).transpose(1, 2) / math.sqrt(x.shape[-1])  # (B, L, L)
        allowed = torch.ones(L, L, dtype=torch.bool).tril() & mask[:, None, :]
        s = s.masked_fill(~allowed, -1e9)
        return self.o_proj(s.softmax(-1) @ self.v_proj(x))


class ToyMLP(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ToyLayer(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.self_attn, self.mlp = ToyAttention(d), ToyMLP(d, f)

    def forward(self, h, mask):
        h = h + self.self_attn(h, mask)
        return h + self.mlp(h)


class ToyText(nn.Module):
    def __init__(self, vocab, d, f, n):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(ToyLayer(d, f) for _ in range(n))


class ToyInner(nn.Module):
    def __init__(self, vocab, d, f, n):
        super().__init__()
        self.language_model = ToyText(vocab, d, f, n)


class ToyLM(nn.Module):
    def __init__(self, vocab=32, d=16, f=24, n=3):
        super().__init__()
        self.model = ToyInner(vocab, d, f, n)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids, attention_mask=None):
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        h = self.model.language_model.embed_tokens(input_ids)
        for layer in self.model.language_model.layers:
            h = layer(h, mask)
        return self.lm_head(h)

    def manual_hidden(self, input_ids, upto):
        """Residual stream after layer `upto`, computed without hooks."""
        mask = torch.ones_like(input_ids, dtype=torch.bool)
        h = self.model.language_model.embed_tokens(input_ids)
        for layer in self.model.language_model.layers[: upto + 1]:
            h = layer(h, mask)
        return h


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return ToyLM().eval()


def test_read_equals_manual_forward(toy):
    ids = torch.randint(0, 32, (2, 5))
    with torch.no_grad(), read_layer_output(toy, 1, positions="all") as acts_all, \
            read_layer_output(toy, 1, positions="last") as acts_last:
        toy(ids)
        toy(ids[:1])
    ref = toy.manual_hidden(ids, upto=1).detach()
    assert len(acts_all) == 2 and len(acts_last) == 2  # one entry per forward
    assert acts_all[0].shape == (2, 5, 16) and acts_last[0].shape == (2, 16)
    torch.testing.assert_close(acts_all[0], ref, rtol=0, atol=0)
    torch.testing.assert_close(acts_last[0], ref[:, -1], rtol=0, atol=0)
    torch.testing.assert_close(acts_last[1], ref[:1, -1], rtol=1e-6, atol=1e-6)


def test_read_input_is_down_proj_input(toy):
    ids = torch.randint(0, 32, (2, 4))
    mlp = get_module(toy, "model.language_model.layers.2.mlp")
    with torch.no_grad(), read_input(mlp.down_proj) as a, read_output(mlp.down_proj, positions="all") as y:
        toy(ids)
    torch.testing.assert_close(y[0], a[0] @ mlp.down_proj.weight.T)


def test_no_handle_survives_even_on_exception(toy):
    v = torch.randn(16)
    assert _hook_count(toy) == 0
    with read_layer_output(toy, 0), add_direction(toy, 1, v, 2.0), ablate_direction(toy, 2, v):
        assert _hook_count(toy) == 3
    assert _hook_count(toy) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with read_layer_output(toy, 0), add_direction(toy, 1, v, 2.0), ablate_direction(toy, 2, v):
            raise RuntimeError("boom")
    assert _hook_count(toy) == 0
    # a failure inside the hooked forward itself (wrong direction size) also leaves nothing behind
    with pytest.raises(ValueError, match="direction must have shape"):
        with add_direction(toy, 1, torch.randn(7), 1.0):
            toy(torch.randint(0, 32, (1, 3)))
    assert _hook_count(toy) == 0


def test_add_shifts_layer_output_by_scale_v(toy):
    ids = torch.randint(0, 32, (2, 5))
    v, scale = torch.randn(16), 2.5
    with torch.no_grad():
        with read_layer_output(toy, 1, positions="all") as base:
            base_logits = toy(ids)
        # the read hook is registered after the add hook, so it sees the steered output
        with add_direction(toy, 1, v, scale), read_layer_output(toy, 1, positions="all") as steered:
            steered_logits = toy(ids)
    torch.testing.assert_close(steered[0] - base[0], (scale * v).expand(2, 5, 16), rtol=0, atol=1e-5)
    assert not torch.allclose(steered_logits, base_logits)  # it propagates downstream
    with torch.no_grad(), add_direction(toy, 1, v, scale, positions="last"), \
            read_layer_output(toy, 1, positions="all") as last_only:
        toy(ids)
    diff = last_only[0] - base[0]
    torch.testing.assert_close(diff[:, -1], (scale * v).expand(2, 16), rtol=0, atol=1e-5)
    assert diff[:, :-1].abs().max() == 0


def test_ablate_leaves_no_component_along_v(toy):
    ids = torch.randint(0, 32, (3, 6))
    v = torch.randn(16) * 7.0  # not unit: ablation must normalise
    with torch.no_grad():
        with read_layer_output(toy, 0, positions="all") as base:
            toy(ids)
        with ablate_direction(toy, 0, v), read_layer_output(toy, 0, positions="all") as abl:
            toy(ids)
    u = v / v.norm()
    assert (base[0] @ u).abs().max() > 0.1  # there was something to remove
    assert (abl[0] @ u).abs().max() < 1e-5
    # and nothing orthogonal to v changed
    torch.testing.assert_close(abl[0], base[0] - (base[0] @ u)[..., None] * u, rtol=0, atol=1e-5)


def test_bad_arguments(toy):
    with pytest.raises(ValueError, match="out of range"):
        decoder_layer(toy, 3)
    with pytest.raises(ValueError, match="positions"):
        with read_layer_output(toy, 0, positions="first"):
            pass
    with pytest.raises(ValueError, match="no submodule"):
        get_module(toy, "model.language_model.layers.0.mlp.nope")
    with pytest.raises(ValueError, match="non-zero"):
        with ablate_direction(toy, 0, torch.zeros(16)):
            pass
    assert _hook_count(toy) == 0
