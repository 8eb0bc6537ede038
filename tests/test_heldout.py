"""Evidence that holds: the validation splits share no (question, image) pair with the test splits, stage 1's
positives come from people no evaluated split holds, and no set a stage trains on (`train.stage_data`, built
without a model) holds a question of an evaluated split other than forget / retain."""

import pytest

from asru_min.evaluate import EVAL_SPLITS, SPLIT_KINDS, evaluate_model, format_table
from asru_min.metrics import is_refusal
from asru_min.train import TrainConfig, stage1_positives, stage_data
from asru_min.world.grammar import ATTRIBUTES as GRAMMAR, phrasings
from asru_min.world.people import World
from asru_min.world.portraits import HELDOUT_VIEWS, render_view

# Every evaluated split but the two whose questions the stages train on (forget, retain).
HELD_OUT = ("test", "retain_test", "validation", "retain_validation", "unknown", "private", "utility")


@pytest.fixture(scope="module")
def world():
    return World.generate(num_people=30, seed=0, num_unseen_eval=4, num_unseen_probe=6)


@pytest.fixture(scope="module")
def splits(world):
    return world.splits(10)


def key(qa) -> tuple:
    return qa.question, qa.image.tobytes() if qa.image is not None else b""


def pairs(qas) -> set:
    return {key(qa) for qa in qas}


def images_by_person(qas) -> dict:
    out: dict = {}
    for qa in qas:
        if qa.image is not None:
            out.setdefault(qa.person, set()).add(qa.image.tobytes())
    return out


def test_validation_is_test_shaped_but_shares_no_question_image_pair_with_test(world, splits):
    for valid, test in (("validation", "test"), ("retain_validation", "retain_test")):
        v, t = splits[valid], splits[test]
        assert len(v) == len(t) and {q.person for q in v} == {q.person for q in t}
        assert {(q.kind, q.form) for q in v} == {(q.kind, q.form) for q in t} == \
            {(k, f) for k in ("gen", "mc") for f in ("image", "text")}
    validation = splits["validation"] + splits["retain_validation"]
    test = splits["test"] + splits["retain_test"]
    assert pairs(validation).isdisjoint(pairs(test))
    assert len(pairs(validation)) == len(validation)                   # no question twice
    # each question: another phrasing than the test question of the same person, fact, kind and form ...
    place = {(q.person, q.phrasing.split("/")[0], q.kind, q.form): q.phrasing.split("/")[1] for q in test}
    assert all(place[(q.person, q.phrasing.split("/")[0], q.kind, q.form)] != q.phrasing.split("/")[1]
               for q in validation)
    # ... and a view of the portrait no test question of that person uses
    test_images = images_by_person(test)
    assert all(ims.isdisjoint(test_images[pid]) for pid, ims in images_by_person(validation).items())


def test_validation_uses_heldout_phrasings_and_views_only(world, splits):
    validation = splits["validation"] + splits["retain_validation"]
    held = {f"{a.name}/{p.kind}-{p.i}-{p.j}" for a in GRAMMAR for p in phrasings(a, heldout=True)}
    assert all(q.phrasing.rsplit("/", 1)[0] in held for q in validation)
    train = world.training_samples(0, strangers=2)
    assert {q.question.split("\n")[0] for q in validation}.isdisjoint(q.question.split("\n")[0] for q in train)
    assert pairs(validation).isdisjoint(pairs(splits["forget"] + splits["retain"]))
    by_pid = {p.pid: p for p in world.people}
    for pid, ims in list(images_by_person(validation).items())[:5]:
        views = {render_view(by_pid[pid].portrait, v).tobytes() for v in HELDOUT_VIEWS}
        assert ims <= views and by_pid[pid].portrait.tobytes() not in ims


def test_positives_are_unseen_probe_people_in_no_evaluated_split(world, splits):
    positives = splits["positives"]
    probe = {p.pid for p in world.unseen_probe}
    assert positives and {q.person for q in positives} == probe
    assert {(q.kind, q.form) for q in positives} == {(k, f) for k in ("unknown", "private") for f in ("image", "text")}
    assert all(is_refusal(q.answer) and not q.ground_truth for q in positives)
    evaluated = [q for name, qas in splits.items() if name != "positives" for q in qas]
    assert not probe & {q.person for q in evaluated}
    assert pairs(positives).isdisjoint(pairs(evaluated))
    evaluated_images = {q.image.tobytes() for q in evaluated if q.image is not None}
    assert not any(q.image.tobytes() in evaluated_images for q in positives if q.image is not None)
    assert not probe & {q.person for q in world.training_samples(0, strangers=2)}


@pytest.mark.parametrize("protocol", ["plain", "release"])
def test_every_stage_set_is_disjoint_from_every_evaluated_split(splits, protocol):
    cfg = TrainConfig(protocol=protocol, steer_retain_size=200, boundary_size=120, boundary_refusals=24)
    data = stage_data(cfg, splits)
    assert set(data) == {"positives", "steer_forget", "steer_retain", "boundary"}
    sets = {"positives": data["positives"], "steer_forget": data["steer_forget"],
            "steer_retain": data["steer_retain"], "boundary": [qa for qa, _ in data["boundary"]]}
    assert all(sets.values()) and len(data["steer_retain"]) == 200
    for name, qas in sets.items():
        for split in HELD_OUT:
            assert pairs(qas).isdisjoint(pairs(splits[split])), (name, split)
    assert data["positives"] == splits["positives"]
    trained = pairs(splits["forget"] + splits["retain"])
    refusals = pairs(splits["private_train"] + splits["positives"])  # the boundary's questions to refuse
    assert all(pairs(qas) <= trained for name, qas in sets.items() if name not in ("positives", "boundary"))
    assert pairs(sets["boundary"]) <= trained | refusals
    assert len(pairs(sets["boundary"]) & refusals) == cfg.boundary_refusals > 0
    forget_people = {q.person for q in splits["forget"]}
    assert all(f == (key(qa) in refusals or qa.person in forget_people)
               for qa, f in data["boundary"])
    if protocol == "release":
        assert all(qa.image is not None for qa in sets["steer_forget"] + sets["boundary"])


def test_stage_data_is_deterministic_and_needs_no_model(world, splits):
    cfg = TrainConfig(model="/nonexistent", steer_retain_size=50, boundary_size=60)
    a, b = stage_data(cfg, splits), stage_data(cfg, World.generate(30, 0, 4, 6).splits(10))
    for name in ("positives", "steer_forget", "steer_retain"):
        assert [key(qa) for qa in a[name]] == [key(qa) for qa in b[name]], name
    assert [(key(qa), f) for qa, f in a["boundary"]] == [(key(qa), f) for qa, f in b["boundary"]]
    other = stage_data(TrainConfig(seed=1, steer_retain_size=50, boundary_size=60), splits)
    assert [key(qa) for qa, _ in other["boundary"]] != [key(qa) for qa, _ in a["boundary"]]
    with pytest.raises(ValueError, match="forget QA of kinds"):
        stage_data(TrainConfig(steer_kinds="nonsense"), splits)


def test_positives_fall_back_without_a_positives_split(splits):
    cfg = TrainConfig()
    assert stage1_positives(cfg, splits) == splits["positives"]
    bench = {k: splits[k] for k in ("forget", "retain", "test")}          # MLLMU-Bench: drawn faces
    drawn = stage1_positives(TrainConfig(positive_size=5), bench)
    assert len(drawn) == 5 and all(q.kind == "unknown" and q.form == "image" for q in drawn)


def test_splits_are_deterministic_for_a_seed(splits):
    again = World.generate(num_people=30, seed=0, num_unseen_eval=4, num_unseen_probe=6).splits(10)
    other = World.generate(num_people=30, seed=1, num_unseen_eval=4, num_unseen_probe=6).splits(10)
    for name in ("validation", "retain_validation", "positives"):
        assert [key(q) + (q.answer,) for q in splits[name]] == [key(q) + (q.answer,) for q in again[name]], name
        assert pairs(splits[name]) != pairs(other[name]), name


def fake_answers(model, processor, qas, batch_size=32, max_new_tokens=50, progress=None, return_finished=False):
    texts = ["Sorry, I don't know." for _ in qas]
    return (texts, [True] * len(qas)) if return_finished else texts


def test_validation_is_evaluated_on_request_only_and_the_table_leads_with_heldout(splits):
    assert "validation" in SPLIT_KINDS and "retain_validation" in SPLIT_KINDS
    assert not {"validation", "retain_validation", "positives"} & set(EVAL_SPLITS)
    default = evaluate_model(None, None, splits, limit=2, verbose=False, answer_fn=fake_answers)
    assert "validation" not in default and "test" in default and "positives" not in default
    asked = evaluate_model(None, None, splits, limit=2, verbose=False, answer_fn=fake_answers,
                           names=("validation", "retain_validation"))
    assert asked["validation"]["image"]["refusal_rate"] == 1.0 and asked["validation"]["all"]["quality"] is not None
    assert asked["retain_validation"]["text"]["gen_n"] == 2 and "quality" not in asked["retain_validation"]["all"]
    with pytest.raises(ValueError, match="cannot evaluate"):
        evaluate_model(None, None, splits, answer_fn=fake_answers, names=("positives",))
    lines = format_table({"m": default}).splitlines()
    first = [next(i for i, line in enumerate(lines) if line.startswith(label))
             for label in ("test (held-out)", "retain_test (held-out)", "forget (trained prompts)",
                           "retain (trained prompts)")]
    assert first == sorted(first)


def test_boundary_refusals_add_questions_to_refuse_from_no_evaluated_split(splits):
    """--boundary-refusals N (issue 26): N private questions about known people (the world's private_train)
    or unknown-person questions (the positives') join the boundary set as forget pairs; none is a (question,
    image) pair of an evaluated split, and N = 0 leaves the boundary set as it was."""
    known = {q.person for q in splits["forget"] + splits["retain"]}
    assert {q.person for q in splits["private_train"]} == known
    assert all(is_refusal(q.answer) for q in splits["private_train"])
    plain = stage_data(TrainConfig(boundary_size=60, boundary_refusals=0), splits)["boundary"]
    data = stage_data(TrainConfig(boundary_size=60, boundary_refusals=40), splits)["boundary"]
    added = [(qa, f) for qa, f in data if qa.kind in ("private", "unknown")]
    assert len(data) == len(plain) + 40 and len(added) == 40 and all(f for _, f in added)
    assert sorted(key(qa) for qa, _ in data if qa.kind == "gen") == sorted(key(qa) for qa, _ in plain)
    assert {qa.kind for qa, _ in added} == {"private", "unknown"} and all(not qa.ground_truth for qa, _ in added)
    for split in HELD_OUT:
        assert pairs(qa for qa, _ in added).isdisjoint(pairs(splits[split])), split
    assert not {qa.person for qa, _ in added if qa.kind == "unknown"} & {q.person for q in splits["unknown"]}
    no_private = {k: v for k, v in splits.items() if k != "private_train"}  # as MLLMU-Bench: no private_train
    only = stage_data(TrainConfig(boundary_size=60, boundary_refusals=10), no_private)["boundary"]
    assert sum(qa.kind == "unknown" for qa, _ in only) == 10  # the positives' only
    with pytest.raises(ValueError, match="boundary_refusals"):
        stage_data(TrainConfig(boundary_refusals=10 ** 4), splits)
