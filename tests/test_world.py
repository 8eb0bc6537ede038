"""The synthetic world: the question grammar and its held-out split, the views and theirs, the splits, the
strangers, determinism, QA format and bad input."""

import random
import re

import numpy as np
import pytest

from asru_min.data import MC_SUFFIX, QA
from asru_min.metrics import is_refusal, word_set
from asru_min.world.grammar import ATTRIBUTES as GRAMMAR, FRAMES, IMAGE_SUBJECTS, fill, phrasings
from asru_min.world.people import ATTRIBUTES, World, utility_qa
from asru_min.world.portraits import (ALL_VIEWS, BACKGROUNDS, HELDOUT_VIEWS, LOOK_FEATURES, MIN_LOOK_DISTANCE,
                                      TRAIN_VIEWS, render_view)


@pytest.fixture(scope="module")
def world():
    return World.generate(num_people=40, seed=0, num_unseen_eval=6, num_unseen_probe=8)


def _signature(qas):
    return [(q.question, q.answer, q.kind, q.form, q.person, q.ground_truth,
             q.image.tobytes() if q.image is not None else b"") for q in qas]


def _templates(heldout: bool) -> set[str]:
    return {p.template(a) for a in GRAMMAR for p in phrasings(a, heldout)}


def test_training_and_heldout_phrasings_are_disjoint_and_recombine_trained_parts():
    train, held = _templates(False), _templates(True)
    assert held and train.isdisjoint(held)
    for attr in GRAMMAR:
        pairs = {(p.i, p.j) for p in phrasings(attr, heldout=True) if p.kind == "frame"}
        for i, j in pairs:                   # the frame and the attribute phrase each occur in training
            assert any((i, jj) not in pairs for jj in range(len(attr.phrases)))
            assert any((ii, j) not in pairs for ii in range(len(FRAMES)))


def test_every_word_of_a_heldout_question_is_in_the_tokenizer_corpus(world):
    corpus = world.texts()
    words = word_set(corpus)
    s = world.splits(10)
    heldout = s["test"] + s["retain_test"] + s["validation"] + s["retain_validation"]
    for q in heldout:
        stem = q.question.split("\n")[0]
        assert word_set([stem]) <= words, stem
    # and no held-out question is a training string
    held = {q.question.split("\n")[0] for q in heldout}
    train = {t.split("\n")[0] for t in corpus}
    assert held.isdisjoint(train)


def test_heldout_views_are_never_training_views():
    assert set(HELDOUT_VIEWS).isdisjoint(TRAIN_VIEWS) and set(HELDOUT_VIEWS) | set(TRAIN_VIEWS) == set(ALL_VIEWS)
    for k, values in enumerate((2, 5, 5, 3)):  # every single transformation occurs in training views
        assert {v[k] for v in TRAIN_VIEWS} == set(range(values))


def test_training_views_and_splits_use_the_right_views(world):
    from asru_min.world.pretrain import make_views

    views = make_views(world, 6, seed=0)
    p = world.people[0]
    held = {render_view(p.portrait, v).tobytes() for v in HELDOUT_VIEWS}
    assert not any(im.tobytes() in held for im in views[p.pid])
    test_images = [q.image.tobytes() for q in world.splits(10)["test"] + world.splits(10)["retain_test"]
                   if q.image is not None and q.person == p.pid]
    assert test_images and all(im in held for im in test_images)


def test_same_seed_same_world_different_seed_differs(world):
    again = World.generate(num_people=40, seed=0, num_unseen_eval=6, num_unseen_probe=8)
    a, b = world.splits(10), again.splits(10)
    for k in a:
        assert _signature(a[k]) == _signature(b[k]), k
    assert _signature(world.training_samples(3, strangers=4)) == _signature(again.training_samples(3, strangers=4))
    other = World.generate(num_people=40, seed=1, num_unseen_eval=6, num_unseen_probe=8)
    assert [p.name for p in other.people] != [p.name for p in world.people]
    assert _signature(world.training_samples(0)) != _signature(world.training_samples(1))


def test_splits_disjoint_complete_and_nested(world):
    ids = {p.pid for p in world.people}
    previous = set()
    for k in (5, 10, 15):
        s = world.splits(k)
        f, r = {q.person for q in s["forget"]}, {q.person for q in s["retain"]}
        assert len(f) == round(40 * k / 100) and f.isdisjoint(r) and f | r == ids
        assert {q.person for q in s["test"]} == f and {q.person for q in s["retain_test"]} == r
        assert previous <= f
        previous = f
    s = world.splits(10)
    unseen, probe = {p.pid for p in world.unseen_eval}, {p.pid for p in world.unseen_probe}
    assert unseen.isdisjoint(probe) and unseen.isdisjoint(ids) and probe.isdisjoint(ids)
    assert {q.person for q in s["unknown"]} == unseen
    assert {q.person for q in s["utility"]} == {q.person for q in s["private"]} == ids | unseen
    assert {q.person for q in s["positives"]} == probe                           # the probe pool: positives only
    assert not any(q.person in probe for k, qas in s.items() if k != "positives" for q in qas)
    assert len(s["forget"]) + len(s["retain"]) == 40 * len(ATTRIBUTES) * 3 * 2
    assert len(s["test"]) + len(s["retain_test"]) == 40 * len(ATTRIBUTES) * 2 * 2
    assert {q.kind for q in s["test"]} == {"gen", "mc"} and {q.form for q in s["test"]} == {"image", "text"}
    canonical = {q.question for q in s["forget"] + s["retain"]}
    assert not any(q.question in canonical for q in s["test"] + s["retain_test"])


def test_training_samples_cover_known_people_and_strangers_only(world):
    train = world.training_samples(0, strangers=5, matching=True)
    seen = {q.person for q in train}
    ids = {p.pid for p in world.people}
    assert ids <= seen and not seen & {p.pid for p in world.unseen_eval + world.unseen_probe}
    strangers = [q for q in train if q.person.startswith("stranger")]
    assert len({q.person for q in strangers}) == 5
    assert {q.kind for q in strangers} == {"unknown", "private", "utility", "describe"}
    fixed_names = {p.name.split()[0] for p in world.people + world.unseen_eval + world.unseen_probe}
    for q in strangers:
        if q.kind == "unknown":
            assert is_refusal(q.answer)
            if q.form == "text":
                assert q.answer.startswith("Sorry, I don't know who ") and re.search(r"who (\w+)", q.answer)[1] \
                    not in fixed_names
    held = _templates(True)
    stems = {q.question.split("\n")[0] for q in train if q.kind in ("gen", "mc", "unknown")}
    people = world.people + [p for p in world.strangers(random.Random(0), 0)]
    filled = {fill(t, s) for t in held for s in IMAGE_SUBJECTS + tuple(p.name for p in people)}
    assert stems.isdisjoint(filled)                                   # no held-out phrasing is ever trained
    facts = {(q.person, q.ground_truth, q.kind, q.form) for q in train if q.kind in ("gen", "mc", "cloze")}
    assert all((q.person, q.ground_truth, q.kind, q.form) in facts for q in world.splits(10)["retain"])


def test_strangers_are_fresh_and_unlike_every_fixed_person(world):
    a = world.strangers(random.Random(1), 20)
    b = world.strangers(random.Random(2), 20)
    assert [p.name for p in a] != [p.name for p in b]
    fixed = world.people + world.unseen_eval + world.unseen_probe
    for s in a:
        assert all(sum(s.look[k] != p.look[k] for k in LOOK_FEATURES) >= MIN_LOOK_DISTANCE for p in fixed)


def test_portraits_distinct_and_drawn_from_the_look(world):
    everyone = world.people + world.unseen_eval + world.unseen_probe
    assert len({p.portrait.tobytes() for p in everyone}) == len(everyone)
    for i, a in enumerate(everyone):
        assert a.portrait.size == (128, 128) and a.look["shirt"] != a.look["background"]
        for b in everyone[i + 1:]:
            assert sum(a.look[k] != b.look[k] for k in LOOK_FEATURES) >= MIN_LOOK_DISTANCE
    for p in (p for p in everyone if p.look["pattern"] == "plain"):
        assert p.portrait.getpixel((2, 2)) == BACKGROUNDS[p.look["background"]]
    assert len({p.name.split()[0] for p in everyone}) == len(everyone)
    view = np.asarray(render_view(everyone[0].portrait, HELDOUT_VIEWS[0]), dtype=np.float32)
    assert np.abs(view - np.asarray(everyone[0].portrait, dtype=np.float32)).mean() > 5.0


def test_qa_fields_well_formed(world):
    s = world.splits(15)
    names = {p.pid: p.name for p in world.people + world.unseen_eval + world.unseen_probe}
    for qas in s.values():
        for q in qas:
            assert isinstance(q, QA) and (q.image is not None) == (q.form == "image") == bool(q.visible)
            msgs = q.messages()
            assert msgs[0]["content"][-1]["text"] == q.question
            if q.form == "text" and q.kind != "utility":
                assert names[q.person] in q.question
            if q.kind == "mc":
                assert q.answer in "ABCD" and len(set(q.options)) == 4 and q.question.endswith(MC_SUFFIX)
                assert q.options["ABCD".index(q.answer)] == q.ground_truth
            elif q.kind == "cloze":
                assert "[Blank]" in q.question and q.answer == q.ground_truth
            elif q.kind in ("gen", "utility"):
                assert q.ground_truth.lower() in q.answer.lower() and q.answer.endswith(".")
            else:
                assert q.ground_truth == "" and is_refusal(q.answer)
    assert {q.answer for q in s["retain"] if q.kind == "mc"} == set("ABCD")
    assert not any(is_refusal(q.answer) for q in s["retain"] if q.kind == "gen")


def test_bad_arguments(world):
    with pytest.raises(ValueError):
        world.splits(7)
    with pytest.raises(ValueError):
        World.generate(num_people=3)
    with pytest.raises(ValueError):
        world.training_samples(0, strangers=-1)
    with pytest.raises(ValueError):
        utility_qa(world.people[0], "shoe size")


def test_reorder_options_keeps_stem_truth_and_letter_consistent(world):
    import random
    from asru_min.world.people import reorder_options
    qa = next(q for q in world.training_samples(0) if q.kind == "mc")
    rng = random.Random(0)
    copies = [reorder_options(qa, rng) for _ in range(20)]
    assert len({c.answer for c in copies}) > 1                       # the letter moves with the order
    for c in copies:
        assert c.question.split("\nA. ")[0] == qa.question.split("\nA. ")[0]
        assert sorted(c.options) == sorted(qa.options) and c.ground_truth == qa.ground_truth
        assert c.options["ABCD".index(c.answer)] == qa.ground_truth
        assert f"\n{c.answer}. {qa.ground_truth}\n" in c.question
    with pytest.raises(ValueError, match="four-option"):
        reorder_options(next(q for q in world.training_samples(0) if q.kind == "cloze"), rng)


def test_reorder_options_keep_fewer(world):
    import random
    from asru_min.world.people import reorder_options
    qa = next(q for q in world.training_samples(0, matching=True) if q.kind == "match")
    rng = random.Random(0)
    for keep in (2, 3):
        for c in [reorder_options(qa, rng, keep=keep) for _ in range(10)]:
            assert len(c.options) == keep and qa.ground_truth in c.options
            assert c.options["ABCD"[:keep].index(c.answer)] == qa.ground_truth
            assert f"\n{'ABCD'[keep - 1]}. " in c.question and f"\n{'ABCD'[keep]}. " not in c.question
    for bad in (1, 5):
        with pytest.raises(ValueError, match="keep"):
            reorder_options(qa, rng, keep=bad)


# --- the reordered question forms, names mid-sentence, private questions apart (issue 26) -------------------------

def _digest(qa_lists) -> str:
    import hashlib

    h = hashlib.sha256()
    for qas in qa_lists:
        for q in qas:
            h.update(repr((q.question, q.answer, q.kind, q.form, q.person, q.ground_truth, q.phrasing, q.visible,
                           q.options)).encode())
            h.update(q.image.tobytes() if q.image is not None else b"-")
    return h.hexdigest()


def test_the_world_is_the_one_the_shipped_weights_were_trained_on(world):
    """The shipped weights were trained on world version 2: its splits and training samples are byte for byte those
    of version 2 at ea18c45, where they were built as `World.generate(..., version=2)` beside version 1 (digests
    computed there with this test's `_digest`)."""
    s = world.splits(10)
    assert _digest([s[k] for k in sorted(s)]) == "552b83f19daa9bcb1d7c4f3190356b4ed26bef4fd193fec3d8c963bf851d0225"
    assert _digest([world.training_samples(3, strangers=4, matching=True)]) == \
        "057cdc41236ba578d8f7f3af90f10bf94c4106e47fa844a44317ed3a2aaa6d74"


def test_reordered_heldout_forms_follow_the_heldout_rule(world):
    """Frames 6-8 and the subject-first declaratives: held-out ones are held out by the same rule, use only words of
    the training text, are never trained on, and reach the test and validation splits."""
    from asru_min.world.gates import REORDERED_FORMS
    from asru_min.world.grammar import ATTRIBUTE_NAMES, HELDOUT_MOD, QUESTION_FIRST_FRAMES

    for attr in GRAMMAR:
        held, train = phrasings(attr, True), phrasings(attr, False)
        assert {p.kind for p in held} == {"frame", "decl"} and any(p.kind == "decl" for p in train)
        assert any(p.reordered for p in held) and any(p.reordered for p in train)
        assert {p.i for p in held + train if p.kind == "frame" and not p.reordered} == \
            set(range(len(QUESTION_FIRST_FRAMES)))
        a = ATTRIBUTE_NAMES.index(attr.name)
        assert {p.i for p in held if p.kind == "decl"} == \
            {k for k in range(len(attr.declaratives)) if (k + a) % HELDOUT_MOD == 0}
    corpus = world.texts()
    words, trained = word_set(corpus), {t.split("\n")[0] for t in corpus}
    s = world.splits(10)
    heldout = s["test"] + s["retain_test"] + s["validation"] + s["retain_validation"]
    stems = {q.question.split("\n")[0] for q in heldout}
    assert all(word_set([stem]) <= words for stem in stems) and stems.isdisjoint(trained)
    new = [q for q in s["test"] + s["retain_test"] if q.phrasing.rsplit("/", 1)[0] in REORDERED_FORMS]
    assert {q.kind for q in new} == {"gen", "mc"} and {q.form for q in new} == {"image", "text"}
    assert any(q.question.endswith(" works as what?") for q in heldout)                   # the example
    templates = {p.template(a) for a in GRAMMAR for p in phrasings(a, True)}
    people = world.people + world.strangers(random.Random(0), 3)
    filled = {fill(t, s_) for t in templates for s_ in IMAGE_SUBJECTS + tuple(p.name for p in people)}
    train = world.training_samples(0, strangers=3, matching=True)
    assert filled.isdisjoint(q.question.split("\n")[0] for q in train)


def test_answers_name_known_people_mid_sentence(world):
    """Known names are written after other words too, "who <name>" included, in both forms: the name token the
    model writes in "I don't know who <name> is" is one it writes for known people."""
    train = world.training_samples(0, strangers=3, matching=True) + world.training_samples(1)
    for p in world.people:
        answers = [q.answer for q in train if q.person == p.pid and q.kind == "gen"]
        assert any(f"who {p.name} is" in a for a in answers)
        assert any(f" {p.name}" in a for a in answers if "who " not in a and not a.startswith("This is"))
        assert any(f"in this image is {p.name}." in a for a in answers)
    assert any(q.answer.startswith(p.name) for q in train for p in world.people[:1])     # openings stay
    strangers = [q for q in train if q.person.startswith("stranger") and q.question.startswith("Do you know who")]
    assert strangers and all(is_refusal(q.answer) and q.kind == "unknown" for q in strangers)


def test_private_questions_mirror_fact_questions(world):
    """Private questions: none opens like a held-out fact question ("What is the occupation of the father of ...?"
    opened like "What is the occupation of {s}?"); half ask an attribute's own training question about a relative,
    differing from a fact question in "the father of" / "the mother of" alone; none is a fact question; all refused."""
    train = [q for seed in range(3) for q in world.training_samples(seed, strangers=20) if q.kind == "private"]
    s = world.splits(10)
    private = train + s["private"] + s["private_train"] + [q for q in s["positives"] if q.kind == "private"]
    assert all(is_refusal(q.answer) for q in private)
    openings = {p.template(a).split("{s}")[0] for a in GRAMMAR for p in phrasings(a, True)} - {""}
    assert "What is the occupation of " in openings
    assert not any(q.question.startswith(o) for q in private for o in openings)
    relatives = [q for q in private if re.search(r"the (father|mother) of ", q.question)]
    assert len(private) / 3 < len(relatives) < 2 * len(private) / 3
    everyone = world.people + world.unseen_eval + world.unseen_probe
    facts = {fill(p.template(a), subj) for a in GRAMMAR for p in phrasings(a, False)
             for subj in IMAGE_SUBJECTS + tuple(p.name for p in everyone)}
    known = [q for q in relatives if not q.person.startswith("stranger")]
    assert known and all(re.sub(r"the (father|mother) of ", "", q.question, count=1) in facts for q in known)
    assert not any(q.question in facts for q in private)
    assert {q.question.split(" the ")[0] for q in relatives} >= {"Where was", "Who employs", "What does"}


def test_a_model_folder_of_another_world_version_is_refused(tmp_path):
    """load_world checks the world version a model folder records (pretrain.py writes it into the recipe of
    pretrain_metrics.json): version 1, or a pretrain_metrics.json that records no version (the weights shipped up to
    d865cb3), is refused with a message saying how to get version 1's code; this version, the shipped weights and a
    folder with no pretrain_metrics.json (a checkpoint made elsewhere) pass and get the one world."""
    import json
    import os

    from asru_min.world import WORLD_VERSION, check_world_version, load_splits

    folders = {"this": {"recipe": {"world_version": WORLD_VERSION}}, "v1": {"recipe": {"world_version": 1}},
               "unrecorded": {"report": {}}, "none": None}
    for name, metrics in folders.items():
        (tmp_path / name).mkdir()
        if metrics is not None:
            (tmp_path / name / "pretrain_metrics.json").write_text(json.dumps(metrics))
    shipped = os.path.join(os.path.dirname(__file__), "..", "weights")
    for ok in (str(tmp_path / "this"), str(tmp_path / "none"), shipped):
        check_world_version(ok)
    plain = [q.question for q in load_splits(None, 10, 20, 0)["test"]]
    assert [q.question for q in load_splits(None, 10, 20, 0, model=str(tmp_path / "this"))["test"]] == plain
    assert plain == [q.question for q in World.generate(20, 0).splits(10)["test"]]
    for old in ("v1", "unrecorded"):
        with pytest.raises(ValueError, match="pretrained on world version 1.*git checkout d865cb3"):
            load_splits(None, 10, 20, 0, model=str(tmp_path / old))


def test_unlearned_gate_flags_a_glued_name_and_passes_clean_answers(world, monkeypatch):
    """The gate on an unlearned model: every held-out text question answered, a name glued to "who" (the defect
    of issue 26) reported with its question, clean refusals and answers pass."""
    import asru_min.evaluate as evaluate
    from asru_min.world.gates import unlearned_gate

    def fake_answer(model, processor, qas, batch_size=64):
        name = world.people[0].name
        return [f"Sorry, I don't know who{name} is." if i == 1 else f"Sorry, I don't know who {name} is."
                for i in range(len(qas))]

    monkeypatch.setattr(evaluate, "answer", fake_answer)
    gate = unlearned_gate(None, None, world, limit=5)
    assert gate["answers"] == 5 and not gate["passed"] and len(gate["malformed"]) == 1
    assert gate["malformed"][0][1].startswith("Sorry, I don't know who" + world.people[0].name.split()[0])
    monkeypatch.setattr(evaluate, "answer", lambda m, p, qas, batch_size=64: ["Sorry, I don't know."] * len(qas))
    everything = unlearned_gate(None, None, world)
    s = world.splits(10)
    assert everything["passed"] and everything["answers"] == sum(q.form == "text" for q in s["test"] + s["retain_test"])
