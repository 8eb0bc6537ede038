"""examples/robustness.py: the relearning attack recovers nothing a model never knew, the ablation measure runs
under the hook and only there, likelihood multiple choice picks the highest-scoring sentence, release-parsed
multiple choice counts refusals as wrong."""

import random
import string

import torch

from asru_min.data import QA, listed
from asru_min.hooks import decoder_layer
from conftest import load_example
from test_evaluate import tiny_model, tiny_processor

rb = load_example("robustness")


def random_fact(rng) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(10))


def people_qas(prefix: str, n_people: int, rng) -> list:
    """Two text generation questions per person whose facts are random strings."""
    out = []
    for i in range(n_people):
        person = f"{prefix}{i}"
        for attr in ("city", "pet"):
            fact = random_fact(rng)
            out.append(QA(question=f"What is the {attr} of {person}?", answer=f"The {attr} is {fact}.", kind="gen",
                          person=person, ground_truth=fact, form="text"))
    return out


def test_relearn_recovers_nothing_the_model_never_knew(one_thread):
    rng = random.Random(0)
    forget, retain = people_qas("f", 4, rng), people_qas("r", 4, rng)
    processor = tiny_processor()
    model = tiny_model(processor).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = rb.relearn(model, processor, forget, retain, steps=3, lr=1e-2, batch_size=2, max_new_tokens=6,
                     eval_batch_size=8)
    assert sorted(out["train_people"] + out["held_out_people"]) == ["f0", "f1", "f2", "f3"]
    assert not set(out["train_people"]) & set(out["held_out_people"])
    assert out["n_train"] == 4 and out["before"]["n"] == 4
    for key in ("before", "after_forget", "after_retain"):
        assert out[key]["leak_rate"] == 0.0  # random strings on the held-out half: nothing to recover
    assert out["loss_forget"][1] < out["loss_forget"][0]  # the fine-tune did train
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the attack used a copy


def test_relearn_does_not_depend_on_what_ran_before(one_thread):
    """The attack's fresh adapters are drawn from its own seed, so the same model gives the same figures whether it
    is attacked first or after other models (robustness.py runs several in one process)."""
    rng = random.Random(1)
    forget, retain = people_qas("f", 4, rng), people_qas("r", 4, rng)
    processor = tiny_processor()
    model = tiny_model(processor).eval()
    outs = []
    for global_seed in (0, 123):
        torch.manual_seed(global_seed)
        outs.append(rb.relearn(model, processor, forget, retain, steps=3, lr=1e-2, batch_size=2, max_new_tokens=6,
                               eval_batch_size=8))
    assert outs[0]["loss_forget"] == outs[1]["loss_forget"] and outs[0]["loss_retain"] == outs[1]["loss_retain"]


def test_ablate_measures_under_the_hook_only(one_thread, monkeypatch):
    processor = tiny_processor()
    model = tiny_model(processor).eval()
    layer, v = 1, torch.randn(32)
    calls, hooked = [], []
    real = rb.ablate_direction

    def spy(m, l, d):
        calls.append((m, l, d))
        return real(m, l, d)

    def fake_scores(m, p, qas, batch_size=32, max_new_tokens=50):
        active = len(decoder_layer(m, layer)._forward_hooks) > 0
        hooked.append(active)
        return {"leak_rate": float(active), "refusal_rate": 0.0, "n": len(qas)}

    monkeypatch.setattr(rb, "ablate_direction", spy)
    monkeypatch.setattr(rb, "gen_scores", fake_scores)
    forget = people_qas("f", 2, random.Random(0))
    out = rb.ablate(model, processor, forget, v, layer)
    assert len(calls) == 1 and calls[0][0] is model and calls[0][1] == layer and calls[0][2] is v
    assert hooked == [False, True]
    assert out["without"]["leak_rate"] == 0.0 and out["with"]["leak_rate"] == 1.0
    assert not decoder_layer(model, layer)._forward_hooks  # removed after


class FavourToken(torch.nn.Module):
    """A stand-in model: every position gives token `tid` logit +5, all others 0 (logits_to_keep honoured; its
    hidden states are the logits, lm_head the identity)."""

    def __init__(self, vocab_size: int, tid: int):
        super().__init__()
        self.lm_head = torch.nn.Identity()
        self.vocab_size, self.tid = vocab_size, tid
        self.device = torch.device("cpu")  # as Qwen3VL.device

    def forward(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, image_features=None,
                logits_to_keep=0, return_hidden=False):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[..., self.tid] = 5.0
        return logits[:, -logits_to_keep:] if logits_to_keep else logits


def mc_and_gen(person: str, truth: str, options: list) -> list:
    q = f"Where does {person} live?"
    return [QA(question=q, answer=f"{person} lives in {truth}.", kind="gen", person=person, ground_truth=truth,
               form="text"),
            QA(question=f"{q}\n{listed(options)}", answer="ABCD"[options.index(truth)], kind="mc", person=person,
               ground_truth=truth, form="text", options=options)]


def test_likelihood_mc_picks_the_highest_scoring_sentence():
    processor = tiny_processor()
    model = FavourToken(processor.tokenizer.get_vocab_size(), processor.tokenizer.token_to_id("z"))
    options = ["aaaa", "zzzz", "bbbb", "cccc"]  # same length: only the favoured "z" tokens differ in score
    split = mc_and_gen("Pat", "zzzz", options) + mc_and_gen("Quinn", "aaaa", options)
    assert rb.distractors(split[0], split) == ["aaaa", "bbbb", "cccc"]
    assert rb.distractors(split[2], split) == ["zzzz", "bbbb", "cccc"]
    per_qa = [rb.likelihood_mc(model, processor, [qa], split) for qa in (split[0], split[2])]
    assert [r["acc"] for r in per_qa] == [1.0, 0.0]  # Pat's true "zzzz" wins; Quinn's true "aaaa" loses to "zzzz"
    both = rb.likelihood_mc(model, processor, split, batch_size=4)
    assert both["acc"] == 0.5 and both["n"] == 2 and both["skipped"] == 0


def test_distractors_fall_back_to_other_ground_truths():
    gens = [QA(question="Where?", answer=f"X lives in {c}.", kind="gen", person=f"p{i}", ground_truth=c, form="text")
            for i, c in enumerate(["Lima", "Oslo", "Rome", "Bern"])]
    d = rb.distractors(gens[0], gens)
    assert sorted(d) == ["Bern", "Oslo", "Rome"]
    assert rb.replace_fact("X lives in lima.", "Lima", "Oslo") == "X lives in Oslo."
    assert rb.replace_fact("X lives here.", "Lima", "Oslo") is None


def test_release_mc_counts_refusals_and_letterless_answers_wrong():
    options = ["Lima", "Oslo", "Rome", "Bern"]
    qa = QA(question="Where?", answer="A", kind="mc", ground_truth="Lima", options=options, form="image")
    preds = ["A", "A: Lima", "A. Lima", "B", "A: I'm sorry, I don't know.", "Sorry, I cannot tell."]
    r = rb.score_release_mc([qa] * len(preds), preds)
    assert r["acc"] == 2 / 6  # "A" and "A: Lima"; "A. Lima" has no letter before ":"; a refusal is wrong
    assert r["unparsed_rate"] == 3 / 6  # "A. Lima", the refusal after "A:", the plain refusal
    assert r["refusal_rate"] == 2 / 6 and r["n"] == 6


def test_command_line_on_a_fabricated_run_folder(tiny_ckpt, tmp_path, one_thread, capsys):
    """main() with --run (stage1.safetensors, lora/, direction.safetensors) and --adapter on a tiny checkpoint."""
    import json
    import os

    from safetensors.torch import save_file

    from asru_min.lora import apply_lora, save_lora
    from asru_min.model import Qwen3VL
    from asru_min.steer import save_direction

    run = tmp_path / "run"
    model = Qwen3VL.from_pretrained(tiny_ckpt)
    name = "model.language_model.layers.1.mlp.down_proj.weight"
    os.makedirs(run)
    save_file({name: dict(model.named_parameters())[name].detach() * 0.5}, str(run / "stage1.safetensors"))
    save_direction(str(run / "direction.safetensors"), torch.randn(48), {"layer": 1})
    apply_lora(model, r=2, alpha=2.0, dropout=0.0)
    save_lora(model, str(run / "lora"))
    out = tmp_path / "rb.json"
    results = rb.main(["--model", tiny_ckpt, "--run", str(run), "--adapter", str(run / "lora"), "--num-people", "20",
                       "--limit", "2", "--relearn-steps", "1", "--max-new-tokens", "4", "--out", str(out)])
    assert set(results) == {"vanilla", "lora", "stage1", "asru", "meta"}
    for r in (results[k] for k in ("vanilla", "lora", "stage1", "asru")):
        assert set(r) >= {"likelihood_mc", "relearn", "ablate", "release_mc"}
        assert r["ablate"]["layer"] == 1 and r["relearn"]["steps"] == 1
    assert json.load(open(out))["meta"]["limit"] == 2
    table = capsys.readouterr().out
    assert "LMC-f" in table and "asru" in table
