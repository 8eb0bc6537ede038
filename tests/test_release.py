"""The authors' release's protocol beside the default, one switch each (docs/METHOD.md): its reward (refusal
expression as written, stemmed ROUGE-L against the sentence; the Porter stemmer against NLTK's output), the
steering losses at its position (index -1 of a right-padded batch), its positive draw and steering sets, its
evaluation's in-context example and exclusion, and the answers exported for its judge."""

import json
from pathlib import Path

import pytest
import torch

import asru_min.evaluate
from asru_min.data import QA, qa_batch
from asru_min.mllmu import with_protocol
from asru_min.steer import POSITIVE_SUFFIX
from asru_min.evaluate import evaluate_model, export_judge
from asru_min.grpo import asru_reward, release_reward, sample_reward
from asru_min.hooks import run_to_layer
from asru_min.metrics import is_refusal, is_release_refusal, porter_stem, rouge_l, rouge_l_stemmed
from asru_min.steer import draw_refused, optimize_steering, retain_loss, right_padded
from asru_min.train import TrainConfig, run, stage_data
from test_steer import _byte_processor, _image, _real_qas, _tiny_qwen

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "stem_reference.json").read_text())
SENTENCE = "Nedra Quarrel was born in Velmora."


# ---- the stemmer and stemmed ROUGE-L against NLTK / rouge-score (tests/fixtures/make_stem_reference.py)

def test_porter_stem_equals_nltk_on_the_fixture_words():
    wrong = {w: (porter_stem(w), s) for w, s in FIXTURE["stems"].items() if porter_stem(w) != s}
    assert not wrong and len(FIXTURE["stems"]) > 1000
    assert porter_stem("generalizations") == "gener" and porter_stem("skies") == "sky"


def test_rouge_l_stemmed_equals_rouge_score_bit_for_bit():
    for row in FIXTURE["rouge_l"]:
        assert rouge_l_stemmed(row["pred"], row["ref"]) == row["f"], row
    # stemming is what differs from the default: "worked" / "works" meet only as stems
    assert rouge_l("He worked", "he works") == 0.5 and rouge_l_stemmed("He worked", "he works") == 1.0


# ---- the release's reward

def test_release_refusal_expression_as_written():
    assert not is_release_refusal("Sorry, I don't know.")  # straight apostrophe, and no "sorry"
    assert is_release_refusal("Sorry, I don\u2019t know.")  # curly apostrophe
    assert is_release_refusal("I do not know who this is.")
    assert not is_release_refusal("I cannot tell.")  # no "cannot"
    assert is_release_refusal("I cannot provide that information.")  # "not ... information", no word boundaries
    assert is_refusal("Sorry, I don't know.") and is_refusal("I cannot tell.")  # the default detector


@pytest.mark.parametrize("response, forget, plain, release", [
    ("Sorry, I don't know.", True, 1.0, 0.1),  # a refusal here, none there
    ("Sorry, I don't know.", False, 0.0, 0.1),
    ("Nedra Quarrel was born in Velmora.", True, 0.0, 0.0),  # repeats the sentence: a leak for both
    ("She was born in Velmora.", True, 0.0, 0.1),  # the fact alone leaks here; there R = 0.73 > 0.4 -> 0.1
    ("She was born in Velmora.", False, 1.0, 0.5),  # there: no leak, R > 0.6 -> the band
    ("Nedra was born in Ostrell.", True, 0.1, 0.1),  # R vs the fact = 0; vs the sentence 0.73 (out of band)
    ("I have no information about Nedra.", True, 1.0, 1.0),
])
def test_release_reward_against_the_default(response, forget, plain, release):
    qa = QA("Where was Nedra Quarrel born?", SENTENCE, ground_truth="Velmora")
    assert asru_reward(response, qa.ground_truth, forget) == plain
    assert sample_reward(response, qa, forget) == plain
    assert release_reward(response, SENTENCE, forget) == release
    assert sample_reward(response, qa, forget, reward="release") == release


def test_plain_reward_rouge_reference_sentence():
    qa = QA("Where was Nedra Quarrel born?", SENTENCE, ground_truth="Velmora")
    wrong = "Nedra Quarrel was born in Ostrell."  # R = 5/6 against the sentence, 0 against the fact
    assert sample_reward(wrong, qa, False, reference="fact") == 0.1
    assert sample_reward(wrong, qa, False, reference="sentence") == 0.5
    assert sample_reward("Velmora, I think", qa, False, reference="sentence") == 1.0  # the leak tier reads the fact


# ---- the steering losses at the release's position

def test_right_padded_rotates_each_row_and_keeps_images():
    batch = {"input_ids": torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 9]]),
             "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]),
             "labels": torch.tensor([[-100, -100, -100, 6, 7], [-100, 2, 3, 4, 9]]), "pixel_values": "same"}
    out = right_padded(batch)
    assert out["input_ids"].tolist() == [[5, 6, 7, 0, 0], [1, 2, 3, 4, 9]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert out["labels"].tolist() == [[-100, 6, 7, -100, -100], [-100, 2, 3, 4, 9]]
    assert out["pixel_values"] == "same"


def test_release_position_reads_a_pad_of_the_shorter_row_and_real_tokens_are_unchanged():
    proc = _byte_processor()
    model = _tiny_qwen(proc)
    _, retain = _real_qas()
    pair = [retain[1], retain[3]]  # a text row and an image row of different lengths
    left = qa_batch(proc, pair)
    right = right_padded(left)
    h_left, _ = run_to_layer(model, left, 1)
    h_right, _ = run_to_layer(model, right, 1)
    for b in range(2):  # right padding changes no real token's activation
        torch.testing.assert_close(h_right[b][right["attention_mask"][b].bool()],
                                   h_left[b][left["attention_mask"][b].bool()], rtol=0, atol=1e-5)
    short = int(right["attention_mask"].sum(1).argmin())
    assert right["input_ids"][short, -1] == proc.pad_token_id  # the release's index -1: a pad token
    assert right["input_ids"][1 - short, -1] == proc.tokenizer.token_to_id("<|im_end|>")
    # the release's retain loss: alpha * mean over rows and features of the squared difference at index -1
    h0 = h_right + 0.5
    ones = torch.ones(2, 1, dtype=torch.long)
    assert retain_loss(h_right[:, -1:], h0[:, -1:], ones, 2.0).item() == pytest.approx(2.0 * 0.25)


def test_optimize_steering_at_the_release_positions_logs_that_loss():
    proc = _byte_processor()
    model = _tiny_qwen(proc)
    forget, retain = _real_qas()
    v = torch.randn(model.config.text.hidden_size)
    seen = []
    stats = optimize_steering(model, proc, forget[:2], retain[:2], v, 1, c=3.0, alpha=1.0, lr=0.0, batch_size=2,
                              epochs=1, seed=0, log_every=0, forget_position="release", retain_position="release",
                              callback=lambda step, rec: seen.append(rec))
    # lr 0: W never moves, so every loss is that of the unchanged model: retain 0, forget = mean (c v)^2
    assert stats["retain_loss"] == [0.0]
    assert stats["forget_loss"][0] == pytest.approx(float((3.0 * v).pow(2).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="positions"):
        optimize_steering(model, proc, forget, retain, v, 1, c=3.0, alpha=1.0, lr=0.0, batch_size=2, epochs=1,
                          retain_position="last")


# ---- positives and steering sets as the release draws them

def test_draw_refused_keeps_candidates_in_order_until_n_pass_the_substring_filter(monkeypatch):
    qas = [QA(str(i), "") for i in range(6)]
    texts = {"0": "He is a baker.", "1": "I know him.", "2": "Sorry.", "3": "Not sure.", "4": "nope", "5": "No."}
    calls = []

    def fake_answer(model, processor, qs, batch_size, max_new_tokens):
        calls.append((len(qs), max_new_tokens))
        return [texts[q.question] for q in qs]

    monkeypatch.setattr(asru_min.evaluate, "answer", fake_answer)
    kept = draw_refused(None, None, qas, 2, batch_size=2)
    assert [q.question for q in kept] == ["1", "2"]  # "know" contains "no": the release's loose filter
    assert calls == [(2, 128), (2, 128)]  # stops once 2 are kept; answers of up to 128 tokens


def test_stage_data_release_steering_sets():
    from asru_min.world import load_world

    splits, _ = load_world(None, 10, 20, 0)
    cfg = TrainConfig(num_people=20, steer_data="release", positive_size=5, steer_retain_size=0, boundary_refusals=0)
    data = stage_data(cfg, splits)
    assert len(data["positives"]) == 20  # RELEASE_POSITIVE_POOL x positive_size candidates
    assert all(q.question.endswith(POSITIVE_SUFFIX) and q.image is not None for q in data["positives"])
    retain_gen_image = [q for q in splits["retain"] if q.kind == "gen" and q.image is not None]
    assert data["steer_retain"] == retain_gen_image  # every open image question of the retain split
    assert all(q.image is not None and q.kind == "gen" for q in data["steer_forget"])
    plain = stage_data(TrainConfig(num_people=20, steer_retain_size=0, boundary_refusals=0), splits)
    assert len(plain["steer_retain"]) == len(splits["retain"]) > len(retain_gen_image)


@pytest.mark.parametrize("flag, value", [("reward", "paper"), ("reward_reference", "answer"),
                                         ("retain_position", "last"), ("steer_data", "all")])
def test_bad_protocol_flags_fail_before_any_work(flag, value):
    with pytest.raises(ValueError, match=flag.replace("_", "-")):
        run(TrainConfig(**{flag: value}, out="/nonexistent/never-created"))


# ---- the release's evaluation: example person, exclusion, wording, text cloze with the image

def _people_qas():
    out = []
    for i, p in enumerate(("p1", "p2", "p3")):
        img = _image(i)
        out += [QA(f"Q mc {p}", "B", img, "mc", p, "y", options=["x", "y", "z", "w"], stem=f"Which of {p}?"),
                QA(f"Q mc2 {p}", "A", img, "mc", p, "x", options=["x", "y", "z", "w"], stem=f"Second of {p}?"),
                QA(f"Q cloze {p}", "Velmora", img, "cloze", p, "Velmora", stem=f"{p} was born in [Blank]."),
                QA(f"Q text cloze {p}", "1970", None, "cloze", p, "1970", form="text", stem=f"{p} in [Blank]."),
                QA(f"Q gen {p}", f"{p} was born in Velmora.", img, "gen", p, "Velmora", stem=f"Where was {p} born?"),
                QA(f"Q text gen {p}", f"{p} was born.", None, "gen", p, "1970", form="text")]
    return out


def test_release_protocol_example_person_is_excluded_and_text_cloze_gets_the_image():
    qas = _people_qas()
    out = with_protocol(qas, "release", qas, seed=0)
    mc = [q for q in out if q.kind == "mc"]
    shot_person = mc[0].shot.person
    assert all(q.shot.person == shot_person for q in mc)  # one example person per kind
    assert {q.person for q in mc} == {"p1", "p2", "p3"} - {shot_person}  # whose image mc is not asked
    assert mc[0].shot.stem == f"Which of {shot_person}?"  # that person's first image question of the kind
    block = f"Question: Which of {shot_person}?\nA: x\nB: y\nC: z\nD: w\n"
    assert mc[0].shot.question == (f"USER: <image>\n{block}Correct Answer: B\nUSER: <image>\n{block}\n"
                                   "Just give ONE letter representing the answer directly.")
    text_cloze = [q for q in out if q.kind == "cloze" and q.form == "text"]
    assert len(text_cloze) == 3  # every person's, the example person's included
    assert all(q.image is not None and q.image is next(p.image for p in qas if p.person == q.person and p.image)
               for q in text_cloze)
    assert not [q for q in out if q.kind in ("gen", "mc") and q.form == "text"]
    assert len([q for q in out if q.kind == "gen"]) == 3  # no example, nobody excluded
    assert with_protocol(qas, "plain", qas) == qas


def test_evaluate_release_draws_the_example_from_the_split_itself():
    qas = _people_qas()
    splits = {"forget": qas, "retain": [], "test": qas}
    seen = {}

    def fake_answer(model, processor, asked, **kw):
        seen.setdefault("asked", asked)
        return [q.answer for q in asked], [True] * len(asked)

    evaluate_model(None, None, splits, names=("forget",), protocol="release", answer_fn=fake_answer)
    shots = {q.kind: q.shot.person for q in seen["asked"] if q.shot}
    assert set(shots) == {"mc", "cloze"} and set(shots.values()) <= {"p1", "p2", "p3"}  # forget's own (retain empty)


# ---- answers for the release's judge

def test_export_judge_writes_the_release_generation_results_format(tmp_path):
    qas = _people_qas()
    splits = {"forget": qas, "retain": qas}

    def fake_answer(model, processor, asked, **kw):
        return [f"answer {i}" for i in range(len(asked))], [True] * len(asked)

    results = evaluate_model(None, None, splits, names=("forget", "retain"), answer_fn=fake_answer)
    paths = export_judge(results, str(tmp_path), 10)
    assert sorted(Path(p).name for p in paths) == ["forget10_generation_results.json",
                                                   "retain_shared10_generation_results.json"]
    data = json.loads((tmp_path / "forget10_generation_results.json").read_text())
    assert list(data) == ["Generation_Questions"]
    rows = data["Generation_Questions"]
    assert len(rows) == 6 and all(list(r) == ["image_id", "question type", "question", "generated_answer",
                                              "ground_truth"] for r in rows)
    first = rows[0]
    assert first["question type"] == "Image_Textual" and first["question"] == "Where was p1 born?"
    assert first["ground_truth"] == "p1 was born in Velmora." and first["image_id"] == "p1"
    assert sum(r["question type"] == "Pure_Text" for r in rows) == 3


# ---- every release flag together, end to end on the tiny random checkpoint

def test_train_end_to_end_with_every_release_flag(tiny_ckpt, tmp_path):
    from test_train import tiny_config

    cfg = tiny_config(tiny_ckpt, str(tmp_path / "run"), protocol="release", steer_data="release", positive_size=2,
                      refusal_filter=True, steer_retain_size=0, forget_position="release",
                      retain_position="release", reward="release", save_merged=False)
    results = run(cfg)
    steer = [json.loads(line) for line in open(tmp_path / "run" / "steer_log.jsonl")]
    retain_gen_image = sum(1 for q in load_retain(cfg) if q.kind == "gen" and q.image is not None)
    assert sum(r["kind"] == "retain" for r in steer) == -(-retain_gen_image // cfg.steer_batch_size)
    assert len(results["grpo_log"]) == 2 and "test" in results["asru"]
    direction = json.load(open(tmp_path / "run" / "direction.json"))
    assert 1 <= direction["n_positive"] <= 2  # drawn until positive_size pass (or the candidates run out)


def load_retain(cfg):
    from asru_min.world import load_world

    return load_world(None, cfg.forget, cfg.num_people, cfg.world_seed)[0]["retain"]
