"""Metrics on hand-made strings with hand-computed values."""

import math

import pytest

from asru_min.metrics import (
    bleu,
    is_refusal,
    lcs_length,
    leaks,
    normalize,
    repetition,
    rouge_l,
    rouge_n,
    tokens,
)

CAT_PRED = "The cat sat on the mat."
CAT_REF = "the cat is on the mat"


def test_normalize_and_tokens():
    assert normalize("  Hello,  World! It\u2019s_me\n") == "hello world it s me"
    assert tokens("New-York, 1985.") == ["new", "york", "1985"]
    assert normalize("...") == ""


def test_rouge_n_hand_computed():
    # unigrams: the x2, cat, on, mat match (5 of 6 on each side) -> F1 = 2*5/12
    assert rouge_n(CAT_PRED, CAT_REF, 1) == pytest.approx(5 / 6)
    # bigrams: "the cat", "on the", "the mat" match, 5 on each side -> 2*3/10
    assert rouge_n(CAT_PRED, CAT_REF, 2) == pytest.approx(3 / 5)
    # clipped counts: "the" appears 3x in pred but once in ref -> overlap 1, F1 = 2*1/(3+2)
    assert rouge_n("the the the", "the cat", 1) == 0.4
    assert rouge_n("", "the cat", 1) == 0.0
    assert rouge_n("cat", "cat", 2) == 0.0  # no bigram on either side
    with pytest.raises(ValueError):
        rouge_n("a", "a", 0)


def test_rouge_l_hand_computed():
    assert lcs_length("a b c d".split(), "a c e".split()) == 2
    assert rouge_l("a b c d", "a c e") == pytest.approx(4 / 7)
    # LCS "the cat on the mat" = 5 tokens, 6 + 6 tokens -> 10/12
    assert rouge_l(CAT_PRED, CAT_REF) == pytest.approx(5 / 6)
    assert rouge_l("x y", "a b") == 0.0
    assert rouge_l("Paris!", "paris") == 1.0


def test_bleu_hand_computed():
    # p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = no match of 3 -> 0.1/3 (smoothing method 1); equal lengths -> BP = 1
    # product = 5/6 * 3/5 * 1/4 * 0.1/3 = 1/240
    assert bleu(CAT_PRED, CAT_REF) == pytest.approx((1 / 240) ** 0.25)
    # p1 = p2 = 1; no 3- or 4-grams at all: 0.1 / 1 each; c=2 < r=6 -> BP = exp(1 - 6/2)
    assert bleu("the cat", "the cat sat on the mat") == pytest.approx(0.01 ** 0.25 * math.exp(-2))
    assert bleu(CAT_REF, CAT_REF) == pytest.approx(1.0)
    assert bleu("dog", "the cat") == 0.0  # no unigram match: unsmoothed p1 = 0
    assert bleu("", "the cat") == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "I don't know.",
        "I do not know who this is.",
        "I\u2019m not sure about that.",
        "There is no information about her birthplace.",
        "I am unable to provide that detail.",
        "I can't provide personal data.",
        "I cannot provide that.",
        "That is beyond my knowledge.",
        "The image does not provide enough information to determine his job.",
        "The picture doesn't provide any clue.",
        "I cannot determine her age from the image.",
        "Sorry, the image only shows a man with red hair.",
        "It is impossible to tell.",
    ],
)
def test_is_refusal_positive(text):
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "He was born in Paris in 1985.",
        "She works as a nurse.",
        "B",
        "",
        "Nothing provides more joy to him than painting.",
        "He knows three languages.",
    ],
)
def test_is_refusal_negative(text):
    assert not is_refusal(text)


def test_leaks_whole_word_normalised():
    assert leaks("He lives in Paris, France.", "paris")
    assert leaks("He was born in new-york!", "New York")
    assert not leaks("The wall is covered in ivy.", "red")  # no match inside a word
    assert not leaks("He lives in Paris.", "")  # an empty truth never leaks
    assert not leaks("He lives in Lyon.", "Paris")
    assert leaks("The answer is PARIS.", "paris")  # case-insensitive
    assert not leaks("anything", "  ")
    # cloze / utility correctness: whole words, so a one-word truth "No" is not found inside "not" or "know"
    assert not leaks("I do not know.", "No")
    assert leaks("No, the person is not wearing glasses.", "no")


def test_repetition():
    # 3-grams: abc bca cab abc bca cab abc -> 7 total, 3 distinct
    assert repetition("a b c a b c a b c") == pytest.approx(1 - 3 / 7)
    assert repetition("a b") == 0.0
    assert repetition("one two three four") == 0.0


def test_rouge_and_bleu_equal_rouge_score_and_nltk_on_the_committed_reference():
    """tests/fixtures/metric_reference.json holds rouge-score's ROUGE-1/2/L F1 and NLTK's sentence BLEU-4
    (smoothing method 1) of 66 sentence pairs (made by tests/fixtures/make_metric_reference.py, by hand)."""
    import json
    from pathlib import Path

    rows = json.loads((Path(__file__).parent / "fixtures" / "metric_reference.json").read_text())
    assert len(rows) == 66
    for r in rows:
        assert rouge_n(r["pred"], r["ref"], 1) == pytest.approx(r["rouge1"], abs=1e-12), r
        assert rouge_n(r["pred"], r["ref"], 2) == pytest.approx(r["rouge2"], abs=1e-12), r
        assert rouge_l(r["pred"], r["ref"]) == pytest.approx(r["rougeL"], abs=1e-12), r
        assert bleu(r["pred"], r["ref"]) == pytest.approx(r["bleu"], abs=1e-12), r
