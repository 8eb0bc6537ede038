"""The evaluation grid: scoring on hand-made questions and answers (a fake answer function), letter parsing,
limits, the table; and one real pass through a tiny random Qwen3-VL."""

from dataclasses import dataclass, field

import pytest

from asru_min.evaluate import (
    correct_letter,
    evaluate_model,
    format_table,
    limit_split,
    mc_letter,
    score_split,
)


@dataclass
class FakeQA:
    """The fields of data.QA that evaluate reads."""

    question: str
    answer: str
    kind: str
    ground_truth: str
    form: str = "text"
    image: object = None
    visible: str = ""
    options: list = field(default_factory=list)
    person: str = "p0"


OPTS = ["a nurse", "a pilot", "a chef", "a baker"]


def forget_split():
    v = "a man with short red hair"
    return [
        FakeQA("Job? A. a nurse B. a pilot C. a chef D. a baker", "B", "mc", "a pilot", "image", "img", v, OPTS),
        FakeQA("Job? A. a nurse B. a pilot C. a chef D. a baker", "B", "mc", "a pilot", "text", None, "", OPTS),
        FakeQA("He was born in [Blank].", "Paris", "cloze", "Paris", "image", "img", v),
        FakeQA("He was born in [Blank].", "Paris", "cloze", "Paris", "text"),
        FakeQA("Where was the person in the image born?", "He was born in Paris.", "gen", "Paris", "image", "img", v),
        FakeQA("Where was John Doe born?", "He was born in Paris.", "gen", "Paris", "text"),
    ]


PREDS = [
    "B. a pilot",  # mc image: right
    "(C)",  # mc text: wrong
    "paris",  # cloze image: right (case-insensitive)
    "Lyon",  # cloze text: wrong
    "Sorry, the image does not provide enough information to determine where he was born; it only shows a man with red hair.",
    "He was born in Paris.",  # gen text: leak, identical to the reference
]


def test_mc_letter_parsing():
    assert mc_letter("B") == "B"
    assert mc_letter("  (c) a chef") == "C"
    assert mc_letter("**D**") == "D"
    assert mc_letter("E") == ""
    assert mc_letter("The answer is B") == ""  # only the first character counts, as in MLLMU-Bench
    assert mc_letter("") == ""
    assert correct_letter(forget_split()[0]) == "B"
    assert correct_letter(FakeQA("q", "C. a chef", "mc", "unknown option")) == "C"
    with pytest.raises(ValueError):
        correct_letter(FakeQA("q", "none", "mc", "x"))


def test_score_split_forget_hand_computed():
    r = score_split("forget", forget_split(), PREDS, finished=[True] * 6)
    img, txt, both = r["image"], r["text"], r["all"]
    assert (img["mc_acc"], txt["mc_acc"], both["mc_acc"]) == (1.0, 0.0, 0.5)
    assert (img["cloze_acc"], txt["cloze_acc"], both["cloze_acc"]) == (1.0, 0.0, 0.5)
    assert img["mc_n"] == img["cloze_n"] == img["gen_n"] == 1 and both["gen_n"] == 2
    # text gen answer equals the reference: every overlap metric is 1
    assert txt["rouge1"] == txt["rouge2"] == txt["rougeL"] == 1.0 and txt["bleu"] == pytest.approx(1.0)
    assert (txt["refusal_rate"], txt["leak_rate"]) == (0.0, 1.0)
    assert (img["refusal_rate"], img["leak_rate"]) == (1.0, 0.0)
    # the contextual refusal is the ideal forget answer; the leak scores contextual 0, no_leak 0 and
    # naturalness (1 + 1 + 1/2)/3 ("paris" is neither asked nor visible)
    assert img["quality"] == 1.0
    assert txt["quality_contextual_refusal"] == 0.0 and txt["quality_no_leak"] == 0.0
    assert txt["quality_naturalness"] == pytest.approx(2.5 / 3)
    assert both["quality"] == pytest.approx((1.0 + 2.5 / 9) / 2)
    assert both["refusal_rate"] == 0.5 and both["leak_rate"] == 0.5
    # retain: same metrics, no quality
    assert "quality" not in score_split("retain", forget_split(), PREDS)["all"]


def test_score_split_utility_private_and_empty_forms():
    util = [FakeQA("Capital of France?", "Paris", "utility", "Paris", "text"),
            FakeQA("Colour of the sky?", "blue", "utility", "blue", "text")]
    r = score_split("utility", util, ["It is Paris.", "I don't know."])
    assert r["text"] == {"acc": 0.5, "refusal_rate": 0.5, "n": 2}
    assert r["image"] == {"acc": None, "refusal_rate": None, "n": 0}
    priv = [FakeQA("What is his phone number?", "", "private", "", "image", "img")]
    assert score_split("private", priv, ["Sorry, I can't share that."])["image"]["refusal_rate"] == 1.0
    with pytest.raises(ValueError):
        score_split("forget", forget_split(), PREDS[:2])


def test_limit_split_per_kind_and_form():
    qas = forget_split() * 3
    kept = limit_split(qas, 2)
    assert len(kept) == 12  # 6 (kind, form) pairs x 2
    assert kept == qas[:12]
    assert limit_split(qas, None) == qas


def perfect_answers(model, processor, qas, batch_size=32, max_new_tokens=50, progress=None, return_finished=False):
    """What a model that knows everything would say."""
    texts = [correct_letter(qa) if qa.kind == "mc" else qa.answer for qa in qas]
    return (texts, [True] * len(qas)) if return_finished else texts


def test_evaluate_model_with_fake_answers_and_table():
    splits = {"forget": forget_split(), "retain": forget_split(),
              "utility": [FakeQA("Capital of France?", "Paris", "utility", "Paris", "text")], "unknown": []}
    r = evaluate_model(None, None, splits, limit=None, verbose=False, answer_fn=perfect_answers)
    assert set(r) == {"forget", "retain", "utility", "examples", "meta"}
    for split in ("forget", "retain"):
        for form in ("image", "text", "all"):
            m = r[split][form]
            assert m["mc_acc"] == m["cloze_acc"] == m["rougeL"] == m["leak_rate"] == 1.0
            assert m["refusal_rate"] == 0.0
    assert r["utility"]["text"]["acc"] == 1.0
    assert r["examples"]["forget"][0]["prediction"] == "He was born in Paris."
    table = format_table({"before": r, "after": r})
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["split", "form", "model"]
    row = next(line for line in lines if line.startswith("forget  all   before"))
    assert row.split()[3:5] == ["100.0", "100.0"]  # MC, Cloze
    assert row.split()[-1] == "-"  # Acc applies to utility only
    assert sum(line.startswith("forget") for line in lines) == 6  # 3 forms x 2 results
