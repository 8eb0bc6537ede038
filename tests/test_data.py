"""The MLLMU-Bench reader, on small fake benchmark folders."""

import json

import pytest
from PIL import Image

from asru_min.data import MC_SUFFIX, QA
from asru_min.mllmu import with_protocol
from asru_min.mllmu import load_mllmu_bench, short_fact


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
    _fake_person(tmp_path / "Retain_Set", "C1", (0, 0, 255))
    s = load_mllmu_bench(tmp_path, forget=10)
    assert set(s) == {"forget", "retain", "test", "real", "utility", "private", "unknown"}
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
    assert {q.person for q in s["real"]} == {"C1"} and {q.kind for q in s["real"]} == {"mc", "gen", "cloze"}
    gen = [q for q in s["forget"] if q.kind == "gen"][0]
    assert gen.answer == "This person is a baker." and gen.ground_truth == "baker"   # short fact, no cloze match
    with pytest.raises(ValueError):
        load_mllmu_bench(tmp_path, forget=20)
    with pytest.raises(FileNotFoundError):
        load_mllmu_bench(tmp_path, forget=5)                 # forget_5/ is missing
    with pytest.raises(FileNotFoundError):
        load_mllmu_bench(tmp_path / "nowhere")


def test_short_fact_is_what_the_sentence_says_beyond_its_question():
    assert short_fact("Where was she born?", "She was born in Lindqvist Bay.") == "Lindqvist Bay"
    assert short_fact("What is the name of this person's mother?", "This person's mother's name is Helena Adler.") \
        == "Helena Adler"
    assert short_fact("What does this person do?", "This person works as a museum curator.") == "museum curator"
    assert short_fact("What is this person's annual salary?", "This person's annual salary is $64,000.") == "$64,000"
    assert short_fact("Is it?", "It is.") == "It is."                             # nothing new: the whole answer


def test_protocols_release_prompts_shots_and_image_only():
    mc = QA("Where was this person born?\nA. Oslo\nB. Lima\nC. Rome\nD. Kyiv\n" + MC_SUFFIX, "C",
            Image.new("RGB", (8, 8)), "mc", "p1", ground_truth="Rome", options=["Oslo", "Lima", "Rome", "Kyiv"])
    other = QA("Where was that person born?\nA. W\nB. X\nC. Y\nD. Z\n" + MC_SUFFIX, "A", Image.new("RGB", (8, 8)),
               "mc", "p2", ground_truth="W", options=["W", "X", "Y", "Z"])
    text = QA("Where was R1 born?", "R1 was born in Rome.", None, "gen", "p1", ground_truth="Rome", form="text")
    assert with_protocol([mc, text], "plain", [other]) == [mc, text]
    out = with_protocol([mc, text], "release", [other])
    assert len(out) == 1                                                   # image questions only
    q = out[0]
    assert q.question == "Where was this person born?\nA: Oslo\nB: Lima\nC: Rome\nD: Kyiv\n" + MC_SUFFIX
    assert q.shot is not None and q.shot.answer == "A"
    assert q.shot.question.startswith("USER: <image>\nQuestion: Where was that")
    assert with_protocol([mc, text], "release", [mc]) == []  # the example person's own question is not asked
    assert [m["role"] for m in q.messages()] == ["user", "assistant", "user"] and len(q.images()) == 2
    with pytest.raises(ValueError, match="protocol"):
        with_protocol([mc], "paper", [])
