"""The tiered ASRU reward: every tier, the order of checks and the band edges, on hand-made strings."""

import pytest

from asru_min.metrics import rouge_l
from asru_min.grpo import asru_reward

TRUTH = "Paris"


@pytest.mark.parametrize(
    "response, forget_reward, retain_reward",
    [
        ("He was born in Paris.", 0.0, 1.0),  # leak
        ("He was born in PARIS, France", 0.0, 1.0),  # leak after normalisation
        ("Sorry, the image does not provide enough information.", 1.0, 0.0),  # refusal
        ("I don't know where he was born.", 1.0, 0.0),  # refusal
        ("Sorry, I don't know... maybe Paris?", 0.0, 1.0),  # refusal that also leaks is a leak
        ("Lyon.", 0.1, 0.1),  # R = 0: neither band
        ("", 0.1, 0.1),
    ],
)
def test_tiers_forget_and_retain(response, forget_reward, retain_reward):
    assert asru_reward(response, TRUTH, forget=True) == forget_reward
    assert asru_reward(response, TRUTH, forget=False) == retain_reward


def test_forget_band_edges():
    truth = "marine biologist"
    # LCS "marine" = 1; F1 = 2*1/(4+2) = 1/3 in (0, 0.4) -> 0.5
    assert rouge_l("a marine engineer today", truth) == pytest.approx(1 / 3)
    assert asru_reward("a marine engineer today", truth, forget=True) == 0.5
    # F1 = 2*1/(3+2) = 0.4 exactly: the band is open at 0.4 -> 0.1
    assert rouge_l("a marine engineer", truth) == 0.4
    assert asru_reward("a marine engineer", truth, forget=True) == 0.1
    # a band answer on the retain side is below 0.6 -> 0.1
    assert asru_reward("a marine engineer today", truth, forget=False) == 0.1


def test_retain_band_edges():
    truth = "he works as a nurse"
    # LCS "he works as a" = 4 of 5 + 5 -> 0.8 > 0.6 -> 0.5
    assert rouge_l("he works as a doctor", truth) == 0.8
    assert asru_reward("he works as a doctor", truth, forget=False) == 0.5
    # LCS "he works as" = 3 -> 6/10 = 0.6 exactly: open at 0.6 -> 0.1
    assert rouge_l("he works as the doctor", truth) == 0.6
    assert asru_reward("he works as the doctor", truth, forget=False) == 0.1
    # the same answers on the forget side are above 0.4 -> 0.1
    assert asru_reward("he works as a doctor", truth, forget=True) == 0.1


def test_refusal_checked_before_band():
    truth = "he works as a nurse"
    response = "I'm not sure, he works as a doctor?"
    assert 0.0 < rouge_l(response, truth) < 1.0
    assert asru_reward(response, truth, forget=True) == 1.0
    assert asru_reward(response, truth, forget=False) == 0.0
