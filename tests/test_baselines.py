"""Baseline losses on hand-made tensors, and (with a tiny random model) that each baseline moves the forget
likelihood in the intended direction."""

import math

import pytest
import torch

from asru_min.baselines.methods import (
    IGNORE_INDEX,
    ga_loss,
    graddiff_loss,
    idk_loss,
    kl_on_answer_tokens,
    klmin_loss,
    npo_loss,
)


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits are given (the Qwen3VL.forward signature, logits_to_keep honoured; its
    hidden states are the logits, lm_head the identity)."""

    lm_head = torch.nn.Identity()

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, image_features=None,
                logits_to_keep=0, return_hidden=False):
        return self.logits[:, -logits_to_keep:] if logits_to_keep else self.logits


def _sft_batch(labels):
    return {"input_ids": labels.clamp(min=0), "attention_mask": torch.ones_like(labels), "labels": labels}


def test_answer_logprobs_by_hand():
    from asru_min.baselines.methods import answer_logprobs
    from asru_min.optim import token_logprobs

    # One sequence of 3 tokens over a vocabulary of 2; labels mark the last two tokens as the answer.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 5.0]]])  # (1, 3, 2)
    batch = _sft_batch(torch.tensor([[IGNORE_INDEX, 1, 0]]))
    # position 0 predicts token 1 with p = 1/2; position 1 predicts token 0 with p = 3/4
    logp = token_logprobs(FixedLogits(logits), batch)
    assert torch.allclose(logp, torch.tensor([[0.0, math.log(0.5), math.log(0.75)]]))
    total, mean = answer_logprobs(FixedLogits(logits), batch)
    assert torch.allclose(total, torch.tensor([math.log(0.375)]))
    assert torch.allclose(mean, torch.tensor([math.log(0.375) / 2]))
    # masking the first answer label removes that term
    total2, _ = answer_logprobs(FixedLogits(logits), _sft_batch(torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 0]])))
    assert torch.allclose(total2, torch.tensor([math.log(0.75)]))


def test_ga_sign_and_gradient_lowers_likelihood():
    from asru_min.baselines.methods import answer_logprobs

    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1, 2], [IGNORE_INDEX, 4, 4, 0, IGNORE_INDEX]])
    mean_logp = answer_logprobs(FixedLogits(logits), _sft_batch(labels))[1]
    loss = ga_loss(mean_logp)
    nll = -mean_logp.mean()
    assert torch.allclose(loss, -nll)  # GA loss = -NLL_forget
    loss.backward()
    with torch.no_grad():  # one small descent step on the GA loss must raise the NLL
        after = -answer_logprobs(FixedLogits(logits - 0.1 * logits.grad), _sft_batch(labels))[1].mean()
    assert after > nll + 1e-4


def test_graddiff_is_ga_plus_retain_nll():
    f = torch.tensor([-1.0, -3.0])  # per-sequence mean log-probs: NLL_forget = 2
    r = torch.tensor([-0.5, -1.5, -1.0])  # NLL_retain = 1
    assert torch.isclose(graddiff_loss(f, r), torch.tensor(-2.0 + 1.0))
    assert torch.isclose(graddiff_loss(f, r, retain_weight=0.5), torch.tensor(-2.0 + 0.5))
    assert torch.isclose(graddiff_loss(f, r, retain_weight=0.0), ga_loss(f))


def test_kl_zero_for_identical_models_and_matches_hand_value():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6)
    labels = torch.tensor([[IGNORE_INDEX, 2, 3, 1], [IGNORE_INDEX, IGNORE_INDEX, 5, IGNORE_INDEX]])
    assert kl_on_answer_tokens(logits, logits.clone(), labels).abs() < 1e-7
    f = torch.tensor([-2.0])
    assert torch.isclose(klmin_loss(f, kl_on_answer_tokens(logits, logits, labels)), torch.tensor(-2.0), atol=1e-6)

    # Hand value: one answer position, p_ref = (1/2, 1/2), p_theta = (3/4, 1/4)
    ref = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    cur = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])
    lab = torch.tensor([[IGNORE_INDEX, 1]])
    want = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert math.isclose(kl_on_answer_tokens(cur, ref, lab).item(), want, rel_tol=1e-5)
    # the direction is KL(p_ref || p_theta), not the reverse
    reverse = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert not math.isclose(want, reverse, rel_tol=1e-3)
    assert torch.isclose(klmin_loss(torch.tensor([-1.0, -3.0]), torch.tensor(want), kl_weight=2.0),
                         torch.tensor(-2.0 + 2 * want))


def test_npo_value_by_hand_and_gradient_weight():
    beta = 0.1
    logp = torch.tensor([-10.0, -20.0], requires_grad=True)
    ref = torch.tensor([-12.0, -15.0])
    # delta = (2, -5): -(2/beta) * mean(log sigmoid(-beta*delta))
    want = -(2 / beta) * 0.5 * (math.log(1 / (1 + math.exp(0.2))) + math.log(1 / (1 + math.exp(-0.5))))
    loss = npo_loss(logp, ref, beta)
    assert math.isclose(loss.item(), want, rel_tol=1e-6)
    # d loss / d logp_b = (2/B) * sigmoid(beta * delta_b): the GA gradient reweighted, smaller once forgotten
    loss.backward()
    expect = [2 / 2 / (1 + math.exp(-0.2)), 2 / 2 / (1 + math.exp(0.5))]
    assert torch.allclose(logp.grad, torch.tensor(expect), atol=1e-6)
    # at theta = ref the loss is (2/beta) log 2
    assert math.isclose(npo_loss(ref, ref, beta).item(), (2 / beta) * math.log(2), rel_tol=1e-6)
    # the optional retain NLL adds w * NLL_retain
    r = torch.tensor([-1.0, -2.0])
    assert math.isclose(npo_loss(logp, ref, beta, r, 0.5).item(), want + 0.5 * 1.5, rel_tol=1e-6)
    with pytest.raises(ValueError):
        npo_loss(logp, ref, beta=0.0)


def test_idk_loss_is_refusal_nll_plus_retain():
    refusal = torch.tensor([-0.2, -0.4])
    assert torch.isclose(idk_loss(refusal), torch.tensor(0.3))
    assert torch.isclose(idk_loss(refusal, torch.tensor([-1.0]), 2.0), torch.tensor(0.3 + 2.0))


def test_refusals_describe_the_image_or_name_the_person():
    """Refusal SFT's targets: image questions are declined by describing the image, text questions by naming the
    person; the judge scores them as full contextual refusals (image) or refusals naming the person (text)."""
    import random

    from PIL import Image

    from asru_min.baselines.methods import refusal_answers, refusal_variants
    from asru_min.data import QA
    from asru_min.metrics import is_refusal, judge

    seen = "a person with short red hair, wearing a blue shirt, in front of a plain grey background"
    image = QA(question="Where was the person in this image born?", answer="Nedra Quarrel was born in Velmora.",
               image=Image.new("RGB", (8, 8)), ground_truth="Velmora", visible=seen)
    text = QA(question="I would like to know the home town of Nedra Quarrel.", answer="Nedra Quarrel was born in "
              "Velmora.", ground_truth="Velmora", form="text")
    for qa, points in ((image, 5), (text, 4)):
        for r in refusal_variants(qa):
            j = judge(r, qa.ground_truth, qa.question, qa.visible, qa.answer, True)
            assert is_refusal(r) and j["contextual_refusal"] >= points and not j["hallucination"], r
    assert all(r.endswith(f"; it only shows {seen}.") for r in refusal_variants(image))
    assert all("Nedra Quarrel" in r for r in refusal_variants(text))
    bare = QA(question="Who is this?", answer="", image=Image.new("RGB", (8, 8)))  # no description: no "shows"
    assert all(r.endswith(".") and "shows" not in r for r in refusal_variants(bare))
    assert "this person" in refusal_variants(QA(question="where was she born?", answer="", form="text"))[0]
    answers = refusal_answers([image, text] * 3, random.Random(0))
    assert answers == refusal_answers([image, text] * 3, random.Random(0))  # seeded
    assert all(a in refusal_variants(q) for a, q in zip(answers, [image, text] * 3))


# ---------------------------------------------------------------------------------------------------------------
# Two optimizer steps of every baseline on a tiny random Qwen3-VL move the likelihoods the intended way.

# the byte-level tiny processor and the tiny random Qwen3-VL shared with the evaluate tests
from test_evaluate import tiny_model as _tiny_model  # noqa: E402
from test_evaluate import tiny_processor as _tiny_processor  # noqa: E402


def _qas(names, facts, template="{n} lives in {f}."):
    from PIL import Image

    from asru_min.data import QA

    out = []
    for i, (n, f) in enumerate(zip(names, facts)):
        img = Image.new("RGB", (32, 32), (30 * i % 256, 120, 200)) if i % 2 == 0 else None
        out.append(QA(question=f"What about {n}?", answer=template.format(n=n, f=f), image=img, kind="gen",
                      ground_truth=f, form="image" if img is not None else "text"))
    return out




@pytest.mark.parametrize("method", ["ga", "graddiff", "klmin", "npo", "idk"])
def test_two_steps_move_forget_likelihood(method, one_thread):
    from asru_min.baselines.methods import BaselineConfig, answer_logprobs, refusal_variants, train_baseline
    from asru_min.data import qa_batch
    from asru_min.lora import apply_lora

    processor = _tiny_processor()
    model = _tiny_model(processor)
    apply_lora(model, r=4, alpha=8, dropout=0.0)
    forget = _qas(["Ana", "Bo", "Cy", "Di"], ["Velmora", "Tarsk", "Oblin", "Quess"])
    # retain answers share few characters with the forget answers, so descending on them (GradDiff, NPO, idk)
    # does not raise the forget likelihood through shared tokens of a random model
    retain = _qas(["Eve", "Fin", "Gus", "Hal"], ["4721", "0963", "1185", "2290"], template="{f}-{f}")
    # idk trains towards refusals drawn from each question's refusal_variants: measure all of them
    variants = [(q, r) for q in forget for r in refusal_variants(q)]
    qs, targets = (forget, None) if method != "idk" else ([q for q, _ in variants], [r for _, r in variants])

    def forget_nll():
        with torch.no_grad():
            return -answer_logprobs(model, qa_batch(processor, qs, targets))[1].mean().item()

    model.eval()
    before = forget_nll()
    cfg = BaselineConfig(method=method, lr=2e-2, epochs=1, batch_size=2, out="unused")
    logs = train_baseline(model, processor, forget, retain, cfg, progress=lambda *_: None)
    after = forget_nll()
    assert len(logs) == 2 and all(math.isfinite(l["loss"]) for l in logs)
    if method == "idk":
        assert after < before - 0.05, (method, before, after)  # the refusal became more likely
    else:
        assert after > before + 0.05, (method, before, after)  # the forget answers became less likely
    if method == "npo":  # the first step starts at theta = ref: log-ratio 0
        assert abs(logs[0]["logratio"]) < 1e-4
    if method == "klmin":
        assert logs[0]["retain_kl"] < 1e-6 and logs[1]["retain_kl"] > 0


def test_checkpointed_baseline_training_equals_plain(one_thread):
    """--grad-checkpoint on recomputes the decoder layers in backward: the same losses and adapters as off
    (NPO: a trained forward, a reference forward and a retain forward per step; LoRA dropout on)."""
    import copy

    from asru_min.baselines.methods import BaselineConfig, train_baseline
    from asru_min.lora import apply_lora, lora_parameters

    processor = _tiny_processor()
    base = _tiny_model(processor)
    forget = _qas(["Ana", "Bo", "Cy", "Di"], ["Velmora", "Tarsk", "Oblin", "Quess"])
    retain = _qas(["Eve", "Fin", "Gus", "Hal"], ["4721", "0963", "1185", "2290"], template="{f}-{f}")
    runs = {}
    for setting in ("off", "on"):
        model = copy.deepcopy(base)
        torch.manual_seed(0)
        apply_lora(model, r=4, alpha=8, dropout=0.05)
        cfg = BaselineConfig(method="npo", lr=2e-2, epochs=1, batch_size=2, out="unused", grad_checkpoint=setting)
        logs = train_baseline(model, processor, forget, retain, cfg, progress=lambda *_: None)
        runs[setting] = ([l["loss"] for l in logs], lora_parameters(model))
    assert runs["on"][0] == pytest.approx(runs["off"][0], abs=1e-6)
    for a, b in zip(runs["on"][1], runs["off"][1], strict=True):
        assert (a - b).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="grad_checkpoint"):
        BaselineConfig(method="ga", grad_checkpoint="yes")
