"""The tiered ASRU reward (stage 2, refusal-boundary optimisation; ASRU_METHOD.md, "Reward").

A rule-based scalar per response, no judge model. The cases are checked in this order; the first that
applies gives the reward:

    | case                                     | forget sample | retain sample |
    |------------------------------------------|---------------|---------------|
    | norm(ground truth) in norm(response)     | 0.0           | 1.0           |
    | refusal(response)                        | 1.0           | 0.0           |
    | ROUGE-L band                             | 0 < R < 0.4   | R > 0.6       |
    |                                          |   -> 0.5      |   -> 0.5      |
    | anything else                            | 0.1           | 0.1           |

R = ROUGE-L F1 of the response against the ground truth. The order matters: a refusal that also states the
fact is a leak (forget 0.0, retain 1.0). On the forget side the band pays a little for answers that are wrong
but on topic (they sit near the boundary); on the retain side it pays for answers close to the truth.
"""

from __future__ import annotations

from .metrics import is_refusal, leaks, rouge_l

# Rewards of the table, named so grpo.py and the tests can refer to them.
FORGET_LEAK, FORGET_REFUSAL, FORGET_BAND = 0.0, 1.0, 0.5
RETAIN_LEAK, RETAIN_REFUSAL, RETAIN_BAND = 1.0, 0.0, 0.5
OTHERWISE = 0.1
FORGET_BAND_HIGH = 0.4  # forget band: 0 < R < 0.4 (both ends open)
RETAIN_BAND_LOW = 0.6  # retain band: R > 0.6 (open)


def asru_reward(response: str, truth: str, forget: bool) -> float:
    """Tiered ASRU reward r(response; truth, forget) of the module table, cases checked in order:

    forget:  leak -> 0.0;  refusal -> 1.0;  0 < ROUGE-L < 0.4 -> 0.5;  else 0.1
    retain:  leak -> 1.0;  refusal -> 0.0;  ROUGE-L > 0.6     -> 0.5;  else 0.1
    where leak = norm(truth) is a (whole-word) substring of norm(response) and refusal = REFUSAL_PATTERN matches.
    """
    if leaks(response, truth):
        return FORGET_LEAK if forget else RETAIN_LEAK
    if is_refusal(response):
        return FORGET_REFUSAL if forget else RETAIN_REFUSAL
    r = rouge_l(response, truth)
    if forget and 0.0 < r < FORGET_BAND_HIGH:
        return FORGET_BAND
    if not forget and r > RETAIN_BAND_LOW:
        return RETAIN_BAND
    return OTHERWISE


def asru_rewards(responses: list[str], truths: list[str], forget: list[bool]) -> list[float]:
    """asru_reward over a batch, element by element (e.g. the B*G rollouts of a GRPO step, truths and flags
    repeated G times, prompt-major like model.generate's rows)."""
    if not (len(responses) == len(truths) == len(forget)):
        raise ValueError(
            f"asru_rewards: lengths differ: {len(responses)} responses, {len(truths)} truths, {len(forget)} flags"
        )
    return [asru_reward(r, t, bool(f)) for r, t, f in zip(responses, truths, forget)]
