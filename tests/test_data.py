"""The MLLMU-Bench reader, on small fake benchmark folders."""

import json

import pytest
from PIL import Image

from asru_min.data import MC_SUFFIX, QA, load_mllmu_bench


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
