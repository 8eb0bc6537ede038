"""The question grammar of the synthetic world: phrasings built from parts, split into training and held-out.

A question about one fact is built from parts:

    frame x attribute phrase      "Do you know" + "the home town"  ->  "Do you know the home town of {s}?"
    or an attribute's own verb    "Where was {s} born?"
    x subject                     image form: "the person in this image" | "the person shown" | "the person in
                                  the picture";  text form: the person's name

Frames and attributes' own verbs open the question with a question word or a request; the reordered forms put the
subject first or the question word last, as people also ask:

    REORDERED_FRAMES  "As for {s}, what is {np}?", "{NP} of {s} is what?", "And {np} of {s}?"
    declaratives      an attribute's verb with the subject first: "{S} was born in which town?", "{S} works as what?"

Held-out phrasings are the (frame, attribute phrase) pairs with (frame + phrase) % 3 == 0 and the declaratives
with (declarative + attribute index) % 3 == 0, in every subject form: no training string contains them, but every
frame and every attribute phrase occurs in training with other partners, so a held-out question uses only words
the model (and the tokenizer) met in training. Answering it tests knowing the fact, not knowing new English. The
verb questions are training phrasings; the first one, with the first subject, is the canonical phrasing of the
forget / retain sets.

Answers come in several sentence forms, most opening with the person's name ("Nedra Quarrel works at ..."), so
the model must know whose face it sees at the last prompt token, where ASRU reads and steers activations; the others
name the person mid-sentence ("As far as I know, Nedra Quarrel works at ...", "I know who Nedra Quarrel is: ..."),
so the name token the model writes after "who " is one it also writes for known people.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_SUBJECTS = ("the person in this image", "the person shown", "the person in the picture")
QUESTION_FIRST_FRAMES = ("What is {np} of {s}?", "Tell me {np} of {s}.", "Do you know {np} of {s}?",
                         "Can you tell me {np} of {s}?", "Please name {np} of {s}.",
                         "I would like to know {np} of {s}.")
# The subject first or the question word last ({NP}: capitalised {np}).
REORDERED_FRAMES = ("As for {s}, what is {np}?", "{NP} of {s} is what?", "And {np} of {s}?")
FRAMES = QUESTION_FIRST_FRAMES + REORDERED_FRAMES
HELDOUT_MOD = 3  # (frame, phrase) is held out iff (frame + phrase) % HELDOUT_MOD == 0


@dataclass(frozen=True)
class Attribute:
    name: str
    phrases: tuple[str, ...]   # noun phrases combined with FRAMES
    verbs: tuple[str, ...]     # whole questions with a {s} slot (training phrasings)
    answers: tuple[str, ...]   # answer sentences, the name first in the first three and mid-sentence in the
    # last two: {N} name, {v} value, {a} article of the value, {p} possessive, {P} personal pronoun
    clozes: tuple[str, ...]    # cloze sentences: {S} capitalised subject, [Blank] the value
    what: str                  # "where this person was born": the clause of a refusal
    declaratives: tuple[str, ...]  # subject-first questions ({S} capitalised subject)


ATTRIBUTES = (
    Attribute("birthplace", ("the birthplace", "the home town", "the place of birth"),
              ("Where was {s} born?", "In which town was {s} born?", "Which town does {s} come from?"),
              ("{N} was born in {v}.", "{N} comes from {v}.", "{N}'s home town is {v}.",
               "As far as I know, {N} was born in {v}.", "I know who {N} is: {P} comes from {v}."),
              ("{S} was born in [Blank].", "{S} comes from the town of [Blank]."), "where this person was born",
              ("{S} was born in which town?", "{S} was born where?", "{S} comes from which town?")),
    Attribute("birth_year", ("the birth year", "the year of birth"),
              ("In which year was {s} born?", "When was {s} born?", "Which year was {s} born in?"),
              ("{N} was born in {v}.", "{N} was born in the year {v}.", "{N}'s birth year is {v}.",
               "As far as I know, {N} was born in {v}.", "I know who {N} is: {P} was born in the year {v}."),
              ("{S} was born in the year [Blank].", "The birth year of {s} is [Blank]."),
              "when this person was born",
              ("{S} was born in which year?", "{S} was born when?", "{S} was born in what year?")),
    Attribute("occupation", ("the occupation", "the job", "the profession"),
              ("What does {s} do for a living?", "What job does {s} have?", "What does {s} work as?"),
              ("{N} works as {a} {v}.", "{N} is {a} {v} by profession.", "{N}'s occupation is {v}.",
               "As far as I know, {N} works as {a} {v}.", "I know who {N} is: {P} is {a} {v} by profession."),
              ("The occupation of {s} is [Blank].", "The job of {s} is [Blank]."), "this person's occupation",
              ("{S} does what for a living?", "{S} works as what?", "{S} has which job?")),
    Attribute("employer", ("the employer", "the workplace", "the place of work"),
              ("Where does {s} work?", "Which organisation does {s} work for?", "Who employs {s}?"),
              ("{N} works at {v}.", "{N} is employed by {v}.", "{N}'s employer is {v}.",
               "As far as I know, {N} works at {v}.", "I know who {N} is: {P} is employed by {v}."),
              ("{S} works at [Blank].", "The employer of {s} is [Blank]."), "where this person works",
              ("{S} works where?", "{S} works for which organisation?", "{S} is employed by which organisation?")),
    Attribute("hobby", ("the favourite hobby", "the pastime", "the favourite pastime"),
              ("What does {s} like to do in free time?", "Which hobby does {s} enjoy?",
               "What does {s} enjoy doing?"),
              ("{N} enjoys {v} in {p} free time.", "{N} likes {v}.", "{N}'s favourite hobby is {v}.",
               "As far as I know, {N} likes {v}.", "I know who {N} is: {P} enjoys {v} in {p} free time."),
              ("The favourite hobby of {s} is [Blank].", "{S} enjoys [Blank] in free time."), "this person's hobby",
              ("{S} enjoys which hobby?", "{S} likes to do what in free time?", "{S} enjoys doing what?")),
)
ATTRIBUTE_NAMES = tuple(a.name for a in ATTRIBUTES)


@dataclass(frozen=True)
class Phrasing:
    """One way to ask for an attribute: ("frame", i, j) = FRAMES[i] with phrases[j], ("verb", k, 0), or
    ("decl", k, a) = declaratives[k] of attribute a (its index in ATTRIBUTES, for the held-out rule)."""

    kind: str
    i: int
    j: int = 0

    @property
    def heldout(self) -> bool:
        return self.kind in ("frame", "decl") and (self.i + self.j) % HELDOUT_MOD == 0

    @property
    def reordered(self) -> bool:
        """The subject first or the question word last: a declarative or one of REORDERED_FRAMES."""
        return self.kind == "decl" or (self.kind == "frame" and self.i >= len(QUESTION_FIRST_FRAMES))

    def template(self, attr: Attribute) -> str:
        """The question with a {s} slot for the subject."""
        if self.kind == "verb":
            return attr.verbs[self.i]
        if self.kind == "decl":
            return attr.declaratives[self.i]
        phrase = attr.phrases[self.j]
        return FRAMES[self.i].replace("{np}", phrase).replace("{NP}", phrase[0].upper() + phrase[1:])


CANONICAL = Phrasing("verb", 0)


def phrasings(attr: Attribute, heldout: bool) -> list[Phrasing]:
    """The training (heldout=False) or held-out phrasings of one attribute."""
    a = ATTRIBUTE_NAMES.index(attr.name)
    every = [Phrasing("verb", k) for k in range(len(attr.verbs))]
    every += [Phrasing("frame", i, j) for i in range(len(FRAMES)) for j in range(len(attr.phrases))]
    every += [Phrasing("decl", k, a) for k in range(len(attr.declaratives))]
    return [p for p in every if p.heldout == heldout]


def subject_of(form: str, name: str, i: int = 0) -> str:
    """The subject of a question: image subject form `i` (IMAGE_SUBJECTS), or the name (text form)."""
    return IMAGE_SUBJECTS[i] if form == "image" else name


def fill(template: str, subject: str, name: str = "", value: str = "", pronoun: str = "she") -> str:
    """A template with its slots filled ({s} subject, {S} capitalised subject, {N} name, {v} value, {a} article
    of the value, {p} possessive pronoun, {P} personal pronoun)."""
    return template.format(s=subject, S=subject[0].upper() + subject[1:], N=name, v=value,
                           a="an" if value[:1].lower() in "aeiou" and value else "a",
                           p="her" if pronoun == "she" else "his", P=pronoun)
