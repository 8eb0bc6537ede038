"""Beside the method: the synthetic world of fictitious people (grammar.py, people.py, portraits.py), the
pretraining of the default vanilla model in weights/ (pretrain.py) and its gates (gates.py). A reader of ASRU can
skip this folder."""

from __future__ import annotations


def load_world(data: str | None, forget: int, num_people: int, seed: int) -> tuple[dict, object]:
    """The splits every entry point runs on (evaluation sets; in the grammar world also stage 1's `positives`)
    and the judge's `asru_min.metrics.Vocabulary` of their world: the real MLLMU-Bench at `data`
    (`asru_min.mllmu.load_mllmu_bench`, `seed` drawing the test split's portraits; vocabulary None), or, when
    `data` is None, the synthetic world of `num_people` people drawn from `seed` that the shipped weights were
    trained on."""
    if data:
        from ..mllmu import load_mllmu_bench

        return load_mllmu_bench(data, forget=forget, seed=seed), None
    from .people import World

    world = World.generate(num_people=num_people, seed=seed)
    splits = world.splits(forget=forget)
    return splits, world.vocabulary(splits)


def load_splits(data: str | None, forget: int, num_people: int, seed: int) -> dict:
    """The splits of `load_world` alone."""
    return load_world(data, forget, num_people, seed)[0]
