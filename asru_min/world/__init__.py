"""Beside the method: the synthetic world of fictitious people (grammar.py, people.py, portraits.py), the
pretraining of the default vanilla model in weights/ (pretrain.py) and its gates (gates.py). A reader of ASRU can
skip this folder."""

from __future__ import annotations

import json
import os


# The version of the synthetic world this code builds (grammar.py, people.py), recorded by pretrain.py as
# `world_version` in the recipe of a model folder's pretrain_metrics.json. Version 1 (no reordered question forms,
# no names mid-sentence, private questions that opened like fact questions) is the world of the weights shipped up
# to d865cb3; its code is in git history: d865cb3 is the last commit that builds it, dc6513e the recipe of its
# weights (weights/README.md).
WORLD_VERSION = 2


def check_world_version(model: str) -> None:
    """Refuse a model folder pretrained on another version of the world: its splits would ask questions in forms
    the model was never taught, and its gates would not measure what they say. The version is `world_version` in
    the recipe of the folder's pretrain_metrics.json; a recipe without it was written before version 2 existed
    (version 1). A folder without pretrain_metrics.json (a checkpoint made elsewhere, a test model) is not checked."""
    path = os.path.join(model, "pretrain_metrics.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        version = (json.load(f).get("recipe") or {}).get("world_version", 1)
    if version != WORLD_VERSION:
        raise ValueError(f"{model} was pretrained on world version {version}, but this code builds world version "
                         f"{WORLD_VERSION} only; use weights trained on it (weights/), or the code of the model's "
                         "world (version 1: git checkout d865cb3, the last commit that builds it; weights/README.md)")


def load_world(data: str | None, forget: int, num_people: int, seed: int,
               model: str | None = None) -> tuple[dict, object]:
    """The splits every entry point runs on (evaluation sets; in the grammar world also stage 1's `positives`)
    and the judge's `asru_min.metrics.Vocabulary` of their world: the real MLLMU-Bench at `data`
    (`asru_min.mllmu.load_mllmu_bench`, `seed` drawing the test split's portraits; vocabulary None), or, when
    `data` is None, the synthetic world of `num_people` people drawn from `seed` (a `model` folder pretrained on
    another world version is refused: `check_world_version`)."""
    if data:
        from ..mllmu import load_mllmu_bench

        return load_mllmu_bench(data, forget=forget, seed=seed), None
    from .people import World

    if model:
        check_world_version(model)
    world = World.generate(num_people=num_people, seed=seed)
    splits = world.splits(forget=forget)
    return splits, world.vocabulary(splits)


def load_splits(data: str | None, forget: int, num_people: int, seed: int, model: str | None = None) -> dict:
    """The splits of `load_world` alone."""
    return load_world(data, forget, num_people, seed, model)[0]
