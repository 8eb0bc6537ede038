"""Behaviour tests of the plain-PyTorch Qwen3-VL on a tiny random model (every parameter re-drawn).

Parity with the reference implementation lives in tests/test_parity.py; here: internal consistency
(cached == uncached, padding invariance, generate semantics), checkpoint I/O and input validation."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from asru_min.model import Qwen3VL, Qwen3VLConfig, rope_positions
from asru_min.text import KVCache, TextConfig
from asru_min.vision import VisionConfig

IMG, VS, VE, PAD = 290, 288, 289, 0
P = 4  # patch size of the tiny model: a patch row has 3 * 2 * 4 * 4 = 96 values


def tiny_config(tie: bool = True) -> Qwen3VLConfig:
    return Qwen3VLConfig(
        text=TextConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                        rope_theta=10000.0, mrope_section=[6, 5, 5], eos_token_id=[5, 6], bos_token_id=1),
        vision=VisionConfig(depth=3, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                            num_position_embeddings=64, deepstack_visual_indexes=[0, 2], patch_size=P),
        image_token_id=IMG, video_token_id=291, vision_start_token_id=VS, vision_end_token_id=VE,
        tie_word_embeddings=tie)


def redraw(model: Qwen3VL, seed: int = 0) -> Qwen3VL:
    """Norm weights 1 + 0.1 N, biases 0.02 N, everything else 0.05 N: no tensor is an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()




@pytest.fixture(scope="module")
def model():
    return redraw(Qwen3VL(tiny_config()))


def image_prompt(grid_hw=(4, 6), before=(10, 11, 12), after=(13, 14, 15), seed=0):
    """ids (list) and pixel rows for one image with patch grid grid_hw (merged grid halves each side)."""
    h, w = grid_hw
    n = h * w // 4
    ids = list(before) + [VS] + [IMG] * n + [VE] + list(after)
    pix = torch.randn(h * w, 3 * 2 * P * P, generator=torch.Generator().manual_seed(seed))
    return ids, pix, torch.tensor([[1, h, w]])


def left_pad(rows):
    L = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def close(a, b, tol=1e-4):
    return (a - b).abs().max().item() <= tol


# ------------------------------------------------------------------------------------------------
# positions


def test_rope_positions_spec_example():
    # 3-D positions (docs/QWEN3VL.md, "Glue"): [t,t,vs, 6 x img (2x3 merged), ve,t,vs, 1 x img (1x1), ve,t,t], plus a left-padded text row
    ids = [10, 11, VS] + [IMG] * 6 + [VE, 12, VS, IMG, VE, 13, 14]
    text = [20, 21, 22, 23]
    batch, mask = left_pad([ids, text])
    pos, delta = rope_positions(batch, mask, torch.tensor([[1, 4, 6], [1, 2, 2]]), IMG, 2)
    assert pos[0, 0].tolist() == [0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7, 8, 9, 10, 11, 12]
    assert pos[1, 0].tolist()[:10] == [0, 1, 2, 3, 3, 3, 4, 4, 4, 6]
    assert pos[2, 0].tolist()[:10] == [0, 1, 2, 3, 4, 5, 3, 4, 5, 6]
    assert pos[:, 1].tolist() == [[0] * 12 + [0, 1, 2, 3]] * 3
    assert delta.tolist() == [-3, 0]


def test_rope_positions_skip_pads_anywhere():
    ids, _, grid = image_prompt()
    dense = torch.tensor([ids])
    p0, d0 = rope_positions(dense, torch.ones_like(dense), grid, IMG, 2)
    # pads at the start, inside the leading text and at the end of the row
    holes = torch.tensor([[PAD, PAD] + ids[:2] + [PAD] + ids[2:] + [PAD, PAD, PAD]])
    mask = (torch.arange(holes.shape[1]) > -1).long()[None].clone()
    mask[0, [0, 1, 4, -3, -2, -1]] = 0
    p1, d1 = rope_positions(holes, mask, grid, IMG, 2)
    assert torch.equal(p1[:, mask.bool()], p0[:, 0]) and p1[:, ~mask.bool()].eq(0).all()
    assert d1.tolist() == d0.tolist()


# ------------------------------------------------------------------------------------------------
# forward consistency


def test_tied_head_and_layer_returns_tensor(model):
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    ids = torch.tensor([[3, 4, 7, 9]])
    seen = []
    handle = model.model.language_model.layers[1].register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        base = model(ids)
    finally:
        handle.remove()
    assert isinstance(seen[0], torch.Tensor) and seen[0].shape == (1, 4, 64)
    # a hook that replaces the residual stream changes the logits
    handle = model.model.language_model.layers[1].register_forward_hook(lambda m, a, out: out * 0)
    try:
        zeroed = model(ids)
    finally:
        handle.remove()
    assert not close(base, zeroed, 1e-2)


@pytest.mark.parametrize("with_image", [False, True])
def test_cached_decode_equals_uncached(model, with_image):
    if with_image:
        ids, pix, grid = image_prompt()
        rows = [ids, [44, 45] + ids]  # the first row is left-padded by 2
        pix, grid = torch.cat([pix, pix.flip(0)]), grid.repeat(2, 1)
    else:
        rows, pix, grid = [[10, 11, 12, 13, 14], [40, 41, 42]], None, None
    prompt, mask = left_pad(rows)
    extra = torch.tensor([[7, 8, 9, 30], [31, 32, 33, 34]])
    full = torch.cat([prompt, extra], 1)
    full_mask = torch.cat([mask, torch.ones_like(extra)], 1)
    with torch.no_grad():
        ref = model(full, full_mask, pix, grid)
        cache = KVCache(model.config.text, 2, full.shape[1], torch.float32)
        out = [model(prompt, mask, pix, grid, cache=cache)]
        for t in range(extra.shape[1]):
            out.append(model(extra[:, t:t + 1], cache=cache))
    got = torch.cat(out, 1)
    real = full_mask.bool()
    assert close(got[real], ref[real])


def test_left_padded_batch_equals_each_alone(model):
    a, pix, grid = image_prompt()
    b = [50, 51, 52]
    batch, mask = left_pad([a, b])
    with torch.no_grad():
        both = model(batch, mask, pix, grid)
        alone_a = model(torch.tensor([a]), None, pix, grid)
        alone_b = model(torch.tensor([b]))
    assert close(both[0], alone_a[0])
    assert close(both[1, -3:], alone_b[0])


def test_middle_and_right_pads_match_unpadded(model):
    # GRPO/SFT rows: a left-padded prompt followed by a right-padded response, pads on both sides
    ids, pix, grid = image_prompt()
    resp = [60, 61, 62]
    row = [PAD, PAD] + ids + resp + [PAD, PAD]
    mask = torch.tensor([[0, 0] + [1] * (len(ids) + 3) + [0, 0]])
    row2 = [PAD] * 4 + [70, 71] + [PAD] * (len(row) - 9) + [72, 73, 74]  # pads in the middle
    mask2 = torch.tensor([[0] * 4 + [1, 1] + [0] * (len(row) - 9) + [1, 1, 1]])
    with torch.no_grad():
        padded = model(torch.tensor([row, row2]), torch.cat([mask, mask2]), pix, grid)
        dense = model(torch.tensor([ids + resp]), None, pix, grid)
        dense2 = model(torch.tensor([[70, 71, 72, 73, 74]]))
    assert close(padded[0][mask[0].bool()], dense[0])
    assert close(padded[1][mask2[0].bool()], dense2[0])


def test_image_features_equal_pixel_values(model):
    a, pa, ga = image_prompt((4, 6), seed=1)
    b, pb, gb = image_prompt((2, 4), before=(20,), seed=2)
    batch, mask = left_pad([a, b])
    pix, grid = torch.cat([pa, pb]), torch.cat([ga, gb])
    with torch.no_grad():
        via_pixels = model(batch, mask, pix, grid)
        feats = model.encode_images(pix, grid)
        via_feats = model(batch, mask, image_features=feats, image_grid_thw=grid)
        assert feats[0].shape == (8, 64) and len(feats[1]) == 2
    assert torch.equal(via_pixels, via_feats)


def test_two_images_one_prompt_equals_separate_encoding(model):
    # variable-length vision attention: packing two different-sized images == encoding each alone
    _, pa, ga = image_prompt((4, 6), seed=3)
    _, pb, gb = image_prompt((6, 2), seed=4)
    with torch.no_grad():
        emb, ds = model.encode_images(torch.cat([pa, pb]), torch.cat([ga, gb]))
        ea, da = model.encode_images(pa, ga)
        eb, db = model.encode_images(pb, gb)
    assert close(emb, torch.cat([ea, eb]), 1e-5)
    assert all(close(x, torch.cat([y, z]), 1e-5) for x, y, z in zip(ds, da, db))


def test_logits_to_keep(model):
    ids = torch.tensor([[3, 4, 7, 9, 11]])
    with torch.no_grad():
        assert close(model(ids, logits_to_keep=2), model(ids)[:, -2:], 1e-6)


# ------------------------------------------------------------------------------------------------
# generate


def test_greedy_generate_equals_repeated_uncached_argmax(model):
    a, pix, grid = image_prompt()
    b = [50, 51, 52, 53]
    batch, mask = left_pad([a, b])
    tokens, gmask = model.generate(batch, mask, pix, grid, max_new_tokens=6, eos_token_ids=[])
    again, _ = model.generate(batch, mask, pix, grid, max_new_tokens=6, eos_token_ids=[])
    assert torch.equal(tokens, again) and gmask.all() and tokens.shape == (2, 6)
    ids, m = batch, mask
    with torch.no_grad():
        for t in range(6):
            nxt = model(ids, m, pix, grid)[:, -1].argmax(-1)
            assert torch.equal(nxt, tokens[:, t])
            ids = torch.cat([ids, nxt[:, None]], 1)
            m = torch.cat([m, torch.ones_like(m[:, :1])], 1)


def test_num_samples_greedy_rows_equal_single(model):
    a, pix, grid = image_prompt()
    batch, mask = left_pad([a, [50, 51, 52]])
    one, _ = model.generate(batch, mask, pix, grid, max_new_tokens=5, eos_token_ids=[])
    three, _ = model.generate(batch, mask, pix, grid, max_new_tokens=5, num_samples=3, eos_token_ids=[])
    assert torch.equal(three, one.repeat_interleave(3, 0))


def test_sampling_reproducible_with_generator(model):
    a, pix, grid = image_prompt()
    batch = torch.tensor([a])

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return model.generate(batch, None, pix, grid, max_new_tokens=8, temperature=1.5, top_p=0.95,
                              num_samples=4, generator=g, eos_token_ids=[])[0]

    s1, s2, s3 = run(1), run(1), run(2)
    assert torch.equal(s1, s2)
    assert not torch.equal(s1, s3)
    assert len({tuple(r) for r in s1.tolist()}) > 1  # the 4 samples of one prompt differ


def test_each_row_stops_at_its_own_eos(model):
    batch, mask = left_pad([[10, 11, 12, 13], [40, 41, 42], [70, 71]])
    free, _ = model.generate(batch, mask, max_new_tokens=8, eos_token_ids=[])
    eos = int(free[0, 2])  # row 0 stops at step <= 2 (earlier if that token appeared before)
    tokens, gmask = model.generate(batch, mask, max_new_tokens=8, eos_token_ids=[eos])
    for r in range(3):
        hits = (free[r] == eos).nonzero()
        stop = int(hits[0]) + 1 if len(hits) else free.shape[1]
        assert gmask[r].sum().item() == stop
        assert torch.equal(tokens[r, :stop], free[r, :stop])
        assert tokens[r, stop:].eq(0).all() and not gmask[r, stop:].any()
    # the default EOS ids come from the config (a list)
    assert model.config.eos_token_ids == [5, 6]


# ------------------------------------------------------------------------------------------------
# checkpoint I/O


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip(tmp_path, tie):
    m = redraw(Qwen3VL(tiny_config(tie)), seed=1)
    m.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert ("lm_head.weight" in keys) == (not tie)
    module_shapes = {k: tuple(v.shape) for k, v in m.state_dict().items() if not (tie and k == "lm_head.weight")}
    assert module_shapes == m.checkpoint_keys() and keys == set(module_shapes)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_vl" and cfg["tie_word_embeddings"] == tie
    loaded = Qwen3VL.from_pretrained(tmp_path)
    ids, pix, grid = image_prompt()
    with torch.no_grad():
        assert torch.equal(loaded(torch.tensor([ids]), None, pix, grid), m(torch.tensor([ids]), None, pix, grid))
    assert (loaded.lm_head.weight is loaded.model.language_model.embed_tokens.weight) == tie


def test_save_skips_extra_parameters(tmp_path, model):
    # e.g. LoRA's lora_A / lora_B attached to an nn.Linear must not end up in the checkpoint
    proj = model.model.language_model.layers[0].self_attn.q_proj
    proj.lora_A = torch.nn.Parameter(torch.zeros(2, 64))
    try:
        model.save_pretrained(tmp_path)
    finally:
        del proj.lora_A
    assert not any("lora" in k for k in load_file(tmp_path / "model.safetensors"))


def test_sharded_load_and_legacy_config(tmp_path, model):
    model.save_pretrained(tmp_path / "one")
    tensors = load_file(tmp_path / "one" / "model.safetensors")
    shard = tmp_path / "sharded"
    shard.mkdir()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate([names[: len(names) // 2], names[len(names) // 2:]]):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(shard / fname))
        weight_map.update({k: fname for k in part})
    (shard / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    # legacy layout of the released checkpoints: rope_scaling + rope_theta
    cfg = json.loads((tmp_path / "one" / "config.json").read_text())
    rp = cfg["text_config"].pop("rope_parameters")
    cfg["text_config"]["rope_theta"] = rp["rope_theta"]
    cfg["text_config"]["rope_scaling"] = {"rope_type": "default", "mrope_section": rp["mrope_section"],
                                          "mrope_interleaved": True}
    cfg["vision_config"]["model_type"] = "qwen3_vl"
    (shard / "config.json").write_text(json.dumps(cfg))
    loaded = Qwen3VL.from_pretrained(shard)
    assert loaded.config.text.rope_theta == 10000.0 and loaded.config.text.mrope_section == [6, 5, 5]
    ids, pix, grid = image_prompt()
    with torch.no_grad():
        assert torch.equal(loaded(torch.tensor([ids]), None, pix, grid), model(torch.tensor([ids]), None, pix, grid))


def test_bf16_keeps_fp32_top1(tmp_path, model):
    model.save_pretrained(tmp_path)
    bf = Qwen3VL.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf.dtype == torch.bfloat16
    a, pix, grid = image_prompt()
    b = [50, 51, 52]
    batch, mask = left_pad([a, b])
    with torch.no_grad():
        l32 = model(batch, mask, pix, grid)[mask.bool()]
        l16 = bf(batch, mask, pix, grid)[mask.bool()].float()
        tokens, _ = bf.generate(batch, mask, pix, grid, max_new_tokens=3, eos_token_ids=[])
    assert torch.isfinite(l16).all() and tokens.shape == (2, 3)
    top2 = l32.topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.05  # positions where fp32 has a clear winner
    assert clear.sum() >= 5
    assert torch.equal(l16.argmax(-1)[clear], l32.argmax(-1)[clear])
    assert (l16 - l32).abs().max() < 0.1


# ------------------------------------------------------------------------------------------------
# bad input


def test_load_errors(tmp_path, model):
    with pytest.raises(FileNotFoundError):
        Qwen3VL.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        Qwen3VL.from_pretrained(tmp_path / "empty")
    model.save_pretrained(tmp_path / "ok")
    weights = tmp_path / "ok" / "model.safetensors"
    data = weights.read_bytes()
    weights.rename(tmp_path / "ok" / "moved.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Qwen3VL.from_pretrained(tmp_path / "ok")
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        Qwen3VL.from_pretrained(tmp_path / "ok")


def test_mismatched_tensors_named_in_one_error(tmp_path, model):
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.visual.blocks.1.attn.qkv.bias"]
    tensors["model.visual.extra.weight"] = torch.zeros(3)
    tensors["model.language_model.norm.weight"] = torch.zeros(65)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        Qwen3VL.from_pretrained(tmp_path)
    msg = str(err.value)
    assert "model.visual.blocks.1.attn.qkv.bias" in msg and "model.visual.extra.weight" in msg
    assert "model.language_model.norm.weight" in msg and "(65,)" in msg


def test_input_errors(model):
    ids, pix, grid = image_prompt()
    with pytest.raises(ValueError, match="placeholder"):
        model(torch.tensor([ids[:4] + ids[5:]]), None, pix, grid)  # one placeholder fewer than features
    with pytest.raises(ValueError, match="placeholder"):
        model(torch.tensor([ids]))  # placeholders, no image
    with pytest.raises(ValueError):
        model(torch.tensor([ids + ids]), None, pix, grid)  # two runs, one image
    too_long = torch.full((1, 257), 7)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(too_long)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(too_long, max_new_tokens=2)


# ------------------------------------------------------------------------------------------------
# torch.compile


def test_forward_compiles():
    """The no-grad forward and the training forward run under torch.compile (eager backend: the tracing without
    code generation) and give the uncompiled logits and gradients."""
    m = redraw(Qwen3VL(tiny_config()), seed=7)
    batch, mask = left_pad([[10, 11, 12, 13, 14], [40, 41]])
    compiled = torch.compile(m, backend="eager")
    with torch.no_grad():
        assert torch.allclose(compiled(batch, mask), m(batch, mask), atol=1e-6)
    grads = []
    for fn in (compiled, m):
        m.zero_grad()
        fn(batch, mask).logsumexp(-1).mean().backward()
        grads.append([p.grad.clone() for p in m.model.language_model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


# ------------------------------------------------------------------------------------------------
# grouped-query attention in the form CUDA's fused kernels take


@pytest.mark.parametrize("nq,nkv", [(4, 2), (6, 1), (4, 4)])
@pytest.mark.parametrize("L", [1, 7])
def test_grouped_attention_fused_kernel_form_equals_plain(nq, nkv, L):
    """With a padding mask, the fused-kernel form (decode: query heads folded into queries; longer: K/V expanded)
    equals today's SDPA call with enable_gqa and the written-out definition, float32."""
    from asru_min.model import attention_mask_4d
    from asru_min.text import grouped_attention

    g = torch.Generator().manual_seed(nq * 10 + L)
    B, d, past = 3, 16, 5
    S = past + L
    q, k, v = (torch.randn(B, n, m, d, generator=g) for n, m in ((nq, L), (nkv, S), (nkv, S)))
    real = torch.ones(B, S, dtype=torch.bool)
    real[0, :3], real[1, 2] = False, False  # left pads and a pad in the middle
    mask = attention_mask_4d(real, L, past)  # (B, 1, L, S)
    plain = grouped_attention(q, k, v, mask, fused_kernel_form=False)
    fused = grouped_attention(q, k, v, mask, fused_kernel_form=True)
    kk, vv = k.repeat_interleave(nq // nkv, 1), v.repeat_interleave(nq // nkv, 1)
    scores = (q @ kk.transpose(-1, -2) / d ** 0.5).masked_fill(~mask, -torch.inf)
    definition = scores.softmax(-1) @ vv
    assert (fused - plain).abs().max() <= 1e-6 and (plain - definition).abs().max() <= 1e-5


def test_model_in_fused_kernel_form_equals_plain(model, monkeypatch):
    """The whole padded forward and a padded, fused, compacted sampled generation give the same logits / tokens
    with every attention call in the fused-kernel form (what runs on CUDA)."""
    import functools

    from asru_min import text

    a, pix, grid = image_prompt()
    batch, mask = left_pad([a, [50, 51, 52], [60, 61, 62, 63, 64]])

    def run():
        with torch.no_grad():
            logits = model(batch, mask, pix, grid)
        tokens, _ = model.generate(batch, mask, pix, grid, max_new_tokens=6, temperature=1.0, top_p=0.9,
                                   num_samples=2, generator=[torch.Generator().manual_seed(i) for i in range(3)])
        return logits, tokens

    plain_logits, plain_tokens = run()
    monkeypatch.setattr(text, "grouped_attention", functools.partial(text.grouped_attention, fused_kernel_form=True))
    fused_logits, fused_tokens = run()
    assert (fused_logits - plain_logits).abs().max() <= 1e-5 and torch.equal(fused_tokens, plain_tokens)
