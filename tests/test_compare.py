"""examples/compare.py: the tuning rule, the scores and their mean ± std over seeds on hand-made numbers, the reuse
of saved runs, and the tuning path end to end on a tiny checkpoint."""

import json
import math
import shutil

import pytest

from conftest import load_example

c = load_example("compare")


def _rows(*pairs):
    return [{"leak": leak, "utility": utility} for leak, utility in pairs]


def test_choose_setting_rule_by_hand():
    # vanilla utility 1.0, keep 0.95: points 0, 2, 3 keep it; point 1 leaks least but broke utility
    rows = _rows((0.5, 0.96), (0.1, 0.80), (0.3, 0.97), (0.2, 0.95))
    assert c.choose_setting(rows, 1.0) == (3, True)
    assert c.choose_setting(rows, 1.0, keep=0.8) == (1, True)  # a looser threshold lets point 1 in
    assert c.choose_setting(rows, 2.0) == (2, False)  # none keeps 95 % of 2.0: the most useful point
    # ties on leak go to the higher utility, then to the earlier point
    assert c.choose_setting(_rows((0.2, 0.96), (0.2, 0.99), (0.2, 0.99), (0.4, 1.0)), 1.0) == (1, True)
    # none qualifies and two share the highest utility: the lower leak, then the earlier point
    assert c.choose_setting(_rows((0.1, 0.5), (0.3, 0.7), (0.0, 0.7), (0.0, 0.7)), 1.0) == (2, False)
    for bad in ([], _rows((None, 0.9)), _rows((0.1, None))):
        with pytest.raises(ValueError):
            c.choose_setting(bad, 1.0)
    assert c.choose_setting(rows, 0.0) == (1, True)  # a vanilla model that answers nothing: every point keeps it
    for vanilla in (None, -0.1):
        with pytest.raises(ValueError):
            c.choose_setting(rows, vanilla)


def _metrics(forget, test, retain, retain_test, util=0.9, gq=0.5):
    """Hand-made evaluate_model results: every knowledge metric of a split equal to one value."""
    def people(v, cloze=True):
        return {"all": {"mc_acc": v, "leak_rate": v, "rougeL": v, "quality": gq, **({"cloze_acc": v} if cloze else {})}}
    return {"forget": people(forget), "test": people(test, False), "retain": people(retain),
            "retain_test": people(retain_test, False), "utility": {"all": {"acc": util}}}


def test_scores_by_hand():
    vanilla = _metrics(0.8, 0.6, 0.9, 0.9)
    m = _metrics(0.4, 0.45, 0.7, 0.5, util=1.0)
    assert math.isclose(c.knowledge(m, "test"), 0.45)  # test has no cloze: the mean of the three it has
    assert math.isclose(c.unlearning_effectiveness(m, vanilla, "test"), 1 - 0.45 / 0.6)
    assert math.isclose(c.unlearning_effectiveness(m, vanilla, "forget"), 0.5)
    assert math.isclose(c.model_utility(m, "test"), (3 * 0.5 + 1.0) / 4)
    assert math.isclose(c.model_utility(m, "forget"), (4 * 0.7 + 1.0) / 5)
    r = c.row(m, vanilla)
    assert r["test_leak"] == 0.45 and r["retain_test_answer"] == 0.5 and r["test_gq"] == 0.5
    assert r["forget_cloze"] == 0.4 and r["UE_test"] == c.unlearning_effectiveness(m, vanilla, "test")
    assert c.row(m, {})["UE_test"] is None  # no vanilla (no train.py): UE undefined


def test_mean_std_over_seeds_by_hand():
    s = c.mean_std([0.2, 0.4, None, 0.9])
    assert math.isclose(s["mean"], 0.5) and s["n"] == 3
    assert math.isclose(s["std"], math.sqrt((0.3 ** 2 + 0.1 ** 2 + 0.4 ** 2) / 2))  # sample std, n - 1
    assert c.mean_std([0.7]) == {"mean": 0.7, "std": 0.0, "n": 1}
    assert c.mean_std([None]) == {"mean": None, "std": None, "n": 0}
    summary = c.summarise({10: {"ga": {0: {"test_leak": 0.1}, 1: {"test_leak": 0.3}}}})
    assert math.isclose(summary[10]["ga"]["test_leak"]["mean"], 0.2)
    assert math.isclose(summary[10]["ga"]["test_leak"]["std"], math.sqrt(0.02))
    assert c._pm(summary[10]["ga"]["test_leak"]) == "20.0 ± 14.1" and c._pm(c.mean_std([0.5])) == "50.0"


def test_headline_ratios_per_seed_then_mean_std():
    def r(ue, gq):
        return {"UE_test": ue, "test_gq": gq}
    # two levels, two seeds; per seed UE and GQ are averaged over the levels first
    rows = {5: {"asru": {0: r(0.8, 0.9), 1: r(0.6, 0.7)}, "ga": {0: r(0.4, 0.2), 1: r(0.2, 0.4)},
                "npo": {0: r(0.2, 0.4), 1: r(0.4, 0.2)}},
            10: {"asru": {0: r(0.6, 0.9), 1: r(0.6, 0.5)}, "ga": {0: r(0.4, 0.2), 1: r(0.2, 0.4)},
                 "npo": {0: r(0.2, 0.4), 1: r(0.4, 0.2)}}}
    h = c.headlines(rows, ("ga", "npo"), "test")
    # seed 0: UE(ASRU) 0.7, baselines (0.4 + 0.2) / 2 = 0.3 -> gain 4/3; GQ 0.9 / 0.3 = 3
    # seed 1: UE(ASRU) 0.6, baselines 0.3 -> gain 1; GQ 0.6 / 0.3 = 2
    assert h["seeds"] == [0, 1]
    assert math.isclose(h["UE_gain_relative"]["mean"], (4 / 3 + 1) / 2)
    assert math.isclose(h["UE_gain_relative"]["std"], math.sqrt(2) * (4 / 3 - 1) / 2)
    assert math.isclose(h["UE_gain_points"]["mean"], 35.0)
    assert math.isclose(h["GQ_ratio"]["mean"], 2.5) and math.isclose(h["GQ_ratio"]["std"], math.sqrt(0.5))
    assert c.headlines({5: {"ga": {0: r(0.4, 0.2)}}}, ("ga",), "test")["GQ_ratio"]["n"] == 0  # no ASRU


def test_tradeoff_by_hand():
    def s(**kw):
        return {k: c.mean_std([v]) for k, v in kw.items()}
    rows = {"vanilla": s(U_test=1.0, test_leak=1.0, test_gq=0.2),
            "ga": s(U_test=0.5, test_leak=0.0, test_gq=0.6),        # lowest leak, but U broken: not kept
            "idk": s(U_test=0.96, test_leak=0.7, test_gq=0.3),
            "asru": s(U_test=0.95, test_leak=0.1, test_gq=0.5),     # exactly 95 % of vanilla: kept
            "npo": s(U_test=0.99, test_leak=None, test_gq=None)}    # missing figures are skipped
    t = c.tradeoff({10: rows})[10]
    assert t == {"lowest_leak_kept": ["asru"], "highest_gq": ["ga"], "kept": ["idk", "asru"]}  # table order
    assert c.tradeoff({5: {"ga": rows["ga"]}})[5]["lowest_leak_kept"] == []  # no vanilla row: nothing kept
    rows["idk"] = s(U_test=0.96, test_leak=0.1, test_gq=0.6)  # ties: both named, in table order, not by name
    assert c.tradeoff({10: rows})[10] == {"lowest_leak_kept": ["idk", "asru"], "highest_gq": ["ga", "idk"],
                                          "kept": ["idk", "asru"]}


def test_reuses_a_saved_run_only_for_the_same_weights_and_settings(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights one")
    sha = c.weights_sha256(str(tmp_path))
    path = tmp_path / "ga_f5_s0.json"
    config = {"method": "ga", "lr": 5e-4, "kinds": ["gen"]}
    assert not c.saved_run_matches(str(path), config, sha)            # nothing saved yet
    path.write_text(json.dumps({"metrics": {}, "config": config, "model_sha256": sha}))
    assert c.saved_run_matches(str(path), config, sha)
    assert not c.saved_run_matches(str(path), {**config, "lr": 1e-3}, sha)   # other settings
    assert c.saved_run_matches(str(path), {**config, "out": "moved/ga_f5"}, sha)  # folder moved: reused
    weights.write_bytes(b"weights two")                                        # retrained weights
    assert not c.saved_run_matches(str(path), config, c.weights_sha256(str(tmp_path)))
    path.write_text(json.dumps({"metrics": {}}))                               # a record from before hashing
    assert not c.saved_run_matches(str(path), config, sha)


def test_tuning_seeds_and_robustness_end_to_end_then_all_reused(tiny_ckpt, tmp_path, monkeypatch, one_thread):
    """Two grid points of GA and refusal SFT tuned on a (stand-in) validation split of the tiny checkpoint, the
    chosen settings run for two seeds, the robustness suite on each model; a second call trains nothing."""
    real_load_world = c.load_world

    def world(validation: bool):  # the world's splits without validation splits, or with stand-ins for them
        def load(*args, **kwargs):
            splits, vocabulary = real_load_world(*args, **kwargs)
            splits = {k: v for k, v in splits.items() if k not in c.VALIDATION}
            if validation:
                retain_gen = [qa for qa in splits["retain"] if qa.kind == "gen"]
                splits.update(validation=splits["test"], retain_validation=retain_gen)
            return splits, vocabulary
        return load

    monkeypatch.setattr(c, "GRIDS", {"ga": [{"lr": 1e-4, "epochs": 1}, {"lr": 3e-2, "epochs": 1}],
                                     "idk": [{"lr": 1e-3, "epochs": 1}, {"lr": 1e-3, "epochs": 2}]})
    argv = ["--model", tiny_ckpt, "--out", str(tmp_path / "cmp"), "--quick", "--seeds", "0,1", "--methods",
            "ga,idk", "--no-asru", "--eval-limit", "1", "--train-set", "num_people=20"]
    monkeypatch.setattr(c, "load_world", world(validation=False))
    with pytest.raises(ValueError, match="--no-tune"):  # without validation splits tuning stops before training
        c.main(argv)
    assert not (tmp_path / "cmp" / "runs").exists()
    monkeypatch.setattr(c, "load_world", world(validation=True))
    out = c.main(argv)
    runs = tmp_path / "cmp" / "runs"
    for m in ("ga", "idk"):
        t = out["tuning"][m]
        assert (t["chosen"], t["kept"]) == c.choose_setting(t["rows"], out["tuning"]["vanilla"]["utility"])
        chosen = t["rows"][t["chosen"]]["setting"]
        per_seed = [json.load(open(runs / f"{m}_f10_s{s}.json")) for s in (0, 1)]
        assert all(r["config"]["lr"] == chosen["lr"] and r["config"]["epochs"] == chosen["epochs"] for r in per_seed)
        leak = [r["metrics"]["test"]["all"]["leak_rate"] for r in per_seed]
        assert out["summary"][10][m]["test_leak"] == c.mean_std(leak)
    assert set(out["robustness"]) == {"vanilla", "ga", "idk"}
    report = (tmp_path / "cmp" / "README.md").read_text()
    assert "## Settings of the baselines" in report and "**chosen" in report and "## Robustness" in report
    assert json.load(open(tmp_path / "cmp" / "summary.json"))["settings"]["ga"] == out["tuning"]["ga"]["rows"][
        out["tuning"]["ga"]["chosen"]]["setting"]

    def nothing_runs(*args, **kwargs):
        raise AssertionError("a saved run was made again")
    import robustness

    monkeypatch.setattr(c, "run_baseline", nothing_runs)
    monkeypatch.setattr(c, "evaluate_model", nothing_runs)
    monkeypatch.setattr(robustness, "run_suite", nothing_runs)
    for folder in [p for d in (runs, runs / "tune") for p in d.iterdir() if p.is_dir() and p.name != "tune"]:
        shutil.rmtree(folder)  # only the JSON records are kept (as in results/): they alone rebuild the report
    again = c.main(argv)
    assert again["summary"] == out["summary"] and again["tuning"] == out["tuning"]
