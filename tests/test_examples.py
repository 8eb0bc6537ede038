"""examples/summarize_runs.py on a hand-made run folder."""

import dataclasses
import json
import math

import pytest

from asru_min.train import TrainConfig


def _module():
    from conftest import load_example
    return load_example("summarize_runs")


def _metrics(refusal, leak, retain_rouge, retain_refusal, util):
    side = {"refusal_rate": refusal, "leak_rate": leak, "quality": 0.5}
    return {"forget": {"all": side, "image": dict(side, leak_rate=0.0), "text": dict(side, leak_rate=2 * leak)},
            "test": {"all": {"leak_rate": 0.1}},
            "retain": {"all": {"mc_acc": 0.9, "cloze_acc": 1.0, "rougeL": retain_rouge, "refusal_rate": retain_refusal}},
            "utility": {"all": {"acc": util}}}


def test_summarize_runs_by_hand(tmp_path, capsys):
    s = _module()
    run = tmp_path / "run"
    run.mkdir()
    cfg = dataclasses.asdict(TrainConfig(out=str(run), grpo_epochs=4, threads=2))
    (run / "config.json").write_text(json.dumps(cfg))
    for stage, m in (("vanilla", _metrics(0.0, 1.0, 1.0, 0.0, 1.0)), ("stage1", _metrics(0.8, 0.2, 0.5, 0.5, 1.0)),
                     ("asru", _metrics(0.9, 0.05, 0.8, 0.2, 0.9))):
        (run / f"metrics_{stage}.json").write_text(json.dumps(m))
    [row] = s.main([str(run), "--json", str(tmp_path / "rows.json")])
    assert row["changed"] == {"grpo_epochs": 4}                     # out and threads are not method settings
    assert row["forget_leak_text"] == 0.1 and row["forget_refusal_stage1"] == 0.8
    # U = mean(retain mc, cloze, ROUGE-L, utility): asru (0.9 + 1 + 0.8 + 0.9) / 4 vs vanilla (0.9 + 1 + 1 + 1) / 4
    assert math.isclose(row["u_of_vanilla"], 3.6 / 3.9) and math.isclose(row["retain_rougeL_of_vanilla"], 0.8)
    assert json.loads((tmp_path / "rows.json").read_text()) == [row]
    assert "--grpo-epochs 4" in capsys.readouterr().out
    (run / "metrics_asru.json").unlink()
    with pytest.raises(FileNotFoundError, match="finished train.py run"):
        s.main([str(run)])


def _model_folder_script(script: str, tmp_path, capsys) -> dict:
    """Run examples/<script> (a pretrain_gates.saved_models command line): a folder without config.json must be an
    argparse error before any model loads; then its JSON line for the shipped weights."""
    import json
    import runpy
    from pathlib import Path

    import pytest
    import torch

    main = runpy.run_path(str(Path(__file__).parent.parent / "examples" / script))["main"]
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert "no config.json" in capsys.readouterr().err
    threads = torch.get_num_threads()
    try:
        main([str(Path(__file__).parent.parent / "weights"), "--threads", str(threads)])
    finally:
        torch.set_num_threads(threads)                 # the script sets it process-wide
    (line,) = capsys.readouterr().out.strip().splitlines()
    return json.loads(line)


def test_pretrain_gates_on_the_shipped_weights_and_a_bad_folder(tmp_path, capsys):
    """examples/pretrain_gates.py: the shipped weights pass all seven gates (the model card's claim), one JSON
    line per folder; a folder without config.json is an argparse error, before any model is loaded."""
    report = _model_folder_script("pretrain_gates.py", tmp_path, capsys)
    assert len(report["gates"]) == 7 and all(report["gates"].values()), report["gates"]
    assert report["figures"]["people_mc_all"] >= 0.95 and report["figures"]["test_mc"] >= 0.80


def test_mc_errors_on_the_shipped_weights_agrees_with_the_gates(tmp_path, capsys):
    """examples/mc_errors.py: every mc question of forget / retain / test counted once under its attribute and
    form; the error counts give the accuracies the gates measure on the shipped weights (MC >= 95 %, test >= 80 %,
    model card: 95.9 and 82.0); a bad folder is an argparse error."""
    import pytest

    report = _model_folder_script("mc_errors.py", tmp_path, capsys)
    sizes = {"forget": 10 * 5 * 2, "retain": 90 * 5 * 2, "test": 10 * 5}       # people x attributes x forms
    for split, n in sizes.items():
        errors = report[split]["errors"]
        assert sum(asked for _, asked in errors.values()) == n
        wrong = sum(w for w, _ in errors.values())
        assert wrong == sum(report[split]["errors_per_person"])
        assert report[split]["accuracy"] == pytest.approx(1 - wrong / n, abs=1e-3)
    assert set(report["test"]["errors"]) == {f"{a}/image" for a in
                                            ("birthplace", "birth_year", "occupation", "employer", "hobby")}
    people = sum(w for w, _ in report["forget"]["errors"].values()) + sum(w for w, _ in report["retain"]["errors"].values())
    assert 1 - people / 1000 >= 0.95 and report["test"]["accuracy"] >= 0.80
