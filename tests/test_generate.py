"""Generation internals: the sort-free sampler against the sort sampler, per-prompt sampling streams, finished
rows leaving the decode batch, suppressed tokens, the fused projections (with and without LoRA) and hooks during
decoding."""

import copy

import pytest
import torch

from asru_min.generate import fused_projections, sample_next, sample_sorted
from asru_min.lora import apply_lora, lora_enabled, lora_parameters
from asru_min.model import Qwen3VL
from test_model import IMG, image_prompt, left_pad, redraw, tiny_config

# ------------------------------------------------------------------------------------------------
# sampler

# ranks 0..11 with ties: three at 1.5 (ids 1-3), two at 0.5 (ids 5, 6) and a token of probability 0 (id 9)
LOGITS = torch.tensor([2.0, 1.5, 1.5, 1.5, 1.0, 0.5, 0.5, 0.0, -1.0, -float("inf"), -2.0, 0.25])
DRAWS = 50_000
FREQ_TOL = 0.015  # max |frequency difference| of two samplers over DRAWS draws: ~4.7 sigma at p = 0.5


def _freq(sampler, temperature, top_p, seed):
    g = torch.Generator().manual_seed(seed)
    ids = sampler(LOGITS.repeat(DRAWS, 1), temperature, top_p, g)
    return torch.bincount(ids, minlength=LOGITS.numel()).double() / DRAWS


@pytest.mark.parametrize("temperature,top_p", [
    (1.0, 1.0), (0.7, 0.9), (1.0, 0.6), (1.0, 0.5),  # 0.5: the nucleus boundary falls inside the 1.5 ties
    (1.3, 0.8), (2.0, 0.95), (0.5, 0.99)])
def test_sort_free_sampler_matches_sort_sampler(temperature, top_p):
    fast = _freq(sample_next, temperature, top_p, seed=1)
    ref = _freq(sample_sorted, temperature, top_p, seed=2)
    assert torch.equal(fast > 0, ref > 0)  # the same kept set, ties included
    assert (fast - ref).abs().max().item() <= FREQ_TOL
    assert fast[9] == 0
    if (temperature, top_p) == (1.0, 0.5):  # the nucleus cuts the 1.5 ties: the lowest ids (1, 2) stay
        assert (fast > 0).nonzero().flatten().tolist() == [0, 1, 2]


def test_sampler_exact_cases():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 300, generator=g)
    assert torch.equal(sample_next(logits, 0.0, 0.5, g), logits.argmax(-1))  # temperature 0: greedy
    assert torch.equal(sample_next(logits, 1.0, 1e-6, g), logits.argmax(-1))
    # a flat distribution and a tiny top_p: rejection almost never accepts, the sort fallback keeps id 0 only
    assert sample_next(torch.zeros(4, 300), 1.0, 1e-6, g).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="top_p"):
        sample_next(logits, 1.0, 0.0, g)


# ------------------------------------------------------------------------------------------------
# generate


@pytest.fixture(scope="module")
def model():
    return redraw(Qwen3VL(tiny_config()))


def _sampled(model, eos, compact, streams=None):
    """4 prompts (one with an image, left pads) x 3 samples at temperature 1.5, top-p 0.9, one stream per
    prompt."""
    a, pix, grid = image_prompt()
    batch, mask = left_pad([a, [50, 51, 52, 53], [70, 71], [20, 21, 22, 23, 24]])
    streams = streams or [torch.Generator().manual_seed(100 + i) for i in range(4)]
    return model.generate(batch, mask, pix, grid, max_new_tokens=12, temperature=1.5, top_p=0.9,
                          num_samples=3, generator=streams, eos_token_ids=eos, compact=compact)


def test_finished_rows_leave_the_batch_with_the_same_tokens(model):
    """Rows that emit EOS at different steps leave the decode batch (the batch shrinks); every row's tokens equal
    the lockstep run's and, up to its EOS, the tokens it samples when nothing ever finishes."""
    free, _ = _sampled(model, [], compact=True)
    eos = [int(free[0, 2]), int(free[4, 5]), int(free[7, 8]), int(free[10, 1])]  # rows finish at different steps
    sizes = []
    handle = model.model.language_model.layers[0].register_forward_hook(lambda m, a, out: sizes.append(out.shape[0]))
    try:
        compact, compact_mask = _sampled(model, eos, compact=True)
        n_compact = len(sizes)
        lockstep, lockstep_mask = _sampled(model, eos, compact=False)
    finally:
        handle.remove()
    assert torch.equal(compact, lockstep) and torch.equal(compact_mask, lockstep_mask)
    stops = []
    for r in range(free.shape[0]):
        hits = torch.isin(free[r], torch.tensor(eos)).nonzero()
        stop = int(hits[0]) + 1 if len(hits) else free.shape[1]
        stops.append(stop)
        assert compact_mask[r].sum().item() == stop and torch.equal(compact[r, :stop], free[r, :stop])
        assert compact[r, stop:].eq(0).all()
    assert len(set(stops)) >= 4 and max(stops) == free.shape[1]  # several finishing steps, one row never finishes
    decode_sizes = sizes[1:n_compact]  # after the prefill (4 prompts): one forward per decode step
    assert decode_sizes[0] == 12 and decode_sizes[-1] < decode_sizes[0]
    assert decode_sizes == sorted(decode_sizes, reverse=True)
    assert sizes[n_compact + 1:] == [12] * (len(sizes) - n_compact - 1)  # lockstep keeps every row


def test_a_prompts_samples_depend_only_on_its_stream(model):
    """With one generator per prompt, a prompt's samples are the same alone or beside other prompts."""
    both, _ = _sampled(model, [], compact=True)
    a, pix, grid = image_prompt()
    alone, _ = model.generate(torch.tensor([a]), None, pix, grid, max_new_tokens=12, temperature=1.5, top_p=0.9,
                              num_samples=3, generator=[torch.Generator().manual_seed(100)], eos_token_ids=[])
    assert torch.equal(alone, both[:3])
    text, _ = model.generate(torch.tensor([[70, 71]]), None, max_new_tokens=12, temperature=1.5, top_p=0.9,
                             num_samples=3, generator=[torch.Generator().manual_seed(102)], eos_token_ids=[])
    assert torch.equal(text, both[6:9])
    with pytest.raises(ValueError, match="one per prompt"):
        _sampled(model, [], compact=True, streams=[torch.Generator()])


def test_suppress_token_ids(model):
    """By default nothing is banned (as in the reference); suppress_token_ids are never emitted."""
    batch, mask = left_pad([[10, 11, 12, 13], [40, 41]])
    bonus = torch.zeros(300)
    bonus[IMG] = 100.0  # make the image placeholder the greedy choice at every step
    handle = model.lm_head.register_forward_hook(lambda m, a, out: out + bonus)
    try:
        free, _ = model.generate(batch, mask, max_new_tokens=4, eos_token_ids=[])
        banned, _ = model.generate(batch, mask, max_new_tokens=4, eos_token_ids=[],
                                   suppress_token_ids=[IMG, model.config.video_token_id])
    finally:
        handle.remove()
    assert free.eq(IMG).all()
    assert not torch.isin(banned, torch.tensor([IMG, model.config.video_token_id])).any()
    plain, _ = model.generate(batch, mask, max_new_tokens=4, eos_token_ids=[])
    assert torch.equal(banned[:, 0], plain[:, 0])  # the ban leaves the other logits alone


def _logits(model, fused: bool):
    a, pix, grid = image_prompt()
    batch, mask = left_pad([a, [50, 51, 52]])
    with torch.no_grad():
        if not fused:
            return model(batch, mask, pix, grid)
        with fused_projections(model.model.language_model):
            return model(batch, mask, pix, grid)


def _step(model, params):
    """One optimizer step on a real loss: every trained tensor changes in place."""
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    model(ids).logsumexp(-1).mean().backward()
    opt.step()
    opt.zero_grad()


def _fused(module) -> bool:
    """The module runs a fused forward (set by `fused_projections` on the instance)."""
    return "forward" in vars(module)


def test_fused_equals_unfused_and_is_dropped_after_generation():
    m = redraw(Qwen3VL(tiny_config()), seed=3)
    assert torch.allclose(_logits(m, True), _logits(m, False), atol=1e-5)
    _step(m, list(m.parameters()))  # full-parameter training step: the next generation fuses the new weights
    assert torch.allclose(_logits(m, True), _logits(m, False), atol=1e-5)
    lm = m.model.language_model
    with fused_projections(lm):
        assert all(_fused(layer.self_attn) and _fused(layer.mlp) for layer in lm.layers)
    m.generate(torch.tensor([[10, 11, 12]]), max_new_tokens=3, eos_token_ids=[])
    for copy_ in (m, copy.deepcopy(m)):  # nothing of the fused weights stays on the model or in a copy of it
        assert not any(_fused(module) for module in copy_.modules())
        assert not any(isinstance(v, torch.Tensor) for module in copy_.modules() for v in vars(module).values())


def test_fused_cache_folds_lora():
    m = redraw(Qwen3VL(tiny_config()), seed=4)
    apply_lora(m, r=4, alpha=8.0, dropout=0.1)
    base = m.model.language_model.layers[1].mlp.gate_proj.weight.clone()
    with torch.no_grad():
        for p in lora_parameters(m):
            p.normal_(0, 0.05)  # B = 0 at init would make the adapters a no-op
    m.eval()
    assert torch.allclose(_logits(m, True), _logits(m, False), atol=1e-5)
    with lora_enabled(m, False):
        off_fused, off = _logits(m, True), _logits(m, False)
    assert torch.allclose(off_fused, off, atol=1e-5)
    before = _logits(m, True)
    assert not torch.allclose(before, off, atol=1e-3)  # the adapters matter
    m.train()
    _step(m, lora_parameters(m))
    m.eval()
    after = _logits(m, True)
    assert torch.allclose(after, _logits(m, False), atol=1e-5) and not torch.allclose(after, before, atol=1e-4)
    assert torch.equal(m.model.language_model.layers[1].mlp.gate_proj.weight, base)  # base weights untouched
    m.train()  # LoRA dropout active: a folded weight cannot express it, so nothing is fused
    with fused_projections(m.model.language_model):
        assert not any(_fused(layer.self_attn) or _fused(layer.mlp) for layer in m.model.language_model.layers)


def test_hooks_see_every_decode_step(model):
    batch, mask = left_pad([[10, 11, 12, 13], [40, 41]])
    plain, _ = model.generate(batch, mask, max_new_tokens=4, eos_token_ids=[])
    layer_calls, proj_calls = [], []
    layer = model.model.language_model.layers[1]
    h1 = layer.register_forward_hook(lambda m, a, out: layer_calls.append(out.shape[1]))
    h2 = model.model.language_model.layers[0].self_attn.q_proj.register_forward_hook(
        lambda m, a, out: proj_calls.append(out.shape[1]))
    try:
        hooked, _ = model.generate(batch, mask, max_new_tokens=4, eos_token_ids=[])
    finally:
        h1.remove()
        h2.remove()
    assert layer_calls == [4, 1, 1, 1] and proj_calls == [4, 1, 1, 1]  # the prefill and every decode step
    assert torch.equal(hooked, plain)
    # a hook that changes the residual stream changes the tokens, at every step
    h = layer.register_forward_hook(lambda m, a, out: out * 0)
    try:
        zeroed, _ = model.generate(batch, mask, max_new_tokens=4, eos_token_ids=[])
    finally:
        h.remove()
    assert not torch.equal(zeroed, plain) and (zeroed == zeroed[:, :1]).all()  # constant h -> constant token


def test_lora_on_a_bf16_model_is_not_folded():
    """W + s B A rounded to bf16 would lose a small adapter's effect; such layers run as modules (A, B in float32),
    so the no-grad (fused) forward gives exactly the training forward's logits."""
    m = redraw(Qwen3VL(tiny_config()), seed=5).to(torch.bfloat16)
    apply_lora(m, r=4, alpha=8.0, dropout=0.0)
    with torch.no_grad():
        for p in lora_parameters(m):
            p.normal_(0, 1e-3)  # a small, early adapter
    m.eval()
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    with torch.no_grad(), fused_projections(m.model.language_model):
        assert not any(_fused(layer.self_attn) for layer in m.model.language_model.layers)
        fused = m(ids)
    assert torch.equal(fused, m(ids).detach())
