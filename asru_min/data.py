"""The QA record every stage consumes, its plain prompt format, and `qa_batch`, the one way a list of QA becomes
a model batch. The benchmark's reader and the release's prompt protocol: mllmu.py; stage 1's drawn positives:
steer.py.

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

from dataclasses import dataclass, field

import torch
from PIL import Image

FORGET_PERCENTS = (5, 10, 15)
LETTERS = "ABCD"
MC_SUFFIX = "Just give ONE letter representing the answer directly."
CLOZE_PREFIX = "Fill in the [Blank]:"
CLOZE_SUFFIX = "Answer with the missing words only."


@dataclass
class QA:
    """One question with its expected answer. answer: the reference ROUGE compares with (a sentence for gen, the
    letter for mc, the gap for cloze); ground_truth: the short fact a leak would reveal ("Velmora"; for mc the
    correct option text; "" for refusals); visible: what the image shows ("" without); stem: the question as the
    benchmark states it, without options or instruction ("" = `question`); shot: an in-context example asked and
    answered before this question (release protocol)."""

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
    stem: str = ""
    shot: "QA | None" = None

    def messages(self) -> list[dict]:
        """Chat messages for the processor: [the shot's user turn, its answer,] one user turn, image item first."""
        content: list[dict] = [{"type": "image"}] if self.image is not None else []
        content.append({"type": "text", "text": self.question})
        turns = [{"role": "user", "content": content}]
        if self.shot is not None:
            turns = self.shot.messages() + [{"role": "assistant", "content": self.shot.answer}] + turns
        return turns

    def images(self) -> list:
        """The images of `messages()`, in placeholder order."""
        own = [self.image] if self.image is not None else []
        return (self.shot.images() if self.shot is not None else []) + own


def listed(options: list[str]) -> str:
    """The option block of a multiple-choice question: "A. x\nB. y\nC. z\nD. w"."""
    return "\n".join(f"{l}. {o}" for l, o in zip(LETTERS, options))


def qa_batch(processor, qas: list, answers: list[str] | None = None, with_answers: bool = True, device=None) -> dict:
    """The one way a list of QA becomes a model batch: the chat prompt (image item first, then the question,
    generation prompt), left-padded. with_answers: + the answer (qa.answer, or answers[i]) + <|im_end|>, with
    `labels` -100 outside the answer (processor.encode_sft); else prompt only, so index -1 of every row is the
    last prompt token (where stage 1 reads and steers). Tensors are moved to `device` when given."""
    prompts = [processor.apply_chat_template(qa.messages(), add_generation_prompt=True) for qa in qas]
    images = [im for qa in qas for im in qa.images()] or None
    if with_answers:
        answers = [qa.answer for qa in qas] if answers is None else list(answers)
        batch = processor.encode_sft(prompts, answers, images=images)
    else:
        batch = processor(text=prompts, images=images)
    if device is not None:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    return batch
