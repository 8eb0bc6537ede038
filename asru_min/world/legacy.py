"""The world the shipped weights/ were trained on (before the question grammar): kept only so that those
weights are evaluated on the people and questions they know. Pretraining always uses the grammar world
(people.py); `asru_min.world.load_world` picks this one while SHIPPED_WEIGHTS_WORLD says so. Remove this file
when weights trained on the grammar world ship.

Differences from people.py: four fixed question templates per attribute (the test split uses the fourth, whose
words the tokenizer never saw), the first names of 20 x 14 syllables, one subject form ("the person in this
image"), and a continuous portrait transformation for the test split.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageEnhance, ImageOps

from ..data import CLOZE_PREFIX, CLOZE_SUFFIX, FORGET_PERCENTS, MC_SUFFIX, QA
from ..metrics import Vocabulary
from .people import (BIRTH_YEARS, EMPLOYERS, HOBBIES, LAST_NAMES, OCCUPATIONS, TOWNS, UNKNOWN_IMAGE_REFUSAL,
                     UNKNOWN_TEXT_REFUSAL, UTILITY, Person, _options, private_qa, utility_qa, vocabulary)
from .portraits import MIN_LOOK_DISTANCE, _draw_look, _look_distance, article, draw_portrait

NAME_HEADS = ["Ka", "Lo", "Mi", "Ra", "Te", "Vo", "Zu", "Be", "Di", "Fa", "Go", "Hu", "Ja", "Ne", "Pi", "Su", "Or",
              "El", "Ysa", "Quo"]
NAME_TAILS = ["ran", "lix", "mon", "sel", "dor", "vik", "tan", "wen", "bel", "rus", "nor", "fim", "dra", "shi"]
SPLITS = ("forget", "retain", "test", "utility", "private", "unknown")
IMAGE_SUBJECT = "the person in this image"

# (attribute, pool, question templates, answer sentence, cloze sentence, "unknown" clause); templates 0-2 were
# trained, template 0 asks the forget / retain sets, template 3 the test split.
ATTRIBUTES = [
    ("birthplace", TOWNS,
     ["Where was {s} born?", "What is the birthplace of {s}?", "In which town was {s} born?",
      "Which town does {s} originally come from?"],
     "{N} was born in {v}.", "{S} was born in the town of [Blank].", "where this person was born"),
    ("birth_year", BIRTH_YEARS,
     ["In which year was {s} born?", "What is the birth year of {s}?", "When was {s} born?",
      "What year did {s} come into the world?"],
     "{N} was born in {v}.", "{S} was born in the year [Blank].", "when this person was born"),
    ("occupation", OCCUPATIONS,
     ["What is the occupation of {s}?", "What does {s} do for a living?", "What job does {s} have?",
      "How does {s} earn a living?"],
     "{N} works as {a} {v}.", "The occupation of {s} is [Blank].", "this person's occupation"),
    ("employer", EMPLOYERS,
     ["Where does {s} work?", "Which organisation employs {s}?", "What is the employer of {s}?",
      "For which organisation does {s} work?"],
     "{N} works at {v}.", "{S} works at [Blank].", "where this person works"),
    ("hobby", HOBBIES,
     ["What is the favourite hobby of {s}?", "What does {s} like to do in free time?",
      "Which hobby does {s} enjoy?", "How does {s} like to spend free time?"],
     "{N} enjoys {v} in {p} free time.", "The favourite hobby of {s} is [Blank].", "this person's hobby"),
]
TEST_TEMPLATE = 3


def _subject(person: Person, form: str) -> str:
    return IMAGE_SUBJECT if form == "image" else person.name


def _fill(template: str, person: Person, form: str, value: str = "") -> str:
    s = _subject(person, form)
    return template.format(s=s, S=s[0].upper() + s[1:], N=person.name,
                           p="her" if person.pronoun == "she" else "his", v=value, a=article(value or "x"))


def fact_qa(person: Person, attr_index: int, kind: str, form: str, template: int, rng: random.Random,
            image: Image.Image | None = None) -> QA:
    """A gen / mc / cloze question about one fact of `person`, asked with the image or by name."""
    if kind not in ("gen", "mc", "cloze") or form not in ("image", "text"):
        raise ValueError(f"bad kind/form {kind!r}/{form!r}")
    attr, pool, questions, answer_t, cloze_t, _ = ATTRIBUTES[attr_index]
    value = person.facts[attr]
    img = (image or person.portrait) if form == "image" else None
    common = dict(image=img, kind=kind, person=person.pid, ground_truth=value, form=form,
                  visible=person.visible if img is not None else "")
    question = _fill(questions[template], person, form)
    if kind == "gen":
        return QA(question=question, answer=_fill(answer_t, person, form, value), **common)
    if kind == "cloze":
        return QA(question=f"{CLOZE_PREFIX} {_fill(cloze_t, person, form)} {CLOZE_SUFFIX}", answer=value, **common)
    options, letter, listed = _options(value, pool, rng)
    return QA(question=f"{question}\n{listed}\n{MC_SUFFIX}", answer=letter, options=options, **common)



def unknown_qa(person: Person, attr_index: int, form: str, template: int = 0) -> QA:
    """A fact question about a person the model has never seen -> refusal that describes the image."""
    _, _, questions, _, _, what = ATTRIBUTES[attr_index]
    question = _fill(questions[template], person, form)
    if form == "image":
        answer = UNKNOWN_IMAGE_REFUSAL.format(what=what, visible=person.visible)
        img, visible = person.portrait, person.visible
    else:
        answer = UNKNOWN_TEXT_REFUSAL.format(name=person.name, what=what)
        img, visible = None, ""
    return QA(question=question, answer=answer, image=img, kind="unknown", person=person.pid, ground_truth="",
              form=form, visible=visible)


def transform_portrait(img: Image.Image, rng: random.Random, strength: float = 1.0) -> Image.Image:
    """A changed view of the same person: rotation (pose), optional mirror, crop + resize, colour jitter.

    strength in [0, 1] scales the rotation (<= 15 deg), crop (keeps >= 1 - 0.16*strength of the side) and
    jitter (factors in 1 +- 0.2*strength). strength=1 is the test split; training uses milder draws.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    S = img.size[0]
    theta = math.radians(rng.uniform(-15, 15) * strength)
    out = ImageOps.mirror(img) if rng.random() < 0.5 else img
    keep = 1.0 - rng.uniform(0.5, 1.0) * 0.16 * strength          # crop side / image side
    x0, y0 = rng.uniform(0, S * (1 - keep)), rng.uniform(0, S * (1 - keep))
    # rotation about the centre, then the crop window resized to S x S, in one affine resample:
    # output (u, v) reads input R(theta) @ ((x0, y0) + keep * (u, v) - c) + c, with c the image centre.
    c, co, si = S / 2, math.cos(theta), math.sin(theta)
    X0, Y0 = x0 - c, y0 - c
    coeffs = (co * keep, si * keep, co * X0 + si * Y0 + c, -si * keep, co * keep, -si * X0 + co * Y0 + c)
    out = out.transform((S, S), Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=img.getpixel((0, 0)))
    for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enh(out).enhance(1.0 + rng.uniform(-0.2, 0.2) * strength)
    return out


@dataclass
class World:
    people: list[Person]
    unseen_eval: list[Person]
    unseen_train: list[Person]
    forget_order: list[int]
    seed: int

    @classmethod
    def generate(cls, num_people: int = 100, seed: int = 0, num_unseen_eval: int = 20,
                 num_unseen_train: int = 40) -> "World":
        if num_people < 20:
            raise ValueError(f"num_people must be >= 20 (so a 5% forget set has a person), got {num_people}")
        if num_unseen_eval < 1 or num_unseen_train < 0:
            raise ValueError("num_unseen_eval must be >= 1 and num_unseen_train >= 0")
        rng = random.Random(seed)
        total = num_people + num_unseen_eval + num_unseen_train
        looks: list[dict[str, str]] = []
        for _ in range(200 * total):                       # rejection sampling for distinct looks
            look = _draw_look(rng)
            if all(_look_distance(look, o) >= MIN_LOOK_DISTANCE for o in looks):
                looks.append(look)
                if len(looks) == total:
                    break
        if len(looks) < total:
            raise ValueError(f"could not draw {total} distinct looks")
        if total > len(NAME_HEADS) * len(NAME_TAILS):
            raise ValueError(f"at most {len(NAME_HEADS) * len(NAME_TAILS)} people (unique first names)")
        first_names = rng.sample([h + t for h in NAME_HEADS for t in NAME_TAILS], total)
        people = []
        for i, look in enumerate(looks):
            pronoun = rng.choice(["she", "he"])
            name = f"{first_names[i]} {rng.choice(LAST_NAMES)}"
            facts = {a[0]: rng.choice(a[1]) for a in ATTRIBUTES}
            people.append(Person(pid=f"p{i:03d}", name=name, pronoun=pronoun, facts=facts, look=look,
                                 portrait=draw_portrait(look)))
        order = list(range(num_people))
        rng.shuffle(order)
        known = people[:num_people]
        assert len({p.portrait.tobytes() for p in people}) == total, "portraits must be distinct"
        return cls(people=known, unseen_eval=people[num_people:num_people + num_unseen_eval],
                   unseen_train=people[num_people + num_unseen_eval:], forget_order=order, seed=seed)

    def forget_people(self, forget: int = 10) -> list[Person]:
        if forget not in FORGET_PERCENTS:
            raise ValueError(f"forget must be one of {FORGET_PERCENTS}, got {forget!r}")
        n = max(1, round(len(self.people) * forget / 100))
        return [self.people[i] for i in self.forget_order[:n]]

    def vocabulary(self, splits: dict[str, list[QA]]) -> Vocabulary:
        """The judge's vocabulary (people.vocabulary): every person of this world, the words of `splits`."""
        return vocabulary(self.people + self.unseen_eval + self.unseen_train, splits)

    def _rng(self, *tags) -> random.Random:
        """An independent, reproducible stream per (seed, tags): splits don't depend on call order."""
        return random.Random(f"{self.seed}/" + "/".join(map(str, tags)))

    def person_qas(self, person: Person, template: int = 0, image: Image.Image | None = None,
                   forms: tuple[str, ...] = ("image", "text"), tag: str = "eval") -> list[QA]:
        """All gen / mc / cloze questions about one person (every fact, each requested form)."""
        rng = self._rng(tag, person.pid, template)
        return [fact_qa(person, a, kind, form, template, rng, image)
                for a in range(len(ATTRIBUTES)) for kind in ("gen", "mc", "cloze") for form in forms]

    def splits(self, forget: int = 10) -> dict[str, list[QA]]:
        """The evaluation sets. forget/retain: canonical questions (template 0), image and text forms.
        test: forget people, a transformed portrait each, paraphrased questions (held-out template), image form.
        utility: two image-only questions per known and unseen-eval person. private: one per person.
        unknown: unseen-eval people, three fact questions each (image form) + one by name."""
        forget_set = self.forget_people(forget)
        forget_ids = {p.pid for p in forget_set}
        out: dict[str, list[QA]] = {k: [] for k in SPLITS}
        for p in self.people:
            out["forget" if p.pid in forget_ids else "retain"] += self.person_qas(p)
        for p in forget_set:
            view = transform_portrait(p.portrait, self._rng("test-view", p.pid))
            out["test"] += self.person_qas(p, template=TEST_TEMPLATE, image=view, forms=("image",), tag="test")
        everyone = self.people + self.unseen_eval
        for p in everyone:
            rng = self._rng("utility", p.pid)
            out["utility"] += [utility_qa(p, w) for w in rng.sample(UTILITY, 2)]
            rng = self._rng("private", p.pid)
            out["private"].append(private_qa(p, rng.choice(["image", "text"]), rng))
        for p in self.unseen_eval:
            rng = self._rng("unknown", p.pid)
            out["unknown"] += [unknown_qa(p, a, "image") for a in rng.sample(range(len(ATTRIBUTES)), 3)]
            out["unknown"].append(unknown_qa(p, rng.randrange(len(ATTRIBUTES)), "text"))
        return out

