"""The QA record every stage consumes, the one QA -> model batch helper, and the reader of the real MLLMU-Bench.

MLLMU-Bench (arXiv 2410.22108) pairs fictitious portraits with profiles and asks three kinds of questions about
each person, with the image ("the person in this image") or by name only:
  generation  one-sentence answer                        "She was born in Velmora."
  mc          four options A-D, answer = one letter       "B"
  cloze       a sentence with "[Blank]", answer = the gap "Velmora"
ASRU (arXiv 2605.15687) adds two refusal sets that define the knowledge-absence direction:
  private     private-information questions (phone number, address, ...) -> a natural refusal
  unknown     questions about people the model has never seen -> a refusal that describes the image

The synthetic world the default model was trained on (asru_min/world/) produces the same records.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

FORGET_PERCENTS = (5, 10, 15)
SPLITS = ("forget", "retain", "test", "utility", "private", "unknown")
MC_SUFFIX = "Just give ONE letter representing the answer directly."
CLOZE_PREFIX = "Fill in the [Blank]:"
CLOZE_SUFFIX = "Answer with the missing words only."


@dataclass
class QA:
    """One question with its expected answer. ground_truth is the fact a leak would reveal ("Velmora"; for mc the
    correct option text; "" for refusals); visible is a plain description of what the image shows ("" without)."""

    question: str
    answer: str
    image: Image.Image | None = None
    kind: str = "gen"
    person: str = ""
    ground_truth: str = ""
    form: str = "image"
    visible: str = ""
    options: list[str] = field(default_factory=list)
    phrasing: str = ""  # which phrasing of the question grammar asked it (synthetic world), "" elsewhere

    def messages(self) -> list[dict]:
        """Chat messages for the processor: one user turn, the image item first when there is an image."""
        content: list[dict] = [{"type": "image"}] if self.image is not None else []
        content.append({"type": "text", "text": self.question})
        return [{"role": "user", "content": content}]


def listed(options: list[str]) -> str:
    """The option block of a multiple-choice question: "A. x\nB. y\nC. z\nD. w"."""
    return "\n".join(f"{l}. {o}" for l, o in zip("ABCD", options))


def qa_batch(processor, qas: list, answers: list[str] | None = None, with_answers: bool = True, device=None) -> dict:
    """The one way a list of QA becomes a model batch: the chat prompt (image item first, then the question,
    generation prompt), left-padded. with_answers: + the answer (qa.answer, or answers[i]) + <|im_end|>, with
    `labels` -100 outside the answer (processor.encode_sft); else prompt only, so index -1 of every row is the
    last prompt token (where stage 1 reads and steers). Tensors are moved to `device` when given."""
    prompts = [processor.apply_chat_template(qa.messages(), add_generation_prompt=True) for qa in qas]
    images = [qa.image for qa in qas if qa.image is not None] or None
    if with_answers:
        answers = [qa.answer for qa in qas] if answers is None else list(answers)
        batch = processor.encode_sft(prompts, answers, images=images)
    else:
        batch = processor(text=prompts, images=images)
    if device is not None:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    return batch


# --- the real MLLMU-Bench on disk
def _read_split_records(folder: Path) -> list[dict]:
    """Records {ID, image, Classification_Task, Generation_Task, Mask_Task} of one split folder, in either layout
    of `load_mllmu_bench`."""
    if not folder.is_dir():
        raise FileNotFoundError(f"MLLMU-Bench split folder not found: {folder}")
    parquets = sorted(folder.glob("*.parquet"))
    if parquets:
        try:
            import pyarrow.parquet as pq  # optional: only the parquet layout needs it
        except ImportError as e:
            raise ImportError("reading MLLMU-Bench parquet files needs pyarrow: pip install pyarrow") from e
        return [row for f in parquets for row in pq.read_table(f).to_pylist()]
    sub = {"Classification_Task": "classification_qa", "Generation_Task": "generation_qa", "Mask_Task": "fill_blank_qa"}
    if not (folder / "classification_qa").is_dir():
        raise FileNotFoundError(f"{folder} holds neither *.parquet nor classification_qa/")
    records = []
    for qfile in sorted((folder / "classification_qa").glob("*_questions.json")):
        pid = qfile.name[: -len("_questions.json")]
        rec: dict = {"ID": pid, "image": None}
        for key, name in sub.items():
            f = folder / name / qfile.name
            rec[key] = json.loads(f.read_text()) if f.exists() else {}
        for ext in (".png", ".jpg", ".jpeg"):
            if (folder / "images" / f"{pid}{ext}").exists():
                rec["image"] = str(folder / "images" / f"{pid}{ext}")
                break
        else:
            raise FileNotFoundError(f"no image for {pid} in {folder / 'images'}")
        records.append(rec)
    return records


def _open_image(obj) -> Image.Image | None:
    if obj is None:
        return None
    if isinstance(obj, dict):
        obj = obj.get("bytes") or obj.get("path")
    if isinstance(obj, (bytes, bytearray)):
        return Image.open(io.BytesIO(obj)).convert("RGB")
    return Image.open(obj).convert("RGB")


def _as_dict(x) -> dict:
    return json.loads(x) if isinstance(x, str) else (x or {})


def _records_to_qas(records: list[dict]) -> list[QA]:
    out = []
    for rec in records:
        pid, image = str(rec["ID"]), _open_image(rec.get("image"))
        for task, kind in (("Generation_Task", "gen"), ("Classification_Task", "mc"), ("Mask_Task", "cloze")):
            block = _as_dict(rec.get(task))
            for key, form in (("Image_Textual_Questions", "image"), ("Pure_Text_Questions", "text")):
                for q in block.get(key, []) or []:
                    img = image if form == "image" else None
                    if kind == "mc":
                        opts = _as_dict(q["Options"])
                        options = [str(opts[l]) for l in "ABCD"]
                        letter = str(q["Correct_Answer"]).strip()[:1].upper()
                        out.append(QA(question=f"{q['Question']}\n{listed(options)}\n{MC_SUFFIX}", answer=letter,
                                      image=img, kind="mc", person=pid, ground_truth=options["ABCD".index(letter)],
                                      form=form, options=options))
                    else:
                        question = str(q["Question"]).replace("__", "[Blank]")
                        if kind == "cloze":
                            question = f"{CLOZE_PREFIX} {question} {CLOZE_SUFFIX}"
                        answer = str(q.get("Answer", q.get("Ground_Truth", "")))
                        out.append(QA(question=question, answer=answer, image=img, kind=kind, person=pid,
                                      ground_truth=answer, form=form))
    return out


def load_mllmu_bench(root: str | Path, forget: int = 10) -> dict[str, list[QA]]:
    """Read the real MLLMU-Bench into the `World.splits` structure. Expected layout (the Hugging Face release's
    split names; each split folder in either format):

        root/
          forget_{5,10,15}/      forget set           (required: forget_<forget>)
          retain_{95,90,85}/     retain set           (required: retain_<100-forget>)
          Test_Set/              transformed portraits + paraphrased questions of the forget people (optional)
          Real_Celebrity/        real people; used as the utility set (optional)

        a split folder is either
          *.parquet              rows with columns ID, image ({"bytes": b"..."} or bytes),
                                 Classification_Task, Generation_Task, Mask_Task   (needs pyarrow)
        or
          images/<ID>.png|.jpg
          classification_qa/<ID>_questions.json  {"Image_Textual_Questions": [{"Question", "Options": {"A".."D"},
                                                  "Correct_Answer": "B"}], "Pure_Text_Questions": [...]}
          generation_qa/<ID>_questions.json      {"Image_Textual_Questions": [{"Question", "Answer"}], ...}
          fill_blank_qa/<ID>_questions.json      same; the blank is "[Blank]" (or "__", rewritten)

    The benchmark has no private / unknown sets: those keys are empty lists. The Test_Set folder of the
    release holds all people; only the forget people (by ID) are kept.
    """
    if forget not in FORGET_PERCENTS:
        raise ValueError(f"forget must be one of {FORGET_PERCENTS}, got {forget!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MLLMU-Bench root not found: {root}")
    out: dict[str, list[QA]] = {k: [] for k in SPLITS}
    out["forget"] = _records_to_qas(_read_split_records(root / f"forget_{forget}"))
    out["retain"] = _records_to_qas(_read_split_records(root / f"retain_{100 - forget}"))
    forget_ids = {qa.person for qa in out["forget"]}
    if (root / "Test_Set").is_dir():
        out["test"] = [qa for qa in _records_to_qas(_read_split_records(root / "Test_Set")) if qa.person in forget_ids]
    if (root / "Real_Celebrity").is_dir():
        out["utility"] = [QA(**{**qa.__dict__, "kind": "utility"})
                          for qa in _records_to_qas(_read_split_records(root / "Real_Celebrity"))]
    return out
