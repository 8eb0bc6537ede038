"""A fake MLLMU-Bench in the release's on-disk layout, written from the synthetic world (asru_min/world/).

    python examples/make_fake_mllmu.py OUT [--people 12] [--seed 0] [--layout parquet|json]

The folders and columns are those `asru_min.mllmu.load_mllmu_bench` documents (Hugging Face MLLMMU/MLLMU-Bench):
forget_{5,10,15}/ and retain_{95,90,85}/ (the first 1 / 1 / 2 people are forgotten), Test_Set/ (every person again,
held-out phrasings, three held-out views per person in the list column `images`, two shards), Retain_Set/ (three
unseen people of the world standing in for the celebrities) and Full_Set/. Generation answers are whole sentences
that state the fact (the Mask_Task ground truth), as in the release. Parquet needs pyarrow; without it (or with
--layout json) the per-person JSON layout is written. The people are fictitious and drawn, nothing is real.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asru_min.data import FORGET_PERCENTS, question_stem  # noqa: E402
from asru_min.world.grammar import ATTRIBUTES, phrasings  # noqa: E402
from asru_min.world.people import FACT_KINDS, World, fact_qa  # noqa: E402
from asru_min.world.portraits import HELDOUT_VIEWS, render_view  # noqa: E402

TYPES = {"image": "Image_Textual", "text": "Pure_Text"}


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
                    tasks["Generation_Task"].append({"Question": stem, "Ground_Truth": qa.answer, "Type": TYPES[form]})
                else:
                    tasks["Mask_Task"].append({"Question": stem.replace("[Blank]", "__"), "Ground_Truth": qa.answer,
                                               "Type": TYPES[form]})
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
