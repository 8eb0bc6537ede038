"""python -m asru_min.train end to end on a tiny random checkpoint (mechanics: files, resume, merged weights).

The tiny checkpoint is built in the test with pretrain.build (a 20-person world, hidden 48, 2 layers): untrained,
so its answers are noise and these tests check the pipeline, not unlearning. The behaviour test on the real
default weights (forget answers move toward refusal, retain accuracy kept) runs when weights/ holds them.
"""

import json
import os
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from asru_min.train import Run, TrainConfig, parse_args, run

WEIGHTS = os.path.join(os.path.dirname(__file__), "..", "weights")


class Interrupt(Exception):
    pass


def tiny_config(model: str, out: str, **kw) -> TrainConfig:
    """Every stage, as small as it gets: 2 GRPO steps of 2 prompts x G=2."""
    base = dict(model=model, out=out, num_people=20, layer=1, eval_limit=1, eval_max_new_tokens=4,
                refusal_filter=False, steer_retain_size=4, steer_epochs=1, boundary_size=4, group_size=2,
                max_new_tokens=4, prompts_per_step=2, grpo_epochs=1, grpo_lr=1e-2, save_merged=True, seed=1,
                boundary_refusals=0)  # the 4 boundary QA alone: 2 steps (test_heldout covers the refusals)
    base.update(kw)
    return TrainConfig(**base)


def logits_of(model, processor, qa):
    from asru_min.data import qa_batch

    batch = qa_batch(processor, [qa], with_answers=False)
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"])


@pytest.fixture(scope="module")
def full_run(tiny_ckpt, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full"))
    events = []
    results = run(tiny_config(tiny_ckpt, out), interrupt=events.append)
    return out, events, results


def test_end_to_end_outputs(full_run, tiny_ckpt):
    from asru_min.world.people import World
    from asru_min.lora import load_lora
    from asru_min.model import Qwen3VL
    from asru_min.processor import Processor

    out, events, results = full_run
    assert events == ["eval_vanilla", "stage1", "eval_stage1", "grpo_step_0", "grpo_step_1", "stage2", "eval_asru"]
    state = json.load(open(os.path.join(out, "state.json")))
    assert state["done"] == ["eval_vanilla", "stage1", "eval_stage1", "stage2", "eval_asru"]
    for stage in ("vanilla", "stage1", "asru"):
        metrics = json.load(open(os.path.join(out, f"metrics_{stage}.json")))
        assert set(metrics) >= {"forget", "retain", "test", "utility", "private"}
        assert metrics == json.loads(json.dumps(results[stage]))
    # stage 1 changed exactly layer 1's down_proj, and the direction has the hidden size
    changed = load_file(os.path.join(out, "stage1.safetensors"))
    assert list(changed) == ["model.language_model.layers.1.mlp.down_proj.weight"]
    assert load_file(os.path.join(out, "direction.safetensors"))["direction"].shape == (48,)
    steer = [json.loads(line) for line in open(os.path.join(out, "steer_log.jsonl"))]
    assert {r["kind"] for r in steer} == {"forget", "retain"}
    log = [json.loads(line) for line in open(os.path.join(out, "grpo_log.jsonl"))]
    assert [r["step"] for r in log] == [0, 1]
    for key in ("reward_forget_mean", "reward_retain_mean", "kl", "clip_frac", "response_len", "refusal_rate_forget"):
        assert key in log[0]
    assert Image.open(os.path.join(out, "grpo_curves.png")).size == (900, 360)
    assert "forget" in open(os.path.join(out, "table.txt")).read()

    # merged checkpoint == base + stage-1 tensors + LoRA adapter (rebuilt here from the saved pieces)
    merged = Qwen3VL.from_pretrained(os.path.join(out, "merged"))
    rebuilt = Qwen3VL.from_pretrained(tiny_ckpt)
    params = dict(rebuilt.named_parameters())
    with torch.no_grad():
        for name, t in changed.items():
            params[name].copy_(t)
    load_lora(rebuilt, os.path.join(out, "lora"))
    processor = Processor.from_pretrained(os.path.join(out, "merged"))
    qa = World.generate(20, 0).splits(10)["forget"][0]
    a, b = logits_of(merged, processor, qa), logits_of(rebuilt, processor, qa)
    assert torch.allclose(a, b, atol=1e-4)
    base = logits_of(Qwen3VL.from_pretrained(tiny_ckpt), processor, qa)
    assert not torch.allclose(a, base, atol=1e-4)  # the run changed the model


def test_interrupted_run_resumes_and_matches_uninterrupted(full_run, tiny_ckpt, tmp_path):
    """Interrupt after stage 1, then after GRPO step 0; each rerun continues where the last stopped (nothing is
    redone) and the end result equals the uninterrupted run's exactly."""
    out_full = full_run[0]
    out = str(tmp_path / "resumed")
    cfg = tiny_config(tiny_ckpt, out)

    def stop_at(event_name, seen):
        def interrupt(event):
            seen.append(event)
            if event == event_name:
                raise Interrupt(event)
        return interrupt

    first, second, third = [], [], []
    with pytest.raises(Interrupt):
        run(cfg, interrupt=stop_at("stage1", first))
    with pytest.raises(Interrupt):
        run(cfg, interrupt=stop_at("grpo_step_0", second))
    run(cfg, interrupt=third.append)
    assert first == ["eval_vanilla", "stage1"]
    assert second == ["eval_stage1", "grpo_step_0"]
    assert third == ["grpo_step_1", "stage2", "eval_asru"]
    assert [json.loads(line)["step"] for line in open(os.path.join(out, "grpo_log.jsonl"))] == [0, 1]
    assert os.listdir(os.path.join(out, "ckpt")) == ["step_000001"]  # older checkpoints removed
    for name in ("stage1.safetensors", "lora/adapter_model.safetensors", "merged/model.safetensors"):
        a, b = load_file(os.path.join(out, name)), load_file(os.path.join(out_full, name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    for stage in ("vanilla", "asru"):
        a = json.load(open(os.path.join(out, f"metrics_{stage}.json")))
        b = json.load(open(os.path.join(out_full, f"metrics_{stage}.json")))
        assert a["forget"] == b["forget"] and a["retain"] == b["retain"]
    # a finished run is not redone; another configuration in the same folder is refused
    again = []
    run(cfg, interrupt=again.append)
    assert again == []
    with pytest.raises(ValueError, match="another configuration"):
        run(tiny_config(tiny_ckpt, out, kl_coef=0.5))


def test_a_run_from_other_weights_is_refused_not_resumed(tiny_ckpt, tmp_path):
    """Same flags, retrained weights: the saved stages belong to the old weights, so the run stops with a clear
    error instead of loading them; --restart starts over."""
    weights = tmp_path / "weights"
    shutil.copytree(tiny_ckpt, weights)
    out = str(tmp_path / "run")
    Run(tiny_config(str(weights), out))                         # a run folder made from these weights
    Run(tiny_config(str(weights), out))                         # same weights: resumable
    data = bytearray((weights / "model.safetensors").read_bytes())
    data[-1] ^= 1                                               # "retrained": one bit of one weight differs
    (weights / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="other weights"):
        Run(tiny_config(str(weights), out))
    assert Run(tiny_config(str(weights), out), restart=True).state["done"] == []


def test_command_line_flags_map_to_config():
    cfg, restart = parse_args(["--group-size", "8", "--clip-high", "0.28", "--no-refusal-filter", "--save-merged",
                               "--lora-targets", "q_proj,v_proj", "--data", "/x", "--restart"])
    assert (cfg.group_size, cfg.clip_high, cfg.refusal_filter, cfg.save_merged) == (8, 0.28, False, True)
    assert cfg.lora_targets == "q_proj,v_proj" and cfg.data == "/x" and restart
    defaults, restart = parse_args([])
    assert defaults == TrainConfig() and not restart
    with pytest.raises(FileNotFoundError):
        run(TrainConfig(model="/nonexistent/weights"))


@pytest.mark.skipif(not os.path.isfile(os.path.join(WEIGHTS, "model.safetensors")),
                    reason="default weights/ not trained yet (python -m asru_min.world.pretrain)")
def test_default_weights_forget_moves_to_refusal_retain_kept(tmp_path):
    """A shortened ASRU run on the real default model (default stage 1, 8 GRPO steps): forget answers become
    refusals and stop leaking, while retain cloze accuracy stays within 10 points.

    Not asserted, because it does not hold for this short run: that retain generation answers stay as they were.
    Stage 1 is not selective on the tiny model (with the default steer_lr it refuses most retain questions too);
    8 GRPO steps do not undo that (the default run's 168 bring retain_test answers back to 87-92 %, README)."""
    cfg = TrainConfig(model=WEIGHTS, out=str(tmp_path / "asru"), eval_limit=10, grpo_epochs=1)
    results = run(cfg)
    before, after = results["vanilla"], results["asru"]
    f0, f1, r0, r1 = before["forget"]["all"], after["forget"]["all"], before["retain"]["all"], after["retain"]["all"]
    assert f1["refusal_rate"] >= f0["refusal_rate"] + 0.2
    assert f1["leak_rate"] <= f0["leak_rate"] - 0.2
    assert r1["cloze_acc"] >= r0["cloze_acc"] - 0.10


def test_unlearned_gate_command_loads_the_run(full_run, monkeypatch, capsys):
    """`python -m asru_min.world.gates --unlearned RUN` rebuilds the run's model (stage-1 tensors + adapter: the
    same logits as the merged checkpoint) and reports the gate of every held-out text question as one JSON line;
    a folder that is not a finished run is refused before any model loads."""
    import asru_min.evaluate as evaluate
    from asru_min.model import Qwen3VL
    from asru_min.world import gates
    from asru_min.world.people import World

    out, _, _ = full_run
    cfg = json.load(open(os.path.join(out, "config.json")))
    merged = Qwen3VL.from_pretrained(os.path.join(out, "merged")).eval()
    seen = {}

    def fake_answer(model, processor, qas, batch_size=64):
        ids = torch.tensor([[1, 2, 3]])
        with torch.no_grad():
            seen["max_diff"] = (model(ids) - merged(ids)).abs().max().item()
        return ["Sorry, I don't know." if i else "Sorry, I don't know whoMira is." for i in range(len(qas))]

    monkeypatch.setattr(evaluate, "answer", fake_answer)
    (record,) = gates.main(["--unlearned", out])
    splits = World.generate(cfg["num_people"], cfg["world_seed"]).splits(cfg["forget"])
    assert seen["max_diff"] < 1e-5
    assert record["answers"] == sum(q.form == "text" for q in splits["test"] + splits["retain_test"])
    assert not record["passed"] and len(record["malformed"]) == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run"] == out
    with pytest.raises(SystemExit):
        gates.main(["--unlearned", os.path.dirname(out)])
