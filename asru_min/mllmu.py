"""The real MLLMU-Bench: its reader (`load_mllmu_bench`), the short fact of each generation answer
(`short_fact`, the value a leak reveals) and the release's prompt protocol (`with_protocol`).

MLLMU-Bench (arXiv 2410.22108) pairs fictitious portraits with profiles and asks three kinds of questions about
each person, with the image ("the person in this image") or by name only:
  generation  one-sentence answer                        "This person was born in Tartu, Estonia."
  mc          four options A-D, answer = one letter       "B"
  cloze       a sentence with "[Blank]", answer = the gap "Tartu"
ASRU (arXiv 2605.15687) adds two refusal sets that define the knowledge-absence direction (private, unknown); the
benchmark has neither, so stage 1 draws its positives with `asru_min.steer.positive_questions`.
"""

from __future__ import annotations

import io
import json
import random
import re
from dataclasses import replace
from pathlib import Path

from PIL import Image

from .data import CLOZE_PREFIX, CLOZE_SUFFIX, FORGET_PERCENTS, LETTERS, MC_SUFFIX, QA, listed
from .metrics import MONTHS

# --- short facts (the notation is `asru_min/metrics.py`'s, above `leaks`)
#
# A generation ground truth is a sentence: "This person was born in Tartu, Estonia." Its fact is what it says
# beyond its question: not the subject ("this person", "the individual", the name the question gives), not
# function words, not the frame's verbs and nouns ("born", "educated", "works as", "resides in", "salary"),
# hedges ("about") nor unit words ("tall"). The rows' `biography` is not read: the sentence holds the value, the
# JSON layout and the release's training split have no biography, and a profile's wording can differ from the
# sentence's. The cloze ground truths are not read either: a person's clozes ask other questions too, so the
# longest one found in a sentence can be another fact of it.
_FUNCTION = frozenset(
    "a an the this that these those person persons people individual s t is was are were be been being am has have "
    "had do does did of in on at to for by with from as and or but his her hers their theirs its he she they him "
    "them it who whom whose what which where when why how name named called known yes currently also".split())
_FRAME = frozenset("""born birth birthplace place hometown native originally comes come came hails raised date
    birthday lives live living resides reside residing resident residence based located settled
    educated education studied study attended went completed graduated graduate holds hold earned received degree
    alma mater works work working worked employed employment job occupation profession career serves employs runs
    run salary annual annually earns earn makes income year yearly per paid earnings amount amounts dollars euros usd
    approximately about around roughly nearly estimated tall height stands measures measuring
    father mother parent parents dad mom pet pets owns own keeps
    favorite favourite food dish meal cuisine enjoys enjoy enjoyed likes like loves love prefers eating eat eats
    hobby hobbies pastime pastimes free time leisure spare interests interest activities activity doing playing
    plays go goes include includes spends weekends weekend practices
    medical condition conditions diagnosed suffers suffer health gender identifies sex""".split())
_NEGATIONS = frozenset("not no never none without".split())
_DENIED_FILLER = frozenset("any known have has own owns significant diagnosed reported suffer suffers from"
                           .split())
# capitalised words that name a kind of place, body or degree, not which one: "University of [Ghent]"
_GENERIC = frozenset("""university college institute school academy conservatory polytechnic seminary hospital
    clinic center centre company corporation inc ltd group bank city town state county province republic kingdom
    united states technology arts art sciences science music design the of and for high middle secondary national
    international royal faculty department phd mba bachelor master doctorate dr""".split())
_QUALIFIERS = frozenset("""retired former freelance local professional self-employed part-time full-time senior
    junior head chief certified licensed amateur avid successful chronic mild severe seasonal""".split())
_PREPOSITIONS = frozenset("at for in with from on of".split())
_LIST_QUESTION = re.compile(r"hobb|pastime|free time|fun\b|interests|activit|enjoy|conditions|pets", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_MONTH = "|".join(sorted(MONTHS, key=len, reverse=True))
_MONTH_DAY = (re.compile(rf"\b({_MONTH})\.? (\d{{1,2}})(?:st|nd|rd|th)?\b", re.IGNORECASE),      # March 14
              re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)? (?:of )?({_MONTH})\b", re.IGNORECASE))  # 14th of March
_NUMERIC_DATE = (re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"),          # 1987-03-14
                 re.compile(r"\b(\d{1,2})[/.](\d{1,2})[/.](\d{4})\b"))  # 03/14/1987, 14.03.1987
_YEAR = re.compile(r"\b\d{4}\b")
_MONTH_NAMES = ("January February March April May June July August September October November "
                "December").split()


def _base(word: str) -> str:
    """Lower case, possessive and plural "s" off: "person's" -> "person", "pets" -> "pet"."""
    w = word.lower().replace("\u2019", "'").removesuffix("'s")
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


def _date(value: str) -> str | None:
    """"[Month D], YYYY" (or "[Month D]") for a value that names a day: its day and month are the specific part.
    Numeric dates: yyyy-mm-dd, mm/dd/yyyy, dd/mm/yyyy or dd.mm.yyyy when the first number exceeds 12."""
    month = day = None
    if found := _MONTH_DAY[0].search(value):
        month, day = MONTHS[found[1].lower()], int(found[2])
    elif found := _MONTH_DAY[1].search(value):
        month, day = MONTHS[found[2].lower()], int(found[1])
    elif found := _NUMERIC_DATE[0].search(value):
        month, day = int(found[2]), int(found[3])
    elif found := _NUMERIC_DATE[1].search(value):
        month, day = (int(found[1]), int(found[2])) if int(found[1]) <= 12 else (int(found[2]), int(found[1]))
    if month is None or not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    year = _YEAR.search(value)
    return f"[{_MONTH_NAMES[month - 1]} {day}]" + (f", {year[0]}" if year else "")


def _span(text: str, skip) -> str:
    """The part of `text` from its first to its last word that `skip` does not reject, punctuation and a
    currency sign before it kept ("$64,000")."""
    kept = [m for m in _WORD.finditer(text) if not skip(m[0])]
    if not kept:
        return ""
    start = kept[0].start()
    return text[start - (start > 0 and text[start - 1] in "$\u20ac\u00a3"):kept[-1].end()]


def _proper_runs(text: str) -> list[tuple[int, int]]:
    """(start, end) of each run of capitalised words that are not generic ("Trinity College Dublin" -> Trinity,
    Dublin)."""
    runs, run = [], []
    for m in _WORD.finditer(text):
        if m[0][0].isupper() and m[0].lower() not in _GENERIC:
            run.append(m)
        elif run:
            runs, run = runs + [(run[0].start(), run[-1].end())], []
    return runs + ([(run[0].start(), run[-1].end())] if run else [])


def _bracket(text: str, spans: list[tuple[int, int]]) -> str:
    out, end = "", 0
    for a, b in spans:
        out, end = out + f"{text[end:a]}[{text[a:b]}]", b
    return out + text[end:]


def _marked(value: str, name_asked: bool) -> str:
    """`value` with its most specific part in brackets:
    - what follows "named" / "called" ("cat named [Biscuit]");
    - the first part of a hierarchy, parts split by ", " or " in " before a capital ("[Tartu], Estonia",
      "[Sorbonne] in Paris"), and in it each run of capitalised words that are not generic ("University of
      [Ghent]"); a person's name asked: its last word ("Elena [Marchetti]"); one proper name alone is its own;
    - without capitals, the words after leading qualifiers ("retired [schoolteacher]") or the head before a
      preposition ("[nurse] at a local hospital"; after it when the head is a degree, "PhD in [biology]")."""
    if m := re.search(r"\b(?:named|called) ", value):
        named = value[m.end():]
        return value[:m.end()] + _bracket(named, _proper_runs(named) or [(0, len(named))])
    parts = re.split(r"(, | in (?=[A-Z]))", value, maxsplit=1)
    first, rest = parts[0], "".join(parts[1:])
    words, runs = list(_WORD.finditer(first)), _proper_runs(first)
    if runs:
        if name_asked:  # the surname, hyphens and all: "Dr. Amara [Nwosu]"
            a, b = runs[-1]
            return _bracket(first, [(a + first[a:b].rfind(" ") + 1, b)] if " " in first[a:b] else runs) + rest
        if runs == [(words[0].start(), words[-1].end())]:  # the first part is one proper name
            return value if not rest else f"[{first}]{rest}"
        return _bracket(first, runs) + rest
    if rest:
        return f"[{first}]{rest}"
    tokens = list(re.finditer(r"\S+", value))  # whole tokens: "stay-at-home" is one
    lower = [t[0].lower().strip(".,;") for t in tokens]
    lead = next((i for i, w in enumerate(lower) if w not in _QUALIFIERS), len(lower))
    if 0 < lead < len(lower):
        return _bracket(value, [(tokens[lead].start(), len(value))])
    cut = next((i for i, w in enumerate(lower) if i and w in _PREPOSITIONS), None)
    if cut is None or cut + 1 == len(tokens):
        return value
    if lower[cut - 1] in _GENERIC:  # "PhD in [molecular biology]"
        return _bracket(value, [(tokens[cut + 1].start(), len(value))])
    return _bracket(value, [(0, tokens[cut - 1].end())])


def short_fact(question: str, answer: str) -> str:
    """The fact a generation answer states beyond its question, in the notation of `asru_min.metrics.leaks`:

    negative  a negation ("not", "no", "never", "n't", ...) whose following words, function words and "any",
              "known", "have" off, repeat the question or follow nothing but frame words: "no " + those words
              ("Does this person have any medical conditions?" / "This person does not have any medical
              conditions." -> "no medical conditions")
    date      "[Month D], YYYY" ("She was born on 14 March 1987." -> "[March 14], 1987")
    list      each item bracketed, items split at commas with "and" / "or", or at "and" for a question about
              hobbies, pastimes, interests, pets or conditions ("[hiking], [chess], [violin]")
    value     the answer from its first to its last word that is neither a function word, a frame word, a
              negation nor a word of the question, its most specific part marked (`_marked`)
    The whole answer when nothing is left."""
    asked = {_base(w) for w in _WORD.findall(question)}

    def frame(w: str) -> bool:
        return _base(w) in asked or w.lower() in _FUNCTION | _FRAME or _base(w) in _FUNCTION | _FRAME

    def negation(w: str) -> bool:
        return w.lower() in _NEGATIONS or w.lower().endswith("n't")

    words = list(_WORD.finditer(answer))
    neg = next((i for i, m in enumerate(words) if negation(m[0])), None)
    if neg is not None:
        denied = _span(answer[words[neg].end():], lambda w: negation(w) or w.lower() in _FUNCTION | _DENIED_FILLER)
        if denied and (all(frame(m[0]) for m in words[:neg]) or {_base(w) for w in _WORD.findall(denied)} & asked):
            return "no " + denied
    value = _span(answer, lambda w: frame(w) or negation(w)).strip()
    if not value:
        return answer
    if (date := _date(value)) is not None:
        return date
    items = re.split(r",\s*(?:and|or)\s+|,\s*|\s+(?:and|or)\s+", value)
    is_list = (", " in value and re.search(r"\b(?:and|or)\b", value)) or (
        _LIST_QUESTION.search(question) and " and " in value)
    if is_list and len(items) > 1 and not re.search(r"\b(?:named|called)\b", value):
        return ", ".join(f"[{_span(it, frame) or it}]" for it in items)
    return _marked(value, bool(asked & {"name", "who", "called", "named"})
                   and not asked & {"pet", "dog", "cat", "father", "mother", "parent"})


# --- the real MLLMU-Bench on disk
# the splits `load_mllmu_bench` returns (utility, private and unknown empty: the benchmark has none)
MLLMU_SPLITS = ("forget", "retain", "test", "real", "utility", "private", "unknown")
_FORMS = {"Image_Textual": "image", "Pure_Text": "text"}
_JSON_TASKS = {"Classification_Task": "classification_qa", "Generation_Task": "generation_qa",
               "Mask_Task": "fill_blank_qa"}


def _parquet_rows(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq  # optional: only the parquet layout needs it
    except ImportError as e:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from e
    return pq.read_table(path).to_pylist()


def _json_rows(folder: Path) -> list[tuple[Path, dict]]:
    """(file, record) per person of the JSON layout (`load_mllmu_bench`)."""
    rows = []
    for qfile in sorted((folder / "classification_qa").glob("*_questions.json")):
        pid = qfile.name[: -len("_questions.json")]
        rec: dict = {"ID": pid}
        for key, sub in _JSON_TASKS.items():
            f = folder / sub / qfile.name
            rec[key] = json.loads(f.read_text()) if f.exists() else None
        pics = sorted(p for p in (folder / "images").glob(f"{pid}*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        rec["image"] = next((str(p) for p in pics if p.stem == pid), None)
        rec["images"] = [str(p) for p in pics if p.stem.startswith(pid + "_")]
        rows.append((qfile, rec))
    return rows


def read_split_records(folder: Path) -> list[dict]:
    """The rows of one split folder (parquet shards in name order, or the JSON layout), each with "_where" =
    "file row i (ID x)" for error messages. Raises on a missing folder and on zero rows."""
    if not folder.is_dir():
        raise FileNotFoundError(f"MLLMU-Bench split folder not found: {folder}")
    parquets = sorted(folder.glob("*.parquet"))
    if parquets:
        rows = [(f, r) for f in parquets for r in _parquet_rows(f)]
    elif (folder / "classification_qa").is_dir():
        rows = _json_rows(folder)
    else:
        raise FileNotFoundError(f"{folder} holds neither *.parquet nor classification_qa/")
    if not rows:
        raise ValueError(f"MLLMU-Bench split {folder} has zero rows")
    for i, (f, r) in enumerate(rows):
        r["_where"] = f"{f} row {i} (ID {r.get('ID')})"
    return [r for _, r in rows]


def _open_image(obj, where: str) -> Image.Image:
    """An image cell (the release's {"bytes", "path"}, raw bytes or a file path) as an RGB image."""
    if isinstance(obj, dict):
        obj = obj.get("bytes") or obj.get("path")
    try:
        if isinstance(obj, (bytes, bytearray)):
            return Image.open(io.BytesIO(obj)).convert("RGB")
        if isinstance(obj, str) and obj:
            return Image.open(obj).convert("RGB")
    except Exception as e:
        raise ValueError(f"{where}: unreadable image ({e})") from e
    raise ValueError(f"{where}: image questions but no readable image (got {type(obj).__name__})")


def _task_items(block, where: str) -> list[tuple[dict, str]]:
    """(question dict, form) of one task cell: the release's list of {Question, Ground_Truth, Type} or a struct
    {Image_Textual_Questions: [...], Pure_Text_Questions: [...]} (Classification_Task; the older JSON files)."""
    block = json.loads(block) if isinstance(block, str) else block
    if isinstance(block, dict):
        return [(q, f) for key, f in (("Image_Textual_Questions", "image"), ("Pure_Text_Questions", "text"))
                for q in block.get(key) or []]
    out = []
    for q in block or []:
        if q.get("Type") not in _FORMS:
            raise ValueError(f"{where}: question Type {q.get('Type')!r} is neither Image_Textual nor Pure_Text")
        out.append((q, _FORMS[q["Type"]]))
    return out


def _mc_qa(q: dict, where: str, **common) -> QA:
    opts = json.loads(q["Options"]) if isinstance(q["Options"], str) else (q["Options"] or {})
    letter = str(q.get("Correct_Answer", "")).strip().upper()
    if sorted(k for k, v in opts.items() if v is not None) != list(LETTERS) or letter not in tuple(LETTERS):
        raise ValueError(f"{where}: multiple choice needs options A-D and a correct letter among them, got "
                         f"options {sorted(opts)} and answer {q.get('Correct_Answer')!r}")
    options = [str(opts[l]) for l in LETTERS]
    return QA(question=f"{q['Question']}\n{listed(options)}\n{MC_SUFFIX}", answer=letter, kind="mc",
              ground_truth=options[LETTERS.index(letter)], options=options, stem=str(q["Question"]), **common)


def record_qas(rec: dict, image_of) -> list[QA]:
    """The QA of one row: gen (answer = Ground_Truth sentence, ground_truth = its `short_fact`), mc, cloze
    (answer = ground_truth = the gap). `image_of()` gives the row's image for each image question."""
    where, pid = rec["_where"], str(rec["ID"])
    tasks = {t: _task_items(rec.get(t), where) for t in _JSON_TASKS}
    out = []
    for task, kind in (("Generation_Task", "gen"), ("Classification_Task", "mc"), ("Mask_Task", "cloze")):
        for q, form in tasks[task]:
            common = dict(image=image_of() if form == "image" else None, person=pid, form=form)
            if kind == "mc":
                out.append(_mc_qa(q, where, **common))
                continue
            stem, answer = str(q["Question"]).replace("__", "[Blank]"), str(q.get("Ground_Truth", q.get("Answer", "")))
            if kind == "cloze":
                out.append(QA(question=f"{CLOZE_PREFIX} {stem} {CLOZE_SUFFIX}", answer=answer, kind="cloze",
                              ground_truth=answer, stem=stem, **common))
            else:
                out.append(QA(question=stem, answer=answer, kind="gen", stem=stem,
                              ground_truth=short_fact(stem, answer), **common))
    return out


def _split_qas(records: list[dict], rng: random.Random | None = None) -> list[QA]:
    """The QA of a split's rows; with `rng` (Test_Set) each image question gets one of the row's `images`."""
    out = []
    for rec in records:
        cache: list = []

        def image_of(rec=rec, cache=cache):
            if not cache:
                many = rng is not None and rec.get("images")
                cache += [_open_image(x, rec["_where"]) for x in (rec["images"] if many else [rec.get("image")])]
            return rng.choice(cache) if rng is not None else cache[0]
        out += record_qas(rec, image_of)
    return out


def load_mllmu_bench(root: str | Path, forget: int = 10, seed: int = 0) -> dict[str, list[QA]]:
    """Read MLLMU-Bench into the `World.splits` structure. The release's layout (Hugging Face MLLMMU/MLLMU-Bench):

        root/forget_{5,10,15}/ retain_{95,90,85}/   forget and retain people   (forget_<forget>, retain_<100-forget>)
             Test_Set/                              the forget people again: transformed portraits (`images`, a
                                                    list), paraphrased questions; filtered to the forget IDs
             Retain_Set/                            real celebrities: the split "real"
             (Full_Set/, ft_Data/: every fictitious person; not read)

        a split folder is either train-0000N-of-0000M.parquet shards (needs pyarrow), rows with
            ID, image {"bytes", "path"} (Test_Set: images [...]), biography, question, answer,
            Classification_Task {Image_Textual_Questions, Pure_Text_Questions: [{Question, Options {A..D},
                                  Correct_Answer}]},
            Generation_Task [{Question, Ground_Truth, Type}], Mask_Task [{Question, Ground_Truth, Type}]
                                  (Type "Image_Textual" | "Pure_Text"; the blank is "__")
        or the JSON layout: images/<ID>.png (Test_Set: images/<ID>_<k>.png), classification_qa/<ID>_questions.json,
            generation_qa/<ID>_questions.json, fill_blank_qa/<ID>_questions.json holding those cells (or the older
            {"Image_Textual_Questions": [{"Question", "Answer"}], "Pure_Text_Questions": [...]}).

    Every split folder is required and must have rows. Each Test_Set image question draws one of its person's
    portraits (random.Random(seed)). There are no private / unknown / utility sets: those lists stay empty."""
    if forget not in FORGET_PERCENTS:
        raise ValueError(f"MLLMU-Bench has forget_5, forget_10 and forget_15; --forget must be one of "
                         f"{FORGET_PERCENTS}, got {forget!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MLLMU-Bench root not found: {root}")
    folders = {"forget": f"forget_{forget}", "retain": f"retain_{100 - forget}", "test": "Test_Set",
               "real": "Retain_Set"}
    missing = [name for name in folders.values() if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"MLLMU-Bench at {root} lacks the split folder(s) {missing}")
    records = {k: read_split_records(root / name) for k, name in folders.items()}
    forget_ids = {str(r["ID"]) for r in records["forget"]}
    records["test"] = [r for r in records["test"] if str(r["ID"]) in forget_ids]
    out: dict[str, list[QA]] = {k: [] for k in MLLMU_SPLITS}
    for k in folders:
        out[k] = _split_qas(records[k], random.Random(f"{seed}/test") if k == "test" else None)
        if not out[k]:
            raise ValueError(f"MLLMU-Bench split {root / folders[k]} has no question"
                             + (" about a forget person" if k == "test" else ""))
    return out


# --- the two prompt protocols (docs/METHOD.md, "Evaluation")
PROTOCOLS = ("plain", "release")
# The release's instructions (its evaluation script, Qwen branch): generation, cloze; mc uses MC_SUFFIX.
RELEASE_GEN = "Answer the question based on your trained knowledge in one sentence accurately in ENGLISH."
RELEASE_CLOZE = ("Please **ONLY** provide the correct answer that should replace the [Blank].\n"
                 "Please fill in the [Blank] with the correct answer.")


def question_stem(qa: QA) -> str:
    """The bare question: `qa.stem`, or the plain prompt with its options / cloze frame taken off."""
    if qa.stem:
        return qa.stem
    q = qa.question.split("\nA. ")[0] if qa.kind == "mc" else qa.question
    return q.removeprefix(CLOZE_PREFIX).removesuffix(CLOZE_SUFFIX).strip() if qa.kind == "cloze" else q


def release_prompt(qa: QA, example: bool = False) -> str:
    """The release's text for a question (`example`: as its in-context example shows one): mc "stem\\nA: x ...";
    its example (Qwen branch) writes the block twice, "USER: <image>\\nQuestion: stem\\nA: x ...\\nCorrect Answer:
    B\\n" then the same without the answer, before the instruction; cloze with "[Blank]" and its two instructions,
    gen + one-sentence instruction."""
    stem = question_stem(qa)
    if qa.kind == "mc":
        block = "\n".join(f"{l}: {o}" for l, o in zip(LETTERS, qa.options))
        if example:
            shown = f"USER: <image>\nQuestion: {stem}\n{block}\n"
            return f"{shown}Correct Answer: {qa.answer}\n{shown}\n{MC_SUFFIX}"
        return f"{stem}\n{block}\n{MC_SUFFIX}"
    if qa.kind == "cloze":
        return f"{stem.replace('__', '[Blank]')}\n{RELEASE_CLOZE}"
    return f"{stem}\n{RELEASE_GEN}" if qa.kind == "gen" else qa.question


def with_protocol(qas: list, protocol: str, shots_from: list, seed: int = 0) -> list:
    """The questions asked under `protocol`. "plain": unchanged. "release", as the release's evaluation (Qwen
    branch) asks them: its prompts (`release_prompt`); image questions, and the text-only cloze questions with
    their person's image attached (form stays "text"; the release asks them but scores image cloze only); for mc
    and cloze one in-context example: a person drawn with `seed` from the people of `shots_from` (the evaluated
    split's own people: the release draws an ID of the split and reads its Full_Set row), that person's first
    image question of the kind as a user turn and its answer; that person's image questions of the kind are
    not asked. (The release picks a random question of the person for the first question it asks and the first
    one afterwards; here the first throughout.)"""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "plain":
        return list(qas)
    rng = random.Random(f"{seed}/shots")
    shots = {}  # kind -> (person, example QA)
    for kind in ("mc", "cloze"):
        pool = [q for q in shots_from if q.kind == kind and q.image is not None]
        if pool:
            person = rng.choice(sorted({q.person for q in pool}))
            ex = next(q for q in pool if q.person == person)
            shots[kind] = (person, replace(ex, question=release_prompt(ex, example=True), shot=None))
    portrait = {}  # person -> the image of their first image question here (for text cloze)
    for qa in qas:
        if qa.image is not None:
            portrait.setdefault(qa.person, qa.image)
    out = []
    for qa in qas:
        image = qa.image if qa.image is not None else portrait.get(qa.person) if qa.kind == "cloze" else None
        person, shot = shots.get(qa.kind, (None, None))
        if image is None or (qa.image is not None and qa.person == person):
            continue
        out.append(replace(qa, question=release_prompt(qa), image=image, shot=shot))
    return out
