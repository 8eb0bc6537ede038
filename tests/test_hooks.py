"""Hooks: read equals a manual forward, add shifts by exactly scale*v, ablate removes the component along v,
and no hook handle survives its context (also when the body raises)."""

import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from asru_min.hooks import ablate_direction, add_direction, decoder_layer, run_to_layer
from asru_min.model import Qwen3VL, Qwen3VLConfig, rope_positions
from asru_min.text import TextConfig, mrope_cos_sin
from asru_min.vision import VisionConfig
from conftest import layer_outputs


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

    @property
    def device(self) -> torch.device:  # as Qwen3VL.device
        return self.lm_head.weight.device

    def forward(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None):
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


def tiny_qwen3vl(vocab_size=64, seed=0, std=0.2, image_token_id=60, video_token_id=61, vision_start_token_id=62,
                 vision_end_token_id=63, eos_token_id=59, layers=3) -> Qwen3VL:
    """A tiny random real Qwen3VL (D=32, 3 layers, 2-block vision tower), weights ~N(0, std) so that
    activations differ visibly between inputs."""
    torch.manual_seed(seed)
    text = TextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope_theta=10000.0,
                      mrope_section=[2, 1, 1], eos_token_id=eos_token_id)
    vision = VisionConfig(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                          num_position_embeddings=16, deepstack_visual_indexes=[0, 1])
    cfg = Qwen3VLConfig(text=text, vision=vision, image_token_id=image_token_id, video_token_id=video_token_id,
                        vision_start_token_id=vision_start_token_id, vision_end_token_id=vision_end_token_id)
    model = Qwen3VL(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, std)
    return model


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return ToyLM().eval()


def test_run_to_layer_returns_the_layer_output_and_the_down_proj_input(toy):
    ids = torch.randint(0, 32, (2, 4))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    h, a = run_to_layer(toy, batch, 1)
    torch.testing.assert_close(h, toy.manual_hidden(ids, upto=1), rtol=0, atol=0)
    layer = toy.model.language_model.layers[1]
    h0 = toy.manual_hidden(ids, upto=0)
    h_mid = h0 + layer.self_attn(h0, torch.ones_like(ids, dtype=torch.bool))   # the MLP's input stream
    torch.testing.assert_close(h, h_mid + a @ layer.mlp.down_proj.weight.T, rtol=1e-6, atol=1e-6)
    assert not h.requires_grad and _hook_count(toy) == 0
    h, _ = run_to_layer(toy, batch, 1, grad=True)
    assert h.requires_grad and _hook_count(toy) == 0


def test_no_handle_survives_even_on_exception(toy):
    v = torch.randn(16)
    assert _hook_count(toy) == 0
    with layer_outputs(toy, 0), add_direction(toy, 1, v, 2.0), ablate_direction(toy, 2, v):
        assert _hook_count(toy) == 3
    assert _hook_count(toy) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with layer_outputs(toy, 0), add_direction(toy, 1, v, 2.0), ablate_direction(toy, 2, v):
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
        with layer_outputs(toy, 1) as base:
            base_logits = toy(ids)
        # the read hook is registered after the add hook, so it sees the steered output
        with add_direction(toy, 1, v, scale), layer_outputs(toy, 1) as steered:
            steered_logits = toy(ids)
    torch.testing.assert_close(steered[0] - base[0], (scale * v).expand(2, 5, 16), rtol=0, atol=1e-5)
    assert not torch.allclose(steered_logits, base_logits)  # it propagates downstream
    with torch.no_grad(), add_direction(toy, 1, v, scale, positions="last"), \
            layer_outputs(toy, 1) as last_only:
        toy(ids)
    diff = last_only[0] - base[0]
    torch.testing.assert_close(diff[:, -1], (scale * v).expand(2, 16), rtol=0, atol=1e-5)
    assert diff[:, :-1].abs().max() == 0


def test_ablate_leaves_no_component_along_v(toy):
    ids = torch.randint(0, 32, (3, 6))
    v = torch.randn(16) * 7.0  # not unit: ablation must normalise
    with torch.no_grad():
        with layer_outputs(toy, 0) as base:
            toy(ids)
        with ablate_direction(toy, 0, v), layer_outputs(toy, 0) as abl:
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
        with add_direction(toy, 0, torch.randn(16), positions="first"):
            pass
    with pytest.raises(ValueError, match="non-zero"):
        with ablate_direction(toy, 0, torch.zeros(16)):
            pass
    assert _hook_count(toy) == 0


def test_real_qwen3vl_read_add_and_cached_generation():
    model = tiny_qwen3vl()
    L = 1
    ids = torch.randint(0, 59, (1, 7))
    # manual forward through the decoder layers (no hooks) up to layer L
    with torch.no_grad():
        pos, _ = rope_positions(ids, torch.ones_like(ids), None, 60, 2)
        cos, sin = mrope_cos_sin(pos, model.config.text, torch.float32)
        h = model.model.language_model.embed_tokens(ids)
        for layer in model.model.language_model.layers[: L + 1]:
            h = layer(h, cos, sin, None)
    # the same row left-padded in a batch: "last" is still the last prompt token
    batch = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    other = torch.randint(0, 59, (1, 10))
    mask = torch.tensor([[0, 0, 0] + [1] * 7, [1] * 10])
    with torch.no_grad(), layer_outputs(model, L) as full:
        model(torch.cat([batch, other]), attention_mask=mask)
    torch.testing.assert_close(full[0][0, 3:], h[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(full[0][0, -1], h[0, -1], rtol=0, atol=1e-5)  # the last prompt token is at -1

    # steering inside cached generation: the hook fires on the prefill and on every decode step
    v = torch.randn(32) * 5
    with torch.no_grad():
        plain, _ = model.generate(ids, max_new_tokens=6, eos_token_ids=[])
        with add_direction(model, L, v, 4.0), layer_outputs(model, L) as steps:
            steered, _ = model.generate(ids, max_new_tokens=6, eos_token_ids=[])
    assert len(steps) == 6  # one prefill + 5 decode forwards
    assert not torch.equal(plain, steered)
    assert _hook_count(model) == 0
    with torch.no_grad():
        again, _ = model.generate(ids, max_new_tokens=6, eos_token_ids=[])
    assert torch.equal(again, plain)
