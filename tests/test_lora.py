"""LoRA: identity at init, adapters-off == base after training, merged == unmerged, PEFT-format round trip,
gradients only on adapters, clear errors."""

import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from asru_min.model import Qwen3VL
from asru_min.lora import (
    LoRALinear, apply_lora, load_lora, lora_enabled, lora_modules, lora_parameters, merge_lora, save_lora,
    unload_lora, unmerge_lora,
)
from test_hooks import ToyLM, tiny_qwen3vl  # a toy decoder with Qwen3VL's attribute paths; the real tiny model

ALL7 = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _toy(seed=0):
    torch.manual_seed(seed)
    return ToyLM(vocab=32, d=16, f=24, n=3)


def _train_step(model, ids, lr=0.05):
    opt = torch.optim.SGD(lora_parameters(model), lr=lr)
    model.train()
    loss = model(ids).logsumexp(-1).mean() - model(ids)[..., 3].mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    model.eval()


def test_identity_at_init_and_keys_kept():
    model = _toy()
    ids = torch.randint(0, 32, (2, 6))
    base_keys = set(model.state_dict())
    with torch.no_grad():
        ref = model(ids)
    paths = apply_lora(model, r=4, alpha=8, dropout=0.1)
    assert len(paths) == 3 * 7 and all(isinstance(m, LoRALinear) for m in lora_modules(model).values())
    model.train()  # dropout active on the LoRA path: still exact, since B = 0
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref, rtol=0, atol=0)
    keys = set(model.state_dict())
    assert base_keys <= keys  # base checkpoint keys unchanged
    assert {k for k in keys - base_keys} == {f"{p}.lora_{x}.weight" for p in paths for x in "AB"}
    m = lora_modules(model)["model.language_model.layers.0.mlp.down_proj"]
    assert m.lora_A.weight.shape == (4, 24) and m.lora_B.weight.shape == (16, 4) and m.scaling == 2.0
    assert m.lora_A.weight.abs().sum() > 0 and m.lora_B.weight.abs().sum() == 0


def test_adapters_off_is_base_after_training_and_grads_only_on_lora():
    model = _toy()
    ids = torch.randint(0, 32, (2, 6))
    with torch.no_grad():
        ref = model(ids)
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, r=4, alpha=4, dropout=0.0)
    model.train()
    model(ids).pow(2).mean().backward()
    lora = {id(p) for p in lora_parameters(model)}
    for name, p in model.named_parameters():
        if id(p) in lora:
            assert p.requires_grad
        else:
            assert not p.requires_grad and p.grad is None, name
    assert all(p.grad is not None for p in lora_parameters(model))
    model.zero_grad()
    _train_step(model, ids)
    _train_step(model, ids)  # two steps so that both A and B have moved
    with torch.no_grad():
        on = model(ids)
        with lora_enabled(model, False):
            off = model(ids)
        on_again = model(ids)  # the context restored the adapters
    torch.testing.assert_close(off, ref, rtol=0, atol=0)
    assert (on - ref).abs().max() > 1e-3
    torch.testing.assert_close(on_again, on, rtol=0, atol=0)
    for k, v in base_before.items():  # the base weights never changed
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)


def test_merge_equals_unmerged_and_unmerge_restores():
    model = _toy()
    apply_lora(model, r=4, alpha=16, dropout=0.0)
    ids = torch.randint(0, 32, (2, 6))
    _train_step(model, ids)
    _train_step(model, ids)
    w0 = model.model.language_model.layers[1].self_attn.q_proj.weight.clone()
    with torch.no_grad():
        unmerged = model(ids)
        model.eval()  # eval never merges implicitly
        assert not any(m.merged for m in lora_modules(model).values())
        assert merge_lora(model) == 21
        merged = model(ids)
        assert not torch.equal(model.model.language_model.layers[1].self_attn.q_proj.weight, w0)
        with pytest.raises(RuntimeError, match="unmerge"):
            with lora_enabled(model, False):
                pass
        assert unmerge_lora(model) == 21
        back = model(ids)
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    torch.testing.assert_close(back, unmerged, rtol=0, atol=1e-5)
    torch.testing.assert_close(model.model.language_model.layers[1].self_attn.q_proj.weight, w0, rtol=0, atol=1e-6)


def test_unload_gives_plain_model_with_merged_weights():
    model = _toy()
    apply_lora(model, r=2, alpha=2, dropout=0.0)
    ids = torch.randint(0, 32, (1, 5))
    _train_step(model, ids)
    _train_step(model, ids)
    with torch.no_grad():
        adapted = model(ids)
        assert unload_lora(model) == 21
        plain = model(ids)
    assert not lora_modules(model) and not any("lora" in k for k in model.state_dict())
    torch.testing.assert_close(plain, adapted, rtol=0, atol=1e-5)


def test_save_load_round_trip_peft_format(tmp_path):
    model = _toy()
    apply_lora(model, r=4, alpha=8, dropout=0.05)
    ids = torch.randint(0, 32, (2, 6))
    _train_step(model, ids)
    _train_step(model, ids)
    save_lora(model, str(tmp_path), base_model_name_or_path="weights/tiny")
    files = set(os.listdir(tmp_path))
    assert files == {"adapter_model.safetensors", "adapter_config.json"}
    cfg = json.load(open(tmp_path / "adapter_config.json"))
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["bias"] == "none"
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (4, 8, 0.05)
    assert sorted(cfg["target_modules"]) == sorted(ALL7)
    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert "base_model.model.model.language_model.layers.2.mlp.down_proj.lora_A.weight" in keys
    assert "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_B.weight" in keys
    assert all(re.fullmatch(r"base_model\.model\.model\.language_model\.layers\.\d\.(self_attn|mlp)\."
                            r"[a-z_]+_proj\.lora_[AB]\.weight", k) for k in keys) and len(keys) == 42

    with torch.no_grad():
        want = model(ids)
    fresh = _toy()  # same base weights (same seed), no adapters yet
    paths = load_lora(fresh, str(tmp_path))
    assert len(paths) == 21
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids), want, rtol=0, atol=0)
    # loading again into the now-adapted model also works (paths match)
    load_lora(fresh, str(tmp_path))


def test_layer_subset_regex_matches_exactly_the_wrapped_paths(tmp_path):
    """An adapter on some layers only (a PEFT file from elsewhere) is saved again with a regex naming exactly
    its paths: the leaf names would also match the other layers."""
    model = _toy()
    apply_lora(model, targets=("q_proj", "down_proj"), r=2, alpha=2)
    save_lora(model, str(tmp_path / "all"))
    assert json.load(open(tmp_path / "all" / "adapter_config.json"))["target_modules"] == ["down_proj", "q_proj"]
    paths = ["model.language_model.layers.1.self_attn.q_proj", "model.language_model.layers.1.mlp.down_proj"]
    tensors = load_file(str(tmp_path / "all" / "adapter_model.safetensors"))
    (tmp_path / "subset").mkdir()
    save_file({k: t for k, t in tensors.items() if any(f".{p}." in k for p in paths)},
              str(tmp_path / "subset" / "adapter_model.safetensors"))
    (tmp_path / "subset" / "adapter_config.json").write_text((tmp_path / "all" / "adapter_config.json").read_text())
    subset = _toy()
    assert sorted(load_lora(subset, str(tmp_path / "subset"))) == sorted(paths)
    save_lora(subset, str(tmp_path / "again"))
    pattern = json.load(open(tmp_path / "again" / "adapter_config.json"))["target_modules"]
    assert isinstance(pattern, str)  # PEFT full-matches a string target_modules against module paths
    assert sorted(n for n, _ in _toy().named_modules() if re.fullmatch(pattern, n)) == sorted(paths)


def test_errors(tmp_path):
    model = _toy()
    with pytest.raises(ValueError, match="no LoRA"):
        with lora_enabled(model, False):
            pass
    with pytest.raises(FileNotFoundError):
        load_lora(model, str(tmp_path / "missing"))
    apply_lora(model, r=4, alpha=4)
    with pytest.raises(ValueError, match="already"):
        apply_lora(model)
    save_lora(model, str(tmp_path / "r4"))
    other = _toy()
    apply_lora(other, r=8, alpha=4)
    with pytest.raises(ValueError, match="shape"):
        load_lora(other, str(tmp_path / "r4"))
    subset = _toy()
    apply_lora(subset, targets=("q_proj",))
    with pytest.raises(ValueError, match="paths differ"):
        load_lora(subset, str(tmp_path / "r4"))
    bad = load_file(str(tmp_path / "r4" / "adapter_model.safetensors"))
    bad["something.else"] = torch.zeros(1)
    save_file(bad, str(tmp_path / "r4" / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="unexpected key"):
        load_lora(_toy(), str(tmp_path / "r4"))


def test_real_qwen3vl_identity_merge_and_peft_keys(tmp_path):
    model = tiny_qwen3vl()
    ids = torch.randint(0, 59, (2, 6))
    with torch.no_grad():
        ref = model(ids)
    text_paths = apply_lora(model, r=4, alpha=8, dropout=0.0)
    assert len(text_paths) == 3 * 7
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref, rtol=0, atol=0)
    _train_step(model, ids)
    _train_step(model, ids)
    with torch.no_grad():
        on = model(ids)
        with lora_enabled(model, False):
            torch.testing.assert_close(model(ids), ref, rtol=0, atol=0)
        merge_lora(model)
        torch.testing.assert_close(model(ids), on, rtol=0, atol=1e-5)
        unmerge_lora(model)
    save_lora(model, str(tmp_path))
    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert "base_model.model.model.language_model.layers.1.mlp.gate_proj.lora_A.weight" in keys and len(keys) == 42
    # the checkpoint written by save_pretrained keeps exactly the base keys (and the base weights)
    model.save_pretrained(str(tmp_path / "ckpt"))
    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert not any("lora" in k for k in saved)
    with torch.no_grad():
        # (unmerge after merge restores W up to float rounding)
        torch.testing.assert_close(Qwen3VL.from_pretrained(str(tmp_path / "ckpt")).eval()(ids), ref, rtol=0, atol=1e-5)


def test_bf16_model_keeps_float32_adapters_that_learn():
    model = _toy().to(torch.bfloat16)
    ids = torch.randint(0, 32, (2, 6))
    with torch.no_grad():
        ref = model(ids)
    apply_lora(model, r=4, alpha=4, dropout=0.0)
    assert all(p.dtype == torch.float32 for p in lora_parameters(model))
    assert model.model.language_model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref, rtol=0, atol=0)
    A = lora_modules(model)["model.language_model.layers.0.self_attn.q_proj"].lora_A.weight
    A0 = A.detach().clone()
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-5)
    for _ in range(2):  # step 1 moves B off zero, step 2 gives A a gradient
        model(ids).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    assert (A.detach() - A0).abs().max() > 1e-6  # a bf16 A (entries ~0.2, spacing ~1e-3) would not have moved


def test_merge_sums_in_float32_and_rounds_once():
    """merge_lora writes cast(float32(W) + delta) into a bf16 W: one rounding, not W + cast(delta) (two)."""
    model = _toy().to(torch.bfloat16)
    apply_lora(model, r=4, alpha=4, dropout=0.0)
    torch.manual_seed(1)
    layers = list(lora_modules(model).values())
    with torch.no_grad():
        for m in layers:
            m.lora_B.weight.normal_(0.0, 1e-3)  # deltas around the bf16 spacing of W
    before = [m.weight.detach().clone() for m in layers]
    deltas = [m.delta_weight().detach() for m in layers]
    merge_lora(model)
    rounded_twice = 0
    for m, w, d in zip(layers, before, deltas):
        assert torch.equal(m.weight, (w.float() + d).to(torch.bfloat16))
        rounded_twice += int((w + d.to(torch.bfloat16) != m.weight).sum())
    assert rounded_twice > 0  # the two-rounding merge would have given other weights here


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merged_model_is_the_adapter_model(dtype):
    """The merged (unloaded) model's logits against the adapter model's: float32 within 1e-5; bf16 within the
    bf16 rounding of the unmerged forward itself (its distance from the float32 forward of the same weights),
    while the adapter moves the logits several times further than that (a merge that lost it would fail)."""
    import copy

    policy = tiny_qwen3vl()
    apply_lora(policy, r=4, alpha=8, dropout=0.0)
    torch.manual_seed(1)
    with torch.no_grad():
        for m in lora_modules(policy).values():
            m.lora_B.weight.normal_(0.0, 1e-2)
        for name, p in policy.named_parameters():  # base weights representable in dtype; adapters float32
            if "lora_" not in name:
                p.copy_(p.to(dtype))
    model = copy.deepcopy(policy)
    for name, p in model.named_parameters():
        if "lora_" not in name:
            p.data = p.data.to(dtype)
    ids = torch.randint(0, 59, (2, 12))
    with torch.no_grad():
        exact = policy(ids)  # the float32 forward of the adapter model
        adapted = model(ids).float()
        with lora_enabled(model, False):
            no_adapter = model(ids).float()
        unload_lora(model, merge=True)
        merged = model(ids).float()
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-5)
        return
    rounding = (adapted - exact).abs().max()  # bf16 rounding of the unmerged forward
    assert (no_adapter - adapted).abs().max() > 3 * rounding
    assert (merged - adapted).abs().max() <= 2 * rounding
    assert (merged - exact).abs().max() <= 2 * rounding
