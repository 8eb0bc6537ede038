"""Beside the method: the synthetic world of fictitious people (people.py, portraits.py) and the pretraining of
the default vanilla model in weights/ (pretrain.py). A reader of ASRU can skip this folder."""

from __future__ import annotations


def load_splits(data: str | None, forget: int, num_people: int, seed: int) -> dict:
    """The evaluation splits every entry point runs on: the real MLLMU-Bench at `data`
    (`asru_min.data.load_mllmu_bench`), or, when `data` is None, the synthetic world of `num_people` people drawn
    from `seed` (the world the default weights were trained on)."""
    if data:
        from ..data import load_mllmu_bench

        return load_mllmu_bench(data, forget=forget)
    from .people import World

    return World.generate(num_people=num_people, seed=seed).splits(forget=forget)
