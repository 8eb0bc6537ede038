"""Baseline losses on hand-made tensors, and (with a tiny random model) that each baseline moves the forget
likelihood in the intended direction."""

import json
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
    """A stand-in model whose logits are given (the Qwen3VL.forward signature, logits_to_keep honoured)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, image_features=None,
                logits_to_keep=0):
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
    from asru_min.baselines.methods import BaselineConfig, REFUSALS, answer_logprobs, train_baseline
    from asru_min.data import qa_batch
    from asru_min.lora import apply_lora

    processor = _tiny_processor()
    model = _tiny_model(processor)
    apply_lora(model, r=4, alpha=8, dropout=0.0)
    forget = _qas(["Ana", "Bo", "Cy", "Di"], ["Velmora", "Tarsk", "Oblin", "Quess"])
    # retain answers share few characters with the forget answers, so descending on them (GradDiff, NPO, idk)
    # does not raise the forget likelihood through shared tokens of a random model
    retain = _qas(["Eve", "Fin", "Gus", "Hal"], ["4721", "0963", "1185", "2290"], template="{f}-{f}")
    # idk trains towards answers drawn from REFUSALS: measure every refusal on every forget question
    qs, targets = (forget, None) if method != "idk" else ([q for q in forget for _ in REFUSALS], list(REFUSALS) * 4)

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


# ---------------------------------------------------------------------------------------------------------------
# The headline ratios of examples/compare.py on hand-made evaluation results


def _compare_module():
    from conftest import load_example
    return load_example("compare")


def _metrics(forget_value, gq, retain_value=0.8, util=0.9):
    people = {"mc_acc": forget_value, "cloze_acc": forget_value, "leak_rate": forget_value, "rougeL": forget_value}
    return {"forget": {"all": {**people, "quality": gq, "refusal_rate": 0.0}}, "test": {"all": dict(people)},
            "retain": {"all": {"mc_acc": retain_value, "cloze_acc": retain_value, "rougeL": retain_value}},
            "utility": {"all": {"acc": util}}}


def test_compare_headline_ratios_by_hand():
    c = _compare_module()
    vanilla = _metrics(0.8, 0.2)
    # K(vanilla) = 0.8; K = 0.4 -> UE = 0.5; K = 0.6 -> UE = 0.25; ASRU K = 0.2 -> UE = 0.75
    assert math.isclose(c.unlearning_effectiveness(_metrics(0.4, 0.3), vanilla), 0.5)
    assert math.isclose(c.model_utility(_metrics(0.4, 0.3, retain_value=0.6, util=1.0)), (0.6 * 3 + 1.0) / 4)
    summary = {10: {"vanilla": c.row("vanilla", vanilla, vanilla), "ga": c.row("ga", _metrics(0.4, 0.3), vanilla),
                    "npo": c.row("npo", _metrics(0.6, 0.1), vanilla),
                    "asru": c.row("asru", _metrics(0.2, 0.8), vanilla)}}
    h = c.headlines(summary, ("ga", "npo"))
    assert math.isclose(h["UE_baselines_mean"], 0.375) and math.isclose(h["UE_asru"], 0.75)
    assert math.isclose(h["UE_gain_relative"], (0.75 - 0.375) / 0.375)  # +100 %
    assert math.isclose(h["UE_gain_points"], 37.5)
    assert math.isclose(h["GQ_ratio"], 0.8 / 0.2)  # mean baseline GQ = (0.3 + 0.1) / 2


def test_compare_reuses_a_saved_run_only_for_the_same_weights_and_settings(tmp_path):
    compare = _compare_module()
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights one")
    sha = compare.weights_sha256(str(tmp_path))
    path = tmp_path / "ga_f5.json"
    config = {"method": "ga", "lr": 5e-4, "kinds": ["gen"]}
    assert not compare.saved_run_matches(str(path), config, sha)            # nothing saved yet
    path.write_text(json.dumps({"metrics": {}, "config": config, "model_sha256": sha}))
    assert compare.saved_run_matches(str(path), config, sha)
    assert not compare.saved_run_matches(str(path), {**config, "lr": 1e-3}, sha)   # other settings
    assert compare.saved_run_matches(str(path), {**config, "out": "moved/ga_f5"}, sha)  # folder moved: reused
    weights.write_bytes(b"weights two")                                        # retrained weights
    assert not compare.saved_run_matches(str(path), config, compare.weights_sha256(str(tmp_path)))
    path.write_text(json.dumps({"metrics": {}}))                               # a record from before hashing
    assert not compare.saved_run_matches(str(path), config, sha)


def test_compare_tradeoff_by_hand():
    c = _compare_module()
    rows = {"vanilla": {"U": 1.0, "forget_leak": 1.0, "gq": 0.2},
            "ga": {"U": 0.5, "forget_leak": 0.0, "gq": 0.6},        # lowest leak, but U broken: not kept
            "idk": {"U": 0.96, "forget_leak": 0.7, "gq": 0.3},
            "asru": {"U": 0.95, "forget_leak": 0.1, "gq": 0.5},     # exactly 95 % of vanilla: kept
            "npo": {"U": 0.99, "forget_leak": None, "gq": None}}    # missing figures are skipped
    t = c.tradeoff({10: rows})[10]
    assert t == {"lowest_leak_kept": "asru", "highest_gq": "ga", "kept": ["idk", "asru"]}     # table order
    assert c.tradeoff({5: dict(rows, asru=dict(rows["asru"], U=0.94))})[5]["lowest_leak_kept"] == "idk"
    assert c.tradeoff({5: {"ga": rows["ga"]}})[5]["lowest_leak_kept"] is None    # no vanilla row: nothing kept
