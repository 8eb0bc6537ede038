"""Beside the method: the synthetic world of fictitious people (grammar.py, people.py, portraits.py), the
pretraining of the default vanilla model in weights/ (pretrain.py) and its gates (gates.py). A reader of ASRU can
skip this folder."""

from __future__ import annotations

import json
import os


def world_version(model: str | None) -> int:
    """The version of the synthetic world (grammar.py) a model folder was pretrained on: `world_version` of the
    recipe in its pretrain_metrics.json (written by pretrain.py); 1 when the folder records none (today's shipped
    weights) or no folder is given. Version 1 and this fallback go when weights trained on version 2 ship."""
    path = os.path.join(model, "pretrain_metrics.json") if model else ""
    if not path or not os.path.isfile(path):
        return 1
    with open(path) as f:
        return int((json.load(f).get("recipe") or {}).get("world_version", 1))


def load_world(data: str | None, forget: int, num_people: int, seed: int,
               model: str | None = None) -> tuple[dict, object]:
    """The splits every entry point runs on (evaluation sets; in the grammar world also stage 1's `positives`)
    and the judge's `asru_min.metrics.Vocabulary` of their world: the real MLLMU-Bench at `data`
    (`asru_min.mllmu.load_mllmu_bench`, `seed` drawing the test split's portraits; vocabulary None), or, when
    `data` is None, the synthetic world of `num_people` people drawn from `seed` in the version the `model`
    folder was trained on (`world_version`; version 1 without a folder)."""
    if data:
        from ..mllmu import load_mllmu_bench

        return load_mllmu_bench(data, forget=forget, seed=seed), None
    from .people import World

    world = World.generate(num_people=num_people, seed=seed, version=world_version(model))
    splits = world.splits(forget=forget)
    return splits, world.vocabulary(splits)


def load_splits(data: str | None, forget: int, num_people: int, seed: int, model: str | None = None) -> dict:
    """The splits of `load_world` alone."""
    return load_world(data, forget, num_people, seed, model)[0]
