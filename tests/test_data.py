"""The synthetic world: determinism, split structure, portraits, QA format, errors, and the MLLMU-Bench reader."""

import json
import random

import numpy as np
import pytest
from PIL import Image

from asru_min.data import MC_SUFFIX, QA, load_mllmu_bench
from asru_min.world.people import ATTRIBUTES, World, utility_qa
from asru_min.world.portraits import BACKGROUNDS, LOOK_FEATURES, MIN_LOOK_DISTANCE, transform_portrait


@pytest.fixture(scope="module")
def world():
    return World.generate(num_people=40, seed=0, num_unseen_eval=6, num_unseen_train=8)


def _signature(qas):
    return [(q.question, q.answer, q.kind, q.form, q.person, q.ground_truth,
             q.image.tobytes() if q.image is not None else b"") for q in qas]


def test_same_seed_same_world_different_seed_differs(world):
    again = World.generate(num_people=40, seed=0, num_unseen_eval=6, num_unseen_train=8)
    assert [p.portrait.tobytes() for p in world.people] == [p.portrait.tobytes() for p in again.people]
    a, b = world.splits(10), again.splits(10)
    for k in a:
        assert _signature(a[k]) == _signature(b[k]), k
    small = [World.generate(num_people=20, seed=2, num_unseen_eval=1, num_unseen_train=0) for _ in range(2)]
    assert _signature(small[0].training_samples(3, augment=0.5)) == _signature(small[1].training_samples(3, augment=0.5))
    other = World.generate(num_people=40, seed=1, num_unseen_eval=6, num_unseen_train=8)
    assert [p.name for p in other.people] != [p.name for p in world.people]
    assert [p.portrait.tobytes() for p in other.people] != [p.portrait.tobytes() for p in world.people]
    # a different epoch seed gives different paraphrases / option orders
    assert _signature(world.training_samples(0)) != _signature(world.training_samples(1))


def test_splits_disjoint_complete_and_nested(world):
    ids = {p.pid for p in world.people}
    previous = set()
    for k in (5, 10, 15):
        s = world.splits(k)
        f = {q.person for q in s["forget"]}
        r = {q.person for q in s["retain"]}
        assert len(f) == round(40 * k / 100) and f.isdisjoint(r) and f | r == ids
        assert {q.person for q in s["test"]} == f
        assert previous <= f                                   # forget_5 within forget_10 within forget_15
        previous = f
    s = world.splits(10)
    unseen_eval = {p.pid for p in world.unseen_eval}
    unseen_train = {p.pid for p in world.unseen_train}
    assert unseen_eval.isdisjoint(unseen_train) and unseen_eval.isdisjoint(ids)
    assert {q.person for q in s["unknown"]} == unseen_eval
    assert {q.person for q in s["utility"]} == ids | unseen_eval
    assert {q.person for q in s["private"]} == ids | unseen_eval
    # every fact of every person in both forms and all three kinds
    assert len(s["forget"]) + len(s["retain"]) == 40 * len(ATTRIBUTES) * 3 * 2
    # training never shows an evaluation-unseen person; it covers all known people and the training pool
    train = world.training_samples(0)
    seen = {q.person for q in train}
    assert seen == ids | unseen_train
    assert {q.kind for q in train} == {"gen", "mc", "cloze", "utility", "private", "unknown", "describe"}
    facts = {(q.person, q.ground_truth, q.kind, q.form) for q in train if q.kind in ("gen", "mc", "cloze")}
    assert all((q.person, q.ground_truth, q.kind, q.form) in facts for q in s["retain"])


def test_strangers_are_fresh_nameless_vision_practice(world):
    base = world.training_samples(0)
    more = world.training_samples(0, strangers=5)
    extra = [q for q in more if q.person.startswith("stranger")]
    assert len(more) == len(base) + 10 and len(extra) == 10
    assert {q.kind for q in extra} == {"utility", "describe"}       # never a name, a fact or a refusal
    assert all(q.image is not None for q in extra)
    assert all(q.visible in q.answer for q in extra if q.kind == "describe")
    # a new epoch draws new looks; the same epoch seed the same ones
    again = [q for q in world.training_samples(0, strangers=5) if q.person.startswith("stranger")]
    later = [q for q in world.training_samples(1, strangers=5) if q.person.startswith("stranger")]
    assert _signature(again) == _signature(extra) and _signature(later) != _signature(extra)
    # describing a known person names every large feature of the look
    d = next(q for q in base if q.kind == "describe" and q.person == world.people[0].pid)
    look = world.people[0].look
    assert look["hair_colour"] in d.answer and look["shirt"] in d.answer and look["background"] in d.answer
    with pytest.raises(ValueError):
        world.training_samples(0, strangers=-1)


def test_matching_questions_point_at_the_named_option(world):
    base = world.training_samples(0)
    more = world.training_samples(0, matching=True)
    match = [q for q in more if q.kind == "match"]
    assert not any(q.kind == "match" for q in base)
    assert len(match) == len(world.people) * len(ATTRIBUTES)
    for q in match:
        assert q.ground_truth in q.question.splitlines()[0] and q.image is None
        assert q.options["ABCD".index(q.answer)] == q.ground_truth and len(set(q.options)) == 4
        assert f"{q.answer}. {q.ground_truth}" in q.question
    assert len({q.answer for q in match}) == 4


def test_portraits_distinct_and_drawn_from_the_look(world):
    everyone = world.people + world.unseen_eval + world.unseen_train
    assert len({p.portrait.tobytes() for p in everyone}) == len(everyone)
    for i, a in enumerate(everyone):
        assert a.portrait.size == (128, 128) and a.portrait.mode == "RGB" and a.look["shirt"] != a.look["background"]
        for b in everyone[i + 1:]:
            assert sum(a.look[k] != b.look[k] for k in LOOK_FEATURES) >= MIN_LOOK_DISTANCE
    plain = [p for p in everyone if p.look["pattern"] == "plain"]
    assert plain
    for p in plain:                                           # the corner shows the named background colour
        assert p.portrait.getpixel((2, 2)) == BACKGROUNDS[p.look["background"]]
    assert len({p.name.split()[0] for p in everyone}) == len(everyone)          # unique first names


def test_test_split_images_and_questions_differ(world):
    s = world.splits(10)
    originals = {p.pid: p.portrait for p in world.people}
    for q in s["test"]:
        a = np.asarray(q.image, dtype=np.float32)
        b = np.asarray(originals[q.person], dtype=np.float32)
        assert q.form == "image" and np.abs(a - b).mean() > 5.0
    forget_q = {q.question for q in s["forget"]}
    assert not any(q.question in forget_q for q in s["test"] if q.kind == "gen")
    # transforms are seeded: same rng seed, same view; strength 0 with no mirror keeps the picture
    p = world.people[0].portrait
    assert transform_portrait(p, random.Random(5)).tobytes() == transform_portrait(p, random.Random(5)).tobytes()


def test_qa_fields_well_formed(world):
    s = world.splits(15)
    names = {p.pid: p.name for p in world.people + world.unseen_eval}
    for split, qas in s.items():
        for q in qas:
            assert isinstance(q, QA) and q.kind in ("gen", "mc", "cloze", "utility", "private", "unknown")
            assert (q.image is not None) == (q.form == "image") == bool(q.visible)
            msgs = q.messages()
            assert msgs[0]["role"] == "user" and msgs[0]["content"][-1]["text"] == q.question
            assert (msgs[0]["content"][0]["type"] == "image") == (q.image is not None)
            if q.form == "text" and q.kind != "utility":
                assert names[q.person] in q.question
            if q.kind == "mc":
                assert q.answer in "ABCD" and len(q.answer) == 1 and len(set(q.options)) == 4
                assert q.options["ABCD".index(q.answer)] == q.ground_truth
                assert q.question.endswith(MC_SUFFIX)
                for letter, opt in zip("ABCD", q.options):
                    assert f"\n{letter}. {opt}\n" in q.question
            elif q.kind == "cloze":
                assert "[Blank]" in q.question and q.answer == q.ground_truth
            elif q.kind in ("gen", "utility"):
                assert q.ground_truth.lower() in q.answer.lower() and q.answer.endswith(".")
            else:
                assert q.ground_truth == "" and q.answer.startswith("Sorry")
                if q.kind == "unknown" and q.form == "image":
                    assert "does not provide enough information" in q.answer and q.visible in q.answer
    letters = {q.answer for q in s["retain"] if q.kind == "mc"}
    assert letters == set("ABCD")                             # answers are not all the same letter


def test_refusals_detected_by_metrics(world):
    metrics = pytest.importorskip("asru_min.metrics")
    s = world.splits(10)
    for q in s["private"] + s["unknown"] + [q for q in world.training_samples(0) if q.kind in ("private", "unknown")]:
        assert metrics.is_refusal(q.answer), q.answer
    assert not any(metrics.is_refusal(q.answer) for q in s["retain"] if q.kind == "gen")


def test_bad_arguments(world):
    with pytest.raises(ValueError):
        world.splits(7)
    with pytest.raises(ValueError):
        World.generate(num_people=3)
    with pytest.raises(ValueError):
        world.training_samples(0, augment=1.5)
    with pytest.raises(ValueError):
        utility_qa(world.people[0], "shoe size")
    with pytest.raises(ValueError):
        transform_portrait(world.people[0].portrait, random.Random(0), strength=2.0)


def _fake_person(folder, pid, colour, with_cloze=True):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(folder / "images" / f"{pid}.png")
    mc = {"ID": pid,
          "Image_Textual_Questions": [{"Question": "Where was this person born?",
                                       "Options": {"A": "Oslo", "B": "Lima", "C": "Rome", "D": "Kyiv"},
                                       "Correct_Answer": "C"}],
          "Pure_Text_Questions": [{"Question": f"Where was {pid} born?",
                                   "Options": {"A": "Oslo", "B": "Lima", "C": "Rome", "D": "Kyiv"},
                                   "Correct_Answer": "C"}]}
    gen = {"ID": pid, "Image_Textual_Questions": [{"Question": "What is this person's job?",
                                                   "Answer": "This person is a baker."}],
           "Pure_Text_Questions": []}
    cloze = {"ID": pid, "Image_Textual_Questions": [{"Question": "This person was born in __.", "Answer": "Rome"}],
             "Pure_Text_Questions": []}
    for sub, obj in (("classification_qa", mc), ("generation_qa", gen), ("fill_blank_qa", cloze)):
        if sub == "fill_blank_qa" and not with_cloze:
            continue
        (folder / sub).mkdir(exist_ok=True)
        (folder / sub / f"{pid}_questions.json").write_text(json.dumps(obj))


def test_mllmu_reader_on_a_fake_folder(tmp_path):
    _fake_person(tmp_path / "forget_10", "F1", (255, 0, 0))
    _fake_person(tmp_path / "retain_90", "R1", (0, 255, 0), with_cloze=False)
    _fake_person(tmp_path / "Test_Set", "F1", (200, 0, 0))
    _fake_person(tmp_path / "Test_Set", "R1", (0, 200, 0))
    s = load_mllmu_bench(tmp_path, forget=10)
    assert set(s) == {"forget", "retain", "test", "utility", "private", "unknown"}
    kinds = sorted((q.kind, q.form) for q in s["forget"])
    assert kinds == [("cloze", "image"), ("gen", "image"), ("mc", "image"), ("mc", "text")]
    mc = [q for q in s["forget"] if q.kind == "mc"][0]
    assert mc.answer == "C" and mc.ground_truth == "Rome" and mc.options == ["Oslo", "Lima", "Rome", "Kyiv"]
    assert mc.image.getpixel((0, 0)) == (255, 0, 0) and mc.question.endswith(MC_SUFFIX)
    cloze = [q for q in s["forget"] if q.kind == "cloze"][0]
    assert "[Blank]" in cloze.question and cloze.ground_truth == "Rome"
    text_mc = [q for q in s["forget"] if q.form == "text"][0]
    assert text_mc.image is None
    assert {q.person for q in s["retain"]} == {"R1"} and len(s["retain"]) == 3
    assert {q.person for q in s["test"]} == {"F1"}             # Test_Set is filtered to the forget people
    assert s["test"][0].image.getpixel((0, 0)) == (200, 0, 0)
    assert s["utility"] == [] and s["private"] == [] and s["unknown"] == []
    with pytest.raises(ValueError):
        load_mllmu_bench(tmp_path, forget=20)
    with pytest.raises(FileNotFoundError):
        load_mllmu_bench(tmp_path, forget=5)                 # forget_5/ is missing
    with pytest.raises(FileNotFoundError):
        load_mllmu_bench(tmp_path / "nowhere")


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
