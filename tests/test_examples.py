"""examples/pretrain_gates.py on the shipped weights and on a folder that holds no model."""

import json
import runpy
from pathlib import Path

import pytest
import torch


def test_pretrain_gates_on_the_shipped_weights_and_a_bad_folder(tmp_path, capsys):
    """The shipped weights pass all seven gates (the model card's claim), one JSON line per folder; a folder
    without config.json is an argparse error, before any model is loaded."""
    main = runpy.run_path(str(Path(__file__).parent.parent / "examples" / "pretrain_gates.py"))["main"]
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert "no config.json" in capsys.readouterr().err
    threads = torch.get_num_threads()
    try:
        main([str(Path(__file__).parent.parent / "weights"), "--threads", str(threads)])
    finally:
        torch.set_num_threads(threads)                 # the script sets it process-wide
    (line,) = capsys.readouterr().out.strip().splitlines()
    report = json.loads(line)
    assert len(report["gates"]) == 7 and all(report["gates"].values()), report["gates"]
    assert report["figures"]["people_mc_all"] >= 0.95 and report["figures"]["test_mc"] >= 0.80
