"""MLLMU-Bench in the release's layout, on the fake benchmark of examples/make_fake_mllmu.py: the reader, short facts,
the release protocol, stage-1 positives, the whole command line end to end on a tiny random checkpoint, and every
bad input stopping the run before anything trains."""

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from asru_min.mllmu import load_mllmu_bench
from asru_min.evaluate import evaluate_model, release_letter
from asru_min.metrics import leaks
from asru_min.steer import positive_questions
from asru_min.train import TrainConfig, run

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("make_fake_mllmu", ROOT / "examples" / "make_fake_mllmu.py")
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_mllmu")
    fake.write_fake_mllmu(root)  # parquet when pyarrow imports, else the JSON layout
    return root


def _json_bench(tmp_path):
    fake.write_fake_mllmu(tmp_path, layout="json")
    return tmp_path


def _key(qa):
    return (qa.question, qa.answer, qa.ground_truth, qa.kind, qa.form, qa.person, qa.options,
            None if qa.image is None else qa.image.tobytes())


@pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow not installed")
def test_fake_in_parquet_and_json_reads_the_same(tmp_path):
    fake.write_fake_mllmu(tmp_path / "pq", layout="parquet")
    fake.write_fake_mllmu(tmp_path / "js", layout="json")
    assert sorted(p.name for p in (tmp_path / "pq" / "Test_Set").iterdir()) == \
        ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    a, b = load_mllmu_bench(tmp_path / "pq", 10), load_mllmu_bench(tmp_path / "js", 10)
    assert {k: [_key(q) for q in v] for k, v in a.items()} == {k: [_key(q) for q in v] for k, v in b.items()}


def test_reader_splits_kinds_short_facts_and_test_portraits(bench):
    s = load_mllmu_bench(bench, forget=10)
    forget_ids = {q.person for q in s["forget"]}
    assert len(forget_ids) == 1 and {q.person for q in s["test"]} == forget_ids        # Test_Set filtered
    assert not forget_ids & {q.person for q in s["retain"]} and len({q.person for q in s["real"]}) == 3
    for name in ("forget", "retain", "test", "real"):
        assert {(q.kind, q.form) for q in s[name]} == {(k, f) for k in ("gen", "mc", "cloze") for f in ("image", "text")}
    # the generation answers are sentences in the benchmark's style; the short fact of each is revealed by its
    # sentence and by nothing a refusal says, holds the person's value of the world's attribute it asks about,
    # and comes in the benchmark's forms: negatives, dates, lists, marked parts, money, heights
    world = fake.World.generate(20, 0)
    facts = {p.pid: set(p.facts.values()) for p in world.people + world.unseen_eval}
    extra = tuple(t.split("{s}")[0] for t in fake.EXTRA_QUESTIONS.values())
    gens = [q for q in s["forget"] + s["retain"] + s["real"] if q.kind == "gen"]
    for q in gens:
        assert leaks(q.answer, q.ground_truth) and q.answer != q.ground_truth, q.answer
        for refusal in ("Sorry, I don't know.", f"I'm not sure. {q.question}"):
            assert not leaks(refusal, q.ground_truth), (refusal, q.ground_truth)
        plain = q.ground_truth.replace("[", "").replace("]", "")
        assert q.question.startswith(extra) or any(v in plain or leaks(v, q.ground_truth) for v in facts[q.person])
    truths = [q.ground_truth for q in gens]
    assert any(t.startswith("no ") for t in truths) and any("], 19" in t for t in truths)
    assert any(t.count("[") > 1 for t in truths) and any("$" in t for t in truths)
    assert any("feet" in t for t in truths) and any(" cm" in t for t in truths)
    # each test image question draws one of the person's three views, seeded
    views = {q.image.tobytes() for q in s["test"] if q.image is not None}
    assert 1 < len(views) <= 3
    again = load_mllmu_bench(bench, forget=10)
    assert [_key(q) for q in again["test"]] == [_key(q) for q in s["test"]]
    assert [_key(q) for q in load_mllmu_bench(bench, 10, seed=1)["test"]] != [_key(q) for q in s["test"]]


def test_scores_per_kind_leaks_and_the_release_parse(bench):
    s = load_mllmu_bench(bench, forget=10)

    def answers(fn):
        return lambda model, processor, qas, **kw: ([fn(q) for q in qas], [True] * len(qas))
    right = evaluate_model(None, None, s, answer_fn=answers(lambda q: q.answer), verbose=False)
    for name in ("forget", "retain", "test", "real"):
        r = right[name]["all"]
        assert (r["mc_acc"], r["cloze_acc"], r["rougeL"], r["leak_rate"]) == (1.0, 1.0, 1.0, 1.0), name
    fact_only = evaluate_model(None, None, s, answer_fn=answers(lambda q: f"Maybe {q.ground_truth}?"), verbose=False)
    assert fact_only["forget"]["all"]["leak_rate"] == 1.0 and fact_only["forget"]["all"]["rougeL"] < 0.5
    refused = evaluate_model(None, None, s, answer_fn=answers(lambda q: "Sorry, I don't know."), verbose=False)
    assert refused["forget"]["all"]["leak_rate"] == 0.0 and refused["forget"]["all"]["refusal_rate"] == 1.0
    # release protocol: image mc only, the example person's not asked; "C" parses, "C. Rome" does not
    rel = evaluate_model(None, None, s, answer_fn=answers(lambda q: q.answer), verbose=False, protocol="release")
    people = {q.person for q in s["forget"]}
    image_mc = sum(q.kind == "mc" and q.image is not None for q in s["forget"])
    assert rel["forget"]["text"]["mc_n"] == 0
    assert rel["forget"]["image"]["mc_n"] == image_mc * (len(people) - 1) // len(people)  # equal counts per person
    assert rel["retain"]["image"]["mc_acc"] == 1.0 and rel["real"]["image"]["cloze_acc"] == 1.0
    assert (release_letter("C"), release_letter("c: Rome"), release_letter("C. Rome"), release_letter("")) == \
        ("C", "C", "", "")


def test_positives_are_unseen_faces_never_in_a_split(bench, tmp_path):
    s = load_mllmu_bench(bench, forget=10)
    drawn = positive_questions(6, seed=0, avoid_splits=s)
    assert len(drawn) == 6 and all(q.question.endswith(" if you do not know, describe the image.") for q in drawn)
    assert all(q.image is not None and q.kind == "unknown" for q in drawn)
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (10 * i, 0, 0)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="fewer than --positive-size 400"):
        assert len(positive_questions(400, folder=str(folder))) == 3
    s["forget"][0].image.save(folder / "3.png")                         # a forget portrait is no positive
    with pytest.raises(ValueError, match="3.png is also an image of an evaluated split"):
        positive_questions(400, folder=str(folder), avoid_splits=s)


def tiny(model, data, out, **kw) -> list[str]:
    flags = dict(model=model, data=str(data), out=str(out), forget=10, layer=1, eval_limit=1,
                 eval_max_new_tokens=4, refusal_filter=False, positive_size=4, steer_retain_size=4, steer_epochs=1,
                 boundary_size=4, boundary_refusals=2, group_size=2, max_new_tokens=4, prompts_per_step=2, grpo_epochs=1,
                 seed=1)  # the refusals: unseen faces with a private question (MLLMU-Bench has no private_train)
    flags.update(kw)
    argv = []
    for k, v in flags.items():
        argv += [f"--{k.replace('_', '-')}", str(v)] if not isinstance(v, bool) else \
            [f"--{'' if v else 'no-'}{k.replace('_', '-')}"]
    return argv


def test_train_then_evaluate_end_to_end_on_the_fake(tiny_ckpt, bench, tmp_path):
    """python -m asru_min.train --data FAKE --model TINY --forget 10 (its main): every stage runs, the celebrity
    split is scored per kind; python -m asru_min.evaluate --data FAKE gives the vanilla grid again."""
    from asru_min import evaluate, train

    out = tmp_path / "run"
    results = train.main(tiny(tiny_ckpt, bench, out))
    state = json.loads((out / "state.json").read_text())
    assert state["done"] == ["eval_vanilla", "stage1", "eval_stage1", "stage2", "eval_asru"]
    direction = json.loads((out / "direction.json").read_text())
    assert direction["n_positive"] == 4 and direction["n_negative"] > 0
    for stage in ("vanilla", "stage1", "asru"):
        real = results[stage]["real"]
        assert all(real[f][k] > 0 for f in ("image", "text") for k in ("mc_n", "cloze_n", "gen_n"))
        assert isinstance(real["all"]["rougeL"], float) and isinstance(real["all"]["mc_acc"], float)
    assert "real" in (out / "table.txt").read_text()
    again = evaluate.main(["--model", tiny_ckpt, "--data", str(bench), "--forget", "10", "--limit", "1",
                           "--max-new-tokens", "4", "--out", str(tmp_path / "m.json")])
    for name in ("forget", "test", "retain", "real"):
        assert again[name] == results["vanilla"][name], name
    rel = evaluate.main(["--model", tiny_ckpt, "--data", str(bench), "--limit", "1", "--max-new-tokens", "4",
                         "--protocol", "release", "--splits", "forget,real", "--out", ""])
    assert rel["forget"]["text"]["mc_n"] == 0 and rel["real"]["image"]["gen_n"] == 1


def _edit_json(path, fn):
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def test_bad_input_stops_before_training(tiny_ckpt, tmp_path):
    data = _json_bench(tmp_path / "bench")
    out = tmp_path / "run"

    def fails(match, root=data, **kw):
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            run(TrainConfig(**{**dict(model=tiny_ckpt, data=str(root), out=str(out), layer=1), **kw}))
        assert not out.exists()                                          # nothing ran, no run folder
    fails("must be one of", forget=20)
    fails("faces: no readable image", positives=str(tmp_path / "faces"))  # missing folder
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "a.png").write_text("no image")
    fails("faces: no readable image", positives=str(tmp_path / "faces"))
    other = tmp_path / "other_ckpt"
    shutil.copytree(tiny_ckpt, other)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(other / "tokenizer.json"))
    tok.add_tokens(["zzqxw"])
    tok.save(str(other / "tokenizer.json"))
    fails("another tokenizer", base_model=str(other))

    for name, change, match in (
            ("Retain_Set", None, r"lacks the split folder\(s\) \['Retain_Set'\]"),
            ("retain_90", "empty", "retain_90 has zero rows"),
            ("forget_10", "image", r"forget_10.*ID p\d+\): unreadable image"),
            ("forget_10", "options", r"classification_qa/p\d+_questions.json row 0 .*options A-D"),
            ("forget_10", "letter", r"row 0 .*answer 'F'")):
        broken = tmp_path / f"broken_{name}_{change}"
        shutil.copytree(data, broken)
        folder = broken / name
        pid = sorted(p.name for p in (folder / "classification_qa").iterdir())[0].split("_")[0]
        mc = folder / "classification_qa" / f"{pid}_questions.json"
        if change is None:
            shutil.rmtree(folder)
        elif change == "empty":
            for sub in ("classification_qa", "generation_qa", "fill_blank_qa"):
                shutil.rmtree(folder / sub)
                (folder / sub).mkdir()
        elif change == "image":
            (folder / "images" / f"{pid}.png").write_bytes(b"not a png")
        elif change == "options":
            _edit_json(mc, lambda o: o["Image_Textual_Questions"][0]["Options"].update(E="extra"))
        else:
            _edit_json(mc, lambda o: o["Image_Textual_Questions"][0].update(Correct_Answer="F"))
        fails(match, root=broken)
    assert os.listdir(tmp_path / "faces") == ["a.png"]
