"""A fake MLLMU-Bench in the release's on-disk layout, written from the synthetic world (asru_min/world/).

    python examples/make_fake_mllmu.py OUT [--people 12] [--seed 0] [--layout parquet|json]

The folders and columns are those `asru_min.mllmu.load_mllmu_bench` documents (Hugging Face MLLMMU/MLLMU-Bench):
forget_{5,10,15}/ and retain_{95,90,85}/ (the first 1 / 1 / 2 people are forgotten), Test_Set/ (every person again,
held-out phrasings, three held-out views per person in the list column `images`, two shards), Retain_Set/ (three
unseen people of the world standing in for the celebrities) and Full_Set/. Generation answers are sentences in the
benchmark's style (`sentence`): frames that vary ("This person was born in ...", "The individual is a retired ...",
"<name>'s date of birth is ..."), places with a region ("Velmora, Estria"), full dates in several formats, lists,
and four facts the world does not have (pets, medical conditions, salary, height), asked by generation only, with
negative answers ("This person does not have any pets."). Parquet needs pyarrow; without it (or with --layout
json) the per-person JSON layout is written. The people are fictitious and drawn, nothing is real.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asru_min.data import FORGET_PERCENTS  # noqa: E402
from asru_min.mllmu import question_stem  # noqa: E402
from asru_min.world.grammar import ATTRIBUTES, phrasings  # noqa: E402
from asru_min.world.people import FACT_KINDS, POOLS, World, fact_qa  # noqa: E402
from asru_min.world.portraits import HELDOUT_VIEWS, render_view  # noqa: E402

TYPES = {"image": "Image_Textual", "text": "Pure_Text"}
REGIONS = ("Estria", "Norland", "Valemark", "Ostmoor", "Kelland", "Brisca")
MONTHS = "January February March April May June July August September October November December".split()
# sentence frames per attribute: {S} subject, {P} its possessive, {v} the value, {x} / {y} the extra parts drawn
# by `sentence`; the world's attributes first, then the facts only the fake benchmark has
FRAMES = {
    "birthplace": ("{S} was born in {v}, {x}.", "{S} hails from {v}, a town in {x}.",
                   "{P} place of birth is {v}, {x}."),
    "birth_year": ("{S} was born on {x} {y}, {v}.", "{S} was born on the {y}th of {x}, {v}.",
                   "{P} date of birth is {v}-{m:02d}-{y:02d}."),
    "occupation": ("{S} works as {a} {v}.", "{S} is a retired {v}.", "{S} is employed as {a} {v} at a local firm."),
    "employer": ("{S} works at {v}.", "{S} is employed by {v}, in {x}."),
    "hobby": ("{S} enjoys {v}.", "In {p} free time, {s} enjoys {v} and {x}.",
              "{P} hobbies include {v}, {x}, and {y}."),
    "pets": ("{S} does not have any pets.", "{S} has a {x} named {y}."),
    "medical": ("{S} does not have any medical conditions.", "{S} has no known medical conditions.",
                "{S} has {x}."),
    "salary": ("{P} annual salary is ${x:,}.", "{S} earns about ${x:,} per year."),
    "height": ("{S} is {x} feet {y} inches tall.", "{S} is {m} cm tall."),
}
EXTRA_QUESTIONS = {"pets": "Does {s} have any pets?", "medical": "Does {s} have any medical conditions?",
                   "salary": "What is the annual salary of {s}?", "height": "How tall is {s}?"}
PETS, PET_NAMES = ("cat", "dog", "parrot", "rabbit"), ("Biscuit", "Juniper", "Pepper", "Mango", "Tolstoy")
CONDITIONS = ("asthma", "type 1 diabetes", "mild seasonal allergies", "chronic migraines")


def sentence(attr: str, value: str, person, form: str, seed: int) -> str:
    """A generation ground truth in the benchmark's style about `person`'s `attr`: the extra parts (region, day
    and month, other hobbies, pet, condition, salary, height) drawn once per person and attribute, so both forms
    and every split state the same fact; the frame and the subject ("This person" / "The individual" / the pronoun
    with the image, the name without) drawn per form."""
    facts = random.Random(f"fake/{seed}/{person.pid}/{attr}")
    x, y, m = 0, 0, 0
    if attr in ("birthplace", "employer"):
        x = facts.choice(REGIONS)
    elif attr == "birth_year":
        m, y = facts.randint(1, 12), facts.randint(4, 28)
        x = MONTHS[m - 1]
    elif attr == "hobby":
        x, y = facts.sample([h for h in POOLS["hobby"] if h != value], 2)
    elif attr == "pets":
        x, y = facts.choice(PETS), facts.choice(PET_NAMES)
    elif attr == "medical":
        x = facts.choice(CONDITIONS)
    elif attr == "salary":
        x = facts.randrange(30_000, 150_000, 500)
    elif attr == "height":
        x, y, m = 5, facts.randint(0, 11), facts.randint(150, 195)
    frames = FRAMES.get(attr, ("{P} " + attr.replace("_", " ") + " is {v}.",))
    if attr in ("pets", "medical", "height"):  # one answer per person: which frame states it is part of the fact
        frames = frames[facts.randrange(len(frames))::len(frames)]
    pick = random.Random(f"fake/{seed}/{person.pid}/{attr}/{form}")
    pronoun = person.pronoun.capitalize()
    his = {"He": "His", "She": "Her"}[pronoun]
    subjects = [("This person", "This person's", "this person", "their"),  # subject, possessive, mid-sentence
                ("The individual", "The individual's", "the individual", "their"),
                (pronoun, his, pronoun.lower(), his.lower())]
    name = (person.name, f"{person.name}'s", person.name, f"{person.name}'s")
    S, P, s, p = name if form == "text" else pick.choice(subjects)
    return pick.choice(frames).format(S=S, P=P, s=s, p=p, v=value, x=x, y=y, m=m,
                                      a="an" if value[:1] in "aeiou" else "a")


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def person_row(world: World, person, heldout: bool = False) -> dict:
    """One row of the release's schema for `person`: every fact x (gen, mc, cloze) x (image, text); `heldout`
    (Test_Set): held-out phrasings and `images` = three held-out views instead of `image`."""
    rng = random.Random(f"fake/{world.seed}/{person.pid}/{heldout}")
    tasks: dict = {"Classification_Task": {"Image_Textual_Questions": [], "Pure_Text_Questions": []},
                   "Generation_Task": [], "Mask_Task": []}
    for a, attr in enumerate(ATTRIBUTES):
        for kind in FACT_KINDS:
            for form in ("image", "text"):
                kw = {"phrasing": rng.choice(phrasings(attr, heldout=True))} if heldout and kind != "cloze" else {}
                qa = fact_qa(person, a, kind, form, rng, **kw)
                stem = question_stem(qa)
                if kind == "mc":
                    tasks["Classification_Task"][f"{TYPES[form]}_Questions"].append(
                        {"Question": stem, "Options": dict(zip("ABCD", qa.options)), "Correct_Answer": qa.answer})
                elif kind == "gen":
                    truth = sentence(attr.name, qa.ground_truth, person, form, world.seed)
                    tasks["Generation_Task"].append({"Question": stem, "Ground_Truth": truth, "Type": TYPES[form]})
                else:
                    tasks["Mask_Task"].append({"Question": stem.replace("[Blank]", "__"), "Ground_Truth": qa.answer,
                                               "Type": TYPES[form]})
    for attr, question in EXTRA_QUESTIONS.items():
        for form in ("image", "text"):
            subject = "the person in this image" if form == "image" else person.name
            tasks["Generation_Task"].append({"Question": question.format(s=subject), "Type": TYPES[form],
                                             "Ground_Truth": sentence(attr, "", person, form, world.seed)})
    bio = f"{person.name}: " + ", ".join(f"{k} {v}" for k, v in person.facts.items())
    row = {"ID": person.pid, "biography": bio, "question": "", "answer": "", **tasks}
    if heldout:
        views = rng.sample(HELDOUT_VIEWS, 3)
        row["images"] = [{"bytes": _png(render_view(person.portrait, v)), "path": f"{person.pid}_{i}.png"}
                         for i, v in enumerate(views)]
    else:
        row["image"] = {"bytes": _png(person.portrait), "path": f"{person.pid}.png"}
    return row


def fake_splits(num_people: int = 12, seed: int = 0) -> dict[str, list[dict]]:
    """{folder name: rows} of the fake benchmark."""
    world = World.generate(num_people=max(20, num_people), seed=seed)
    people = world.people[:num_people]
    rows = [person_row(world, p) for p in people]
    out = {"Full_Set": rows, "Test_Set": [person_row(world, p, heldout=True) for p in people],
           "Retain_Set": [person_row(world, p) for p in world.unseen_eval[:3]]}
    for k in FORGET_PERCENTS:
        n = max(1, round(num_people * k / 100))
        out[f"forget_{k}"], out[f"retain_{100 - k}"] = rows[:n], rows[n:]
    return out


def _write_parquet(folder: Path, rows: list[dict], shards: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = -(-len(rows) // shards)
    for i in range(shards):
        pq.write_table(pa.Table.from_pylist(rows[i * size:(i + 1) * size]),
                       folder / f"train-{i:05d}-of-{shards:05d}.parquet")


def _write_json(folder: Path, rows: list[dict]) -> None:
    for sub in ("images", "classification_qa", "generation_qa", "fill_blank_qa"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for r in rows:
        pid = r["ID"]
        for pic in ([r["image"]] if "image" in r else []) + r.get("images", []):
            (folder / "images" / pic["path"]).write_bytes(pic["bytes"])
        for key, sub in (("Classification_Task", "classification_qa"), ("Generation_Task", "generation_qa"),
                         ("Mask_Task", "fill_blank_qa")):
            (folder / sub / f"{pid}_questions.json").write_text(json.dumps(r[key], indent=1))


def write_fake_mllmu(root, num_people: int = 12, seed: int = 0, layout: str = "auto") -> str:
    """Write the fake benchmark under `root`; layout "parquet", "json" or "auto" (parquet when pyarrow imports).
    Returns the layout written."""
    if layout == "auto":
        try:
            import pyarrow  # noqa: F401
            layout = "parquet"
        except ImportError:
            layout = "json"
    if layout not in ("parquet", "json"):
        raise ValueError(f"layout must be parquet, json or auto, got {layout!r}")
    for name, rows in fake_splits(num_people, seed).items():
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        if layout == "parquet":
            _write_parquet(folder, rows, shards=2 if name == "Test_Set" else 1)
        else:
            _write_json(folder, rows)
    return layout


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--people", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", default="auto", choices=("auto", "parquet", "json"))
    args = p.parse_args(argv)
    layout = write_fake_mllmu(args.out, args.people, args.seed, args.layout)
    print(f"wrote a fake MLLMU-Bench ({args.people} people, {layout} layout) to {args.out}")


if __name__ == "__main__":
    main()
