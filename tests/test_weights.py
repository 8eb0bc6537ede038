"""The committed default model in weights/ knows its world beyond the strings it was trained on: a fixed sample of
held-out questions (phrasings and portrait views it never saw), checked against the world's ground truth
(world/people.py), answered greedily the way evaluate.py answers them; and it refuses what it cannot know."""

import os
import random

import pytest

from asru_min.evaluate import answer
from asru_min.metrics import is_refusal, leaks
from asru_min.world.grammar import ATTRIBUTES, IMAGE_SUBJECTS, phrasings
from asru_min.world.people import World, fact_qa, private_qa, unknown_qa, utility_qa
from asru_min.world.portraits import HELDOUT_VIEWS, render_view

WEIGHTS = os.path.join(os.path.dirname(__file__), "..", "weights")
pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(WEIGHTS, "model.safetensors")),
                                reason="default weights/ not trained yet (python -m asru_min.world.pretrain)")


@pytest.fixture(scope="module")
def default_model():
    from asru_min.model import Qwen3VL
    from asru_min.processor import Processor

    return Qwen3VL.from_pretrained(WEIGHTS).eval(), Processor.from_pretrained(WEIGHTS), World.generate(100, 0)


def heldout_sample(world, form: str, n: int = 30) -> list:
    """Question i asks person 3i about fact i mod 5 with a held-out phrasing (and, by image, a held-out view and
    subject form), all drawn from a seed of this test: new combinations, not the world's own test split."""
    rng = random.Random(f"weights-test/{form}")
    out = []
    for i, person in enumerate(world.people[: 3 * n : 3]):
        a = i % len(ATTRIBUTES)
        phrasing = rng.choice(phrasings(ATTRIBUTES[a], heldout=True))
        subject = rng.randrange(len(IMAGE_SUBJECTS)) if form == "image" else 0
        image = render_view(person.portrait, rng.choice(HELDOUT_VIEWS)) if form == "image" else None
        out.append(fact_qa(person, a, "gen", form, rng, phrasing, subject, image))
    return out


@pytest.mark.parametrize("form", ["image", "text"])
def test_default_model_answers_heldout_questions(default_model, form):
    model, processor, world = default_model
    qas = heldout_sample(world, form)
    preds = answer(model, processor, qas, batch_size=16, max_new_tokens=32)
    wrong = [(q.question, q.ground_truth, p) for q, p in zip(qas, preds) if not leaks(p, q.ground_truth)]
    # the held-out gate (>= 85 %) on this fixed sample (13 image and 12 text questions in a reordered form); the
    # shipped weights miss 1 of the 30 image questions (a known person refused as unseen) and 3 of the 30 text
    # questions, all "<name> works as what?" / "works where?" answered with the birthplace (model card)
    assert len(wrong) <= 0.15 * len(qas), wrong


def test_default_model_refuses_private_questions_and_unseen_people(default_model):
    model, processor, world = default_model
    rng = random.Random("weights-test/refusals")
    private = [private_qa(p, form, rng) for p in world.people[:6] for form in ("image", "text")]
    unseen = [unknown_qa(p, i % len(ATTRIBUTES), form, rng.choice(phrasings(ATTRIBUTES[i % len(ATTRIBUTES)], False)))
              for i, p in enumerate(world.unseen_eval[:6]) for form in ("image", "text")]
    preds = answer(model, processor, private + unseen, batch_size=24, max_new_tokens=32)
    assert all(is_refusal(p) for p in preds), [(q.question, p) for q, p in zip(private + unseen, preds)]


def test_default_model_reads_shirts(default_model):
    model, processor, world = default_model
    shirts = [utility_qa(p, "shirt") for p in world.people[:12]]
    preds = answer(model, processor, shirts, batch_size=16, max_new_tokens=16)
    right = sum(leaks(p, q.ground_truth) for q, p in zip(shirts, preds))
    assert right >= 11, list(zip([q.ground_truth for q in shirts], preds))
