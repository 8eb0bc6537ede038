import contextlib
import copy
import math
import json
import warnings

import pytest
import torch
import torch.nn as nn

from asru_min.data import qa_batch
from asru_min.grpo import GRPOConfig, group_advantages, policy_loss
from asru_min.optim import optimizer_step, token_logprobs
from asru_min.train import TrainConfig


CLIP = dict(clip_low=0.2, clip_high=0.3, kl_coef=0.1)  # the release's clip range and KL coefficient


def grpo_config(**changes) -> GRPOConfig:
    """The run's stage-2 settings (TrainConfig, the one source of defaults) with a test's changes."""
    import dataclasses
    return dataclasses.replace(TrainConfig().grpo(), **changes)


# ---------------------------------------------------------------------------------------------- advantages


def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.1, 0.1, 0.1, 0.9])  # two groups of 4
    adv = group_advantages(rewards, group_size=4, eps=0.0)
    g0 = torch.tensor([1.0, 0.0, 0.5, 0.5])
    std0 = math.sqrt(((g0 - 0.5) ** 2).sum().item() / 3)  # unbiased: divide by G - 1
    assert torch.allclose(adv[:4], (g0 - 0.5) / std0, atol=1e-6)
    g1 = torch.tensor([0.1, 0.1, 0.1, 0.9])
    std1 = math.sqrt(((g1 - 0.3) ** 2).sum().item() / 3)
    assert torch.allclose(adv[4:], (g1 - 0.3) / std1, atol=1e-6)
    assert abs(adv[:4].sum().item()) < 1e-6 and abs(adv[4:].sum().item()) < 1e-6


def test_group_advantages_equal_rewards_are_zero_not_nan():
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, group_size=3)
    assert torch.isfinite(adv).all()
    assert torch.equal(adv, torch.zeros(6))


def test_group_advantages_bad_input():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), group_size=2)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(4), group_size=1)


# ---------------------------------------------------------------------------------------------- policy loss


def _ratios_to_logps(ratios):
    old = torch.full_like(ratios, -2.0)
    return old + torch.log(ratios), old


def test_policy_loss_clips_both_sides_hand_computed():
    # response 0: A = +1, ratios 1.5 (clipped at 1.3), 1.0, 0.5 (below range, but min keeps 0.5: not clipped)
    # response 1: A = -2, ratios 0.5 (clipped at 0.8), 1.5 (above range, min keeps 1.5: not clipped), pad
    ratios = torch.tensor([[1.5, 1.0, 0.5], [0.5, 1.5, 1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -2.0])
    logp, old = _ratios_to_logps(ratios)
    loss, stats = policy_loss(logp, old, logp.clone(), adv, mask, clip_low=0.2, clip_high=0.3, kl_coef=0.1)
    # per-token -min(r A, clip(r) A): [-1.3, -1.0, -0.5], [+1.6, +3.0]
    expected = (-1.3 - 1.0 - 0.5 + 1.6 + 3.0) / 5
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert stats["clip_frac"] == pytest.approx(2 / 5)
    assert stats["clip_low_frac"] == pytest.approx(2 / 5)
    assert stats["clip_high_frac"] == pytest.approx(2 / 5)
    assert stats["kl"] == pytest.approx(0.0, abs=1e-7)
    # the masked (pad) token is not in the loss: changing its values changes nothing
    logp2 = logp.clone()
    logp2[1, 2] = 50.0
    loss2, _ = policy_loss(logp2, old, logp2.clone(), adv, mask, **CLIP)
    assert loss2.item() == pytest.approx(expected, abs=1e-5)


def test_policy_loss_k3_value_and_gradient_sign():
    # ratio 1 everywhere (logp == old), so only the KL term remains; ref - logp = ln 2 and -1
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.0 + math.log(2.0), -3.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = policy_loss(logp, logp.detach(), ref, torch.zeros(1), mask, **{**CLIP, "kl_coef": 0.5})
    k3 = [2.0 - math.log(2.0) - 1.0, math.exp(-1.0) + 1.0 - 1.0]
    assert stats["kl"] == pytest.approx(sum(k3) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(0.5 * sum(k3) / 2, abs=1e-6)
    loss.backward()
    # d k3 / d logp = 1 - exp(ref - logp): the KL pulls logp toward ref
    assert logp.grad[0, 0].item() == pytest.approx(0.5 * (1 - 2.0) / 2, abs=1e-6)
    assert logp.grad[0, 1].item() == pytest.approx(0.5 * (1 - math.exp(-1.0)) / 2, abs=1e-6)


def test_policy_loss_keeps_eos_when_pad_equals_eos():
    # tokens of two responses where pad id == EOS id == 2: [7, 2, 2] and [5, 9, 2]. The first 2 of row 0 is the
    # real EOS and must be trained; generate's mask is True up to and including the EOS.
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    logp = torch.tensor([[-1.0, -0.5, -9.0], [-1.0, -1.0, -0.2]], requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    loss, _ = policy_loss(logp, logp.detach(), logp.detach(), adv, mask, **{**CLIP, "kl_coef": 0.0})
    loss.backward()
    # on-policy (ratio 1) d loss / d logp = -A / (number of masked tokens) on every masked token, EOS included
    assert logp.grad[0, 1].item() == pytest.approx(-1.0 / 5)
    assert logp.grad[1, 2].item() == pytest.approx(1.0 / 5)
    assert logp.grad[0, 2].item() == 0.0
    assert loss.item() == pytest.approx((-1 - 1 + 1 + 1 + 1) / 5)


def test_policy_loss_per_token_advantages_and_shape_check():
    logp = torch.zeros(2, 3)
    adv_tok = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    loss, _ = policy_loss(logp, logp, logp, adv_tok, torch.ones(2, 3, dtype=torch.bool), **CLIP)
    assert loss.item() == pytest.approx(-6.0 / 6)
    with pytest.raises(ValueError):
        policy_loss(logp, logp, logp[:, :2], adv_tok[:, 0], torch.ones(2, 3), **CLIP)


# ---------------------------------------------------------------------------------------------- log-probs


class BagOfTokensLM(nn.Module):
    """A causal toy LM that honours attention_mask, logits_to_keep and return_hidden like Qwen3VL.forward:
    the state at position t is the running mean of the embeddings of the real tokens <= t."""

    def __init__(self, vocab=11, dim=8):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(64, dim))
        self.lm_head = nn.Linear(dim, vocab)

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, return_hidden=False, **unused):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        m = attention_mask.float().unsqueeze(-1)  # (N, L, 1)
        positions = (attention_mask.cumsum(1) - 1).clamp(min=0)  # positions over real tokens only
        x = (self.embed(input_ids) + self.pos[positions]) * m
        h = x.cumsum(1) / m.cumsum(1).clamp(min=1)
        h = torch.tanh(h)[:, -logits_to_keep:] if logits_to_keep > 0 else torch.tanh(h)
        return h if return_hidden else self.lm_head(h)


def test_token_logprobs_equals_manual_per_row_computation():
    model = BagOfTokensLM()
    pad = 0
    # row = [left pads | prompt | response | right pads]
    rows = [([3, 4, 5], [6, 7, 1]), ([8], [9, 1]), ([3, 3], [1])]
    P = max(len(p) for p, _ in rows)
    T = max(len(r) for _, r in rows)
    ids = torch.full((3, P + T), pad)
    att = torch.zeros(3, P + T, dtype=torch.long)
    resp = torch.zeros(3, P + T, dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        ids[i, P - len(p) : P] = torch.tensor(p)
        ids[i, P : P + len(r)] = torch.tensor(r)
        att[i, P - len(p) : P + len(r)] = 1
        resp[i, P : P + len(r)] = True
    got = token_logprobs(model, {"input_ids": ids, "attention_mask": att}, resp)
    assert got.shape == (3, P + T)
    for i, (p, r) in enumerate(rows):
        seq = torch.tensor([p + r])
        logp_all = torch.log_softmax(model(seq), dim=-1)[0]  # (len, V), no padding at all
        for j, tok in enumerate(r):
            t = len(p) + j
            assert got[i, P + j].item() == pytest.approx(logp_all[t - 1, tok].item(), abs=1e-5)
    assert torch.equal(got[~resp], torch.zeros(int((~resp).sum())))
    with pytest.raises(ValueError):
        token_logprobs(model, {"input_ids": ids, "attention_mask": att}, torch.ones_like(resp))


# ---------------------------------------------------------------------------------------------- skipping


def test_non_finite_loss_skips_the_step():
    torch.manual_seed(0)
    lin = nn.Linear(3, 1)
    before = [p.detach().clone() for p in lin.parameters()]
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    loss = lin(torch.ones(1, 3)).sum() * float("nan")
    with pytest.warns(UserWarning, match="non-finite"):
        assert optimizer_step(loss, list(lin.parameters()), opt, grad_clip=1.0) is False
    # finite loss but a NaN gradient (d sqrt(x)/dx at 0 is inf, times 0 -> NaN)
    loss = torch.sqrt((lin.weight * 0).sum())
    assert torch.isfinite(loss)
    with pytest.warns(UserWarning, match="non-finite"):
        assert optimizer_step(loss, list(lin.parameters()), opt, grad_clip=1.0) is False
    for b, p in zip(before, lin.parameters()):
        assert torch.equal(b, p)
    assert len(opt.state) == 0  # AdamW moments untouched
    # a finite loss does step
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert optimizer_step(lin(torch.ones(1, 3)).sum(), list(lin.parameters()), opt, 1.0) is True
    assert not torch.equal(before[0], lin.weight)


# ---------------------------------------------------------------------------------------------- the loop


class ToyGenLM(BagOfTokensLM):
    """BagOfTokensLM plus `generate` with the Qwen3VL.generate contract (prompt-major rows, mask up to and
    including the EOS, pad 0 after it)."""

    config = type("Config", (), {"image_token_id": -1, "video_token_id": -2})  # rollout suppresses these ids

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens=8, temperature=1.0, top_p=1.0,
                 num_samples=1, generator=None, eos_token_ids=(1,), **unused):
        """generator: one per prompt (a list), as rollouts pass them; prompt b's rows draw from generator b."""
        ids = input_ids.repeat_interleave(num_samples, 0)
        att = attention_mask.repeat_interleave(num_samples, 0)
        out, mask = [], []
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        for _ in range(max_new_tokens):
            probs = torch.softmax(self(ids, att)[:, -1] / temperature, dim=-1)
            tok = torch.cat([torch.multinomial(p, 1, generator=g).squeeze(1)
                             for p, g in zip(probs.split(num_samples), generator)])
            tok = torch.where(done, torch.zeros_like(tok), tok)
            mask.append(~done)
            out.append(tok)
            done = done | torch.isin(tok, torch.tensor(list(eos_token_ids)))
            ids = torch.cat([ids, tok[:, None]], 1)
            att = torch.cat([att, (~done | mask[-1]).long()[:, None]], 1)
        return torch.stack(out, 1), torch.stack(mask, 1)


class ToyProcessor:
    """Characters 'a'..'i' are tokens 2..10; 0 = pad, 1 = EOS."""

    eos_token_ids = [1]
    pad_token_id = 0

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return messages[0]["content"]

    def __call__(self, text, images=None):
        rows = [[ord(c) - ord("a") + 2 for c in t] for t in text]
        P = max(len(r) for r in rows)
        ids = torch.tensor([[0] * (P - len(r)) + r for r in rows])
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 2 + ord("a")) for i in ids if i >= 2)


class ToyQA:
    def __init__(self, question, truth):
        self.question, self.ground_truth, self.image, self.kind = question, truth, None, "gen"

    def messages(self):
        return [{"role": "user", "content": self.question}]

    def images(self):
        return []


def test_grpo_steps_raise_probability_of_rewarded_token(tmp_path):
    from asru_min.grpo import train_grpo

    model, proc = ToyGenLM(), ToyProcessor()
    samples = [(ToyQA("abd", "x"), True), (ToyQA("ggh", "y"), False)]
    target = ord("c") - ord("a") + 2

    def p_target():
        with torch.no_grad():
            batch = proc(["abd", "ggh"])
            return torch.softmax(model(batch["input_ids"], batch["attention_mask"])[:, -1], -1)[:, target].mean().item()

    ref_model = ToyGenLM()  # a frozen copy as the reference policy
    ref_model.load_state_dict(model.state_dict())
    before = p_target()
    cfg = grpo_config(group_size=8, temperature=1.0, top_p=1.0, max_new_tokens=4, prompts_per_step=2, epochs=6,
                     lr=0.05, kl_coef=0.01, seed=0)
    reward = lambda response, truth, forget: 1.0 if "c" in response else 0.0  # noqa: E731

    class Ref:  # reference policy = the frozen copy: swap its weights in, put the trained ones back after
        def __enter__(self):
            self.saved = {k: v.clone() for k, v in model.state_dict().items()}
            model.load_state_dict(ref_model.state_dict())

        def __exit__(self, *exc):
            model.load_state_dict(self.saved)

    log = tmp_path / "grpo.jsonl"
    records = train_grpo(model, proc, samples, cfg, log_path=str(log), reward_fn=reward, reference=Ref,
                         progress=lambda s: None)
    after = p_target()
    assert len(records) == 6 and len(log.read_text().splitlines()) == 6
    assert after > before + 0.1, (before, after)
    assert records[-1]["reward_mean"] > records[0]["reward_mean"]
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first step starts at the reference
    assert records[-1]["kl"] > 0.0
    assert all(r["skipped_steps"] == 0 for r in records)


def test_grpo_off_policy_minibatches_and_exact_resume():
    """ppo_epochs=2 with mini-batches uses stored old log-probs (ratio != 1, clipping happens); stopping after
    3 steps and resuming from (weights, optimiser state, step 3) gives exactly the uninterrupted run."""
    import contextlib

    from asru_min.grpo import make_optimizer, train_grpo

    samples = [(ToyQA("abd", "x"), True), (ToyQA("ggh", "y"), False), (ToyQA("fea", "z"), True)]
    cfg = grpo_config(group_size=4, temperature=1.0, top_p=1.0, max_new_tokens=4, prompts_per_step=2, epochs=3,
                     mini_batch_size=4, ppo_epochs=2, lr=0.3, kl_coef=0.0, seed=3)
    reward = lambda response, truth, forget: float(response.count("c")) / 4  # noqa: E731
    quiet = dict(reward_fn=reward, reference=contextlib.nullcontext, progress=lambda s: None)

    full = ToyGenLM()
    records = train_grpo(full, ToyProcessor(), samples, cfg, **quiet)
    assert len(records) == 6  # 3 epochs x ceil(3 / 2)
    assert records[0]["optimizer_steps"] == 4  # 8 rows / 4 per mini-batch x 2 inner epochs
    assert max(r["clip_frac"] for r in records) > 0.0
    assert any(abs(r["ratio_mean"] - 1.0) > 1e-4 for r in records)

    part = ToyGenLM()
    saved = {}
    stop = lambda step, record, opt: saved.update(step=step, opt=copy.deepcopy(opt.state_dict()),  # noqa: E731
                                                  w={k: v.clone() for k, v in part.state_dict().items()})
    train_grpo(part, ToyProcessor(), samples, cfg, on_step=lambda s, r, o: stop(s, r, o) if s == 2 else None,
               **quiet)
    resumed = ToyGenLM()
    resumed.load_state_dict(saved["w"])
    opt = make_optimizer([p for p in resumed.parameters() if p.requires_grad], cfg)
    opt.load_state_dict(saved["opt"])
    rest = train_grpo(resumed, ToyProcessor(), samples, cfg, optimizer=opt, start_step=saved["step"] + 1, **quiet)
    assert [r["step"] for r in rest] == [3, 4, 5]
    assert [r["reward_mean"] for r in rest] == [r["reward_mean"] for r in records[3:]]
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


# ---------------------------------------------------------------------------------------------- tiny real Qwen3VL


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
SENTENCES = ["Who is this person? Where was she born?", "She was born in Lisbon and works as a biologist.",
             "I don't know who this is.", "user assistant system", "What is the job of the person?"]
# small images: 64x64 -> 4x4 patches of 16 -> 4 merged image tokens
PRE = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
       "size": {"shortest_edge": 64 * 64, "longest_edge": 64 * 64}, "rescale_factor": 1 / 255, "resample": 3}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, processor): a random 2-layer Qwen3VL (hidden 32) and a byte-level BPE tokenizer with the Qwen
    special tokens, built in the test so nothing is downloaded."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from asru_min.model import Qwen3VL, Qwen3VLConfig
    from asru_min.processor import Processor

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.add_special_tokens(SPECIALS)
    path = tmp_path_factory.mktemp("tiny")
    tok.save(str(path / "tokenizer.json"))
    (path / "preprocessor_config.json").write_text(json.dumps(PRE))
    proc = Processor.from_pretrained(path)
    cfg = Qwen3VLConfig.from_dict({
        "image_token_id": proc.image_token_id, "video_token_id": proc.video_token_id,
        "vision_start_token_id": proc.vision_start_token_id, "vision_end_token_id": proc.vision_end_token_id,
        "tie_word_embeddings": False,
        "text_config": {"vocab_size": tok.get_vocab_size(), "hidden_size": 32, "intermediate_size": 64,
                        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                        "max_position_embeddings": 512, "rope_theta": 10000.0,
                        "rope_scaling": {"mrope_section": [4, 2, 2], "mrope_interleaved": True},
                        "eos_token_id": proc.eos_token_ids[0]},
        "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                          "out_hidden_size": 32, "num_position_embeddings": 16, "deepstack_visual_indexes": [0]},
    })
    torch.manual_seed(0)
    model = Qwen3VL(cfg).float()
    with torch.no_grad():  # logits of std ~1.5: a spread-out policy whose samples differ within a group
        model.lm_head.weight.normal_(0.0, 0.3)
    return model, proc


class TinyQA:
    """A QA-like sample with an image, as data.QA provides (.messages(), .ground_truth, .image, .kind)."""

    def __init__(self, question, truth, color):
        from PIL import Image

        self.question, self.ground_truth, self.kind = question, truth, "gen"
        self.image = Image.new("RGB", (64, 64), color) if color else None

    def messages(self):
        content = ([{"type": "image"}] if self.image else []) + [{"type": "text", "text": self.question}]
        return [{"role": "user", "content": content}]

    def images(self):
        return [self.image] if self.image else []


def test_token_logprobs_real_model_matches_unpadded_rows(tiny):
    """Rows [left pads | prompt with image | response | right pads] against each row run alone, unpadded."""
    from asru_min.grpo import join_image_features, split_image_features

    model, proc = tiny
    model.eval()
    qas = [TinyQA("Who is this person?", "x", "red"), TinyQA("Where was she born? Lisbon", "y", None),
           TinyQA("What is the job?", "z", "blue")]
    batch = qa_batch(proc, qas, with_answers=False)
    P = batch["input_ids"].shape[1]
    responses = [[5, 6, 7, proc.eos_token_ids[0]], [9, proc.eos_token_ids[0]], [11, 12, 13, 14]]
    T = 4
    ids = torch.cat([batch["input_ids"], torch.zeros(3, T, dtype=torch.long)], 1)
    att = torch.cat([batch["attention_mask"], torch.zeros(3, T, dtype=torch.long)], 1)
    resp = torch.zeros_like(ids, dtype=torch.bool)
    for i, r in enumerate(responses):
        ids[i, P : P + len(r)] = torch.tensor(r)
        att[i, P : P + len(r)] = 1
        resp[i, P : P + len(r)] = True
    with torch.no_grad():
        feats = model.encode_images(batch["pixel_values"], batch["image_grid_thw"])
        chunks = split_image_features(feats, batch["image_grid_thw"], batch["input_ids"], model.config)
        got = token_logprobs(model, {"input_ids": ids, "attention_mask": att, "pixel_values": batch["pixel_values"],
                                     "image_grid_thw": batch["image_grid_thw"]}, resp)
        # the same through per-row feature chunks, rows reordered (how GRPO mini-batches call it)
        order = [2, 0]
        f, g = join_image_features([chunks[i] for i in order])
        got_sub = token_logprobs(model, {"input_ids": ids[order], "attention_mask": att[order], "image_grid_thw": g},
                                 resp[order], image_features=f)
        assert torch.allclose(got_sub, got[order], atol=1e-5)
        for i, r in enumerate(responses):
            real = att[i].bool()
            row_ids = ids[i][real][None]
            one = qa_batch(proc, [qas[i]], with_answers=False)
            logits = model(row_ids, pixel_values=one["pixel_values"], image_grid_thw=one["image_grid_thw"])
            logp = torch.log_softmax(logits[0].float(), -1)
            n_prompt = int(batch["attention_mask"][i].sum())
            for j, tok in enumerate(r):
                assert got[i, P + j].item() == pytest.approx(logp[n_prompt + j - 1, tok].item(), abs=1e-4)


def test_one_grpo_step_on_real_model_raises_rewarded_token(tiny):
    """LoRA + one GRPO step (reference = adapters off) with a reward for one token's text raises that token's
    probability after the prompt; the first step starts exactly at the reference (KL 0, ratio 1)."""
    import copy as _copy

    from asru_min.grpo import train_grpo
    from asru_min.lora import apply_lora, lora_enabled

    base, proc = tiny
    model = _copy.deepcopy(base)
    apply_lora(model, r=4, alpha=8, dropout=0.0)
    qas = [TinyQA("Who is this person?", "Lisbon", "red"), TinyQA("What is the job?", "biologist", "blue")]
    samples = [(qas[0], True), (qas[1], False)]
    batch = qa_batch(proc, qas, with_answers=False)

    def first_token_probs():
        with torch.no_grad():
            logits = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                           batch["image_grid_thw"], logits_to_keep=1)
            return torch.softmax(logits[:, -1].float(), -1).mean(0)  # (V,)

    probs = first_token_probs()
    target = int(probs.argmax())  # ~6 % after each prompt: a few samples of a group start with it, most don't
    text = proc.decode([target])
    assert text.strip()
    before = probs[target].item()
    reward = lambda response, truth, forget: float(response.startswith(text))  # noqa: E731
    cfg = grpo_config(group_size=16, temperature=1.0, top_p=1.0, max_new_tokens=3, prompts_per_step=2, epochs=1,
                     lr=2e-2, kl_coef=0.1, seed=0)
    records = train_grpo(model, proc, samples, cfg, reward_fn=reward, progress=lambda s: None)
    after = first_token_probs()[target].item()
    assert len(records) == 1 and records[0]["optimizer_steps"] == 1
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6) and records[0]["ratio_mean"] == pytest.approx(1.0)
    assert 0.0 < records[0]["reward_mean"] < 1.0  # the group had signal
    assert after > before * 1.3, (before, after)  # seeds 0-7 of this set-up give x1.6 to x2.1
    with lora_enabled(model, False):  # adapters off is still the base model
        assert first_token_probs()[target].item() == pytest.approx(before, rel=1e-5)


# ---------------------------------------------------------------------------------------------- boundary set

def _qa(kind: str, truth: str, person: str):
    from asru_min.data import QA
    return QA(question=f"q about {person} {truth}", answer=truth, kind=kind, person=person, ground_truth=truth)


def test_boundary_set_halves_and_kinds():
    from asru_min.grpo import build_boundary_set
    forget = [_qa(k, f"f{i}", f"p{i % 5}") for i in range(40) for k in ("gen", "mc")]
    retain = [_qa(k, f"r{i}", f"p{5 + i % 20}") for i in range(200) for k in ("gen", "cloze")]
    plain = build_boundary_set(forget, retain, 20, kinds=("gen", "cloze"), seed=1, forget_share=0.5)
    assert sum(f for _, f in plain) == 10 and len(plain) == 20
    assert all(qa.kind in ("gen", "cloze") for qa, _ in plain)
    assert plain == build_boundary_set(forget, retain, 20, kinds=("gen", "cloze"), seed=1, forget_share=0.5)    # seeded



def test_boundary_set_forget_share():
    from asru_min.grpo import build_boundary_set
    forget = [_qa("gen", f"f{i}", f"p{i % 5}") for i in range(40)]
    retain = [_qa("gen", f"r{i}", f"p{5 + i % 20}") for i in range(200)]
    quarter = build_boundary_set(forget, retain, 40, kinds=("gen",), seed=1, forget_share=0.25)
    assert sum(f for _, f in quarter) == 10 and len(quarter) == 40
    few = build_boundary_set(forget[:3], retain, 40, kinds=("gen",), seed=1, forget_share=0.5)   # capped by what exists
    assert sum(f for _, f in few) == 3 and len(few) == 40                         # retain fills the rest
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="forget_share"):
            build_boundary_set(forget, retain, 40, kinds=("gen",), seed=1, forget_share=bad)


def test_step_without_forget_prompts_logs_strict_json(tmp_path):
    from asru_min.grpo import train_grpo

    def strict(token):
        raise ValueError(f"non-JSON constant {token} in the log")

    lines, log = [], tmp_path / "grpo.jsonl"
    cfg = grpo_config(group_size=4, max_new_tokens=3, prompts_per_step=1, epochs=1, seed=0)
    train_grpo(ToyGenLM(), ToyProcessor(), [(ToyQA("ggh", "y"), False)], cfg, log_path=str(log),
               reward_fn=lambda response, truth, forget: float(len(response) % 2), progress=lines.append,
               reference=contextlib.nullcontext)
    record = json.loads(log.read_text(), parse_constant=strict)    # NaN / Infinity would raise here
    assert record["reward_forget_mean"] is None and record["refusal_rate_forget"] is None
    assert record["reward_retain_mean"] is not None
    assert "reward forget - " in lines[0] and "refusal f/r -/" in lines[0]


def test_dual_clip_bounds_negative_advantage_terms_by_hand():
    """A_i < 0 and ratio 5: the clipped surrogate would give pg = -min(5 A, 1.3 A) = -5 A = 5; the dual clip with
    c = 3 bounds it at -3 A = 3. Positive advantages and ratios inside [0.8, 3] are untouched."""
    ratios = torch.tensor([[5.0, 2.0, 0.5]])
    logp = torch.log(ratios)
    old = torch.zeros_like(logp)
    mask = torch.ones_like(logp, dtype=torch.bool)
    for adv, expected, frac in ((-1.0, [3.0, 2.0, 0.8], 1 / 3), (1.0, [-1.3, -1.3, -0.5], 0.0)):
        a = torch.tensor([adv])
        loss, st = policy_loss(logp, old, logp.clone(), a, mask, 0.2, 0.3, 0.0, dual_clip=3.0)
        assert loss.item() == pytest.approx(sum(expected) / 3, abs=1e-6)
        assert st["dual_clip_frac"] == pytest.approx(frac)
    loss, st = policy_loss(logp, old, logp.clone(), torch.tensor([-1.0]), mask, 0.2, 0.3, 0.0)   # off by default
    assert loss.item() == pytest.approx((5.0 + 2.0 + 0.8) / 3, abs=1e-6) and st["dual_clip_frac"] == 0.0


def test_one_rollout_two_minibatches_live_ratio_and_clip(monkeypatch):
    """ppo_epochs=1, two mini-batches per rollout (the release's mode): the first update is on-policy (ratio
    exactly 1), the second sees the policy the first one moved (ratio != 1), and the clipped term is active on
    exactly the tokens outside the trust region on the side its advantage pushes (A > 0: ratio > 1 + clip_high;
    A < 0: ratio < 1 - clip_low)."""
    import contextlib

    import asru_min.grpo as grpo

    seen = []
    real = grpo.policy_loss

    def recording(logp, old_logp, ref_logp, advantages, mask, *args, **kwargs):
        seen.append((torch.exp(logp - old_logp).detach(), advantages.detach(), mask.bool()))
        return real(logp, old_logp, ref_logp, advantages, mask, *args, **kwargs)

    monkeypatch.setattr(grpo, "policy_loss", recording)
    samples = [(ToyQA("abd", "x"), True), (ToyQA("ggh", "y"), False)]
    cfg = grpo_config(group_size=4, temperature=1.0, top_p=1.0, max_new_tokens=4, prompts_per_step=2, epochs=1,
                      mini_batch_size=4, ppo_epochs=1, lr=0.5, kl_coef=0.0, seed=5)
    reward = lambda response, truth, forget: float(response.count("c")) / 4  # noqa: E731
    model = ToyGenLM()
    params = [p for p in model.parameters() if p.requires_grad]
    record = grpo.grpo_step(model, ToyProcessor(), samples, cfg, grpo.make_optimizer(params, cfg), params, 0,
                            reward_fn=reward, reference=contextlib.nullcontext)
    assert record["optimizer_steps"] == 2 and len(seen) == 2
    (r1, _, m1), (r2, a2, m2) = seen
    assert torch.equal(r1[m1], torch.ones_like(r1[m1]))
    assert (r2[m2] - 1).abs().max() > 1e-3
    a2 = a2.unsqueeze(1).expand_as(r2)
    outside = ((a2 > 0) & (r2 > 1 + cfg.clip_high)) | ((a2 < 0) & (r2 < 1 - cfg.clip_low))
    clipped = r2.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
    active = (clipped * a2 < r2 * a2) & m2
    assert torch.equal(active, outside & m2)
    assert outside[m2].any(), "lr 0.5 should push some token out of the trust region"
    assert record["clip_frac"] > 0


# ---------------------------------------------------------------------------------------------- rollout chunks


def test_rollout_chunks_and_order_give_the_same_responses(tiny):
    """--rollout-batch 0 (all prompts in one call), 2 and 1 give the same rows (responses, rewards, image
    features), and a prompt's samples depend only on its own stream: the prompts reversed, with their stream ids,
    give the groups reversed (what splitting a step over processes relies on)."""
    from asru_min.grpo import rollout, sampling_streams

    model, proc = tiny
    model.eval()
    qas = [TinyQA("Who is this person?", "Lisbon", "red"), TinyQA("Where was she born?", "Lisbon", None),
           TinyQA("What is the job of the person?", "biologist", "blue"), TinyQA("She works as?", "a", None),
           TinyQA("Who is this?", "x", "green")]
    samples = [(qa, i % 2 == 0) for i, qa in enumerate(qas)]
    reward = lambda response, truth, forget: float(len(response) % 3)  # noqa: E731
    ids = [7, 3, 11, 0, 5]  # the prompts' indices in a boundary set

    def run(rollout_batch, order=range(5)):
        cfg = grpo_config(group_size=3, temperature=1.5, top_p=0.95, max_new_tokens=6, rollout_batch=rollout_batch)
        streams = sampling_streams(cfg.seed, 4, [ids[i] for i in order], "cpu")
        return rollout(model, proc, [samples[i] for i in order], cfg, streams, reward)

    whole = run(0)
    assert len(set(whole["responses"])) > 5  # samples differ within and across groups
    for n in (2, 1):
        part = run(n)
        for key in ("input_ids", "attention_mask", "response_mask", "rewards", "prompt_ids", "image_grid_thw"):
            assert torch.equal(part[key], whole[key]), (n, key)
        assert part["responses"] == whole["responses"]
        assert torch.allclose(part["pixel_values"], whole["pixel_values"])
        for a, b in zip(part["chunks"], whole["chunks"]):
            assert a[0].shape == b[0].shape and torch.allclose(a[0], b[0], atol=1e-6)
    backwards = run(2, order=range(4, -1, -1))
    groups = [whole["responses"][3 * i:3 * i + 3] for i in range(5)]
    assert backwards["responses"] == [r for g in reversed(groups) for r in g]


# ---------------------------------------------------------------------------------------------- memory settings


def test_micro_batches_respect_the_token_budget():
    from asru_min.grpo import micro_batches

    att = torch.zeros(5, 10, dtype=torch.long)
    for i, (a, b) in enumerate([(2, 6), (0, 9), (3, 5), (4, 8), (5, 9)]):
        att[i, a : b + 1] = 1
    rows = [0, 2, 3, 4, 1]
    assert micro_batches(att, rows, 0) == [rows]
    assert micro_batches(att, rows, 100) == [rows]
    pieces = micro_batches(att, rows, 12)  # spans: 0-2: 2..6 (3 x 5 = 15 > 12), so [0, 2], then [3, 4], [1]
    assert pieces == [[0, 2], [3, 4], [1]]
    for piece in pieces:
        real = att[piece].bool().any(0).nonzero()
        assert len(piece) == 1 or len(piece) * (int(real[-1]) - int(real[0]) + 1) <= 12
    assert micro_batches(att, rows, 3) == [[r] for r in rows]  # a row over the budget is a piece of its own


def test_micro_batched_checkpointed_chunked_step_equals_the_one_piece_step(tiny, monkeypatch):
    """One GRPO step with old / reference passes and updates in token-budget pieces, checkpointed layers and
    chunked log-probs == the same step in one piece: same adapter after it (1e-6) and the same logged stats. Two
    inner epochs of two mini-batches, so the old-policy pass, the reference pass and four updates all run. The
    optimiser is SGD (clipped by optimizer_step): AdamW's first steps move each weight by about lr * sign(g),
    which turns float32 noise in a near-zero gradient into a visible difference that says nothing about the sum."""
    import copy as _copy

    import asru_min.grpo as grpo
    from asru_min.lora import apply_lora, lora_parameters

    calls, real = [], grpo.policy_loss
    monkeypatch.setattr(grpo, "policy_loss", lambda *a, **k: calls.append(1) or real(*a, **k))

    base, proc = tiny
    qas = [TinyQA("Who is this person?", "Lisbon", "red"), TinyQA("What is the job?", "biologist", "blue"),
           TinyQA("Where was she born?", "Lisbon", None)]
    samples = [(qas[0], True), (qas[1], False), (qas[2], False)]
    reward = lambda response, truth, forget: float(len(response) % 3) / 2  # noqa: E731
    settings = dict(group_size=4, temperature=1.0, top_p=1.0, max_new_tokens=5, prompts_per_step=3,
                    mini_batch_size=6, ppo_epochs=2, lr=0.5, kl_coef=0.1, seed=0)

    def step(**memory):
        model = _copy.deepcopy(base)
        torch.manual_seed(0)  # the same initial A
        apply_lora(model, r=4, alpha=8, dropout=0.0)
        cfg = grpo_config(**settings, **memory)
        params = lora_parameters(model)
        calls.clear()
        record = grpo.grpo_step(model, proc, samples, cfg, torch.optim.SGD(params, lr=cfg.lr), params, 0,
                                reward_fn=reward)
        assert len(calls) > 4 if cfg.micro_batch_tokens else len(calls) == 4  # pieces vs one per update
        return record, params

    whole, whole_params = step(micro_batch_tokens=0, logprob_chunk=0, grad_checkpoint="off")
    pieces, piece_params = step(micro_batch_tokens=60, logprob_chunk=7, grad_checkpoint="on")
    assert whole["optimizer_steps"] == pieces["optimizer_steps"] == 4 and whole["skipped_steps"] == 0
    for a, b in zip(piece_params, whole_params, strict=True):
        assert (a - b).abs().max() <= 1e-6
    assert (whole_params[1] != 0).any()  # the update moved B off zero
    for key, value in whole.items():
        if key not in ("seconds", "sample_response"):
            assert pieces[key] == pytest.approx(value, abs=1e-6), key


def test_memory_flags_reach_grpo_config_and_bad_values_stop_the_run(tmp_path):
    from asru_min.train import parse_args, run

    cfg, _ = parse_args(["--micro-batch-tokens", "0", "--grad-checkpoint", "on", "--logprob-chunk", "512"])
    g = cfg.grpo()
    assert (g.micro_batch_tokens, g.grad_checkpoint, g.logprob_chunk) == (0, "on", 512)
    defaults = TrainConfig().grpo()
    assert (defaults.micro_batch_tokens, defaults.grad_checkpoint, defaults.logprob_chunk) == (16384, "auto", 4096)
    for bad, flag in ((dict(grad_checkpoint="yes"), "--grad-checkpoint"), (dict(micro_batch_tokens=-1),
                      "--micro-batch-tokens"), (dict(logprob_chunk=-5), "--logprob-chunk")):
        with pytest.raises(ValueError, match=flag):
            run(TrainConfig(out=str(tmp_path / "out"), **bad))
    assert not (tmp_path / "out").exists()  # refused before any work
