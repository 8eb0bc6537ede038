"""Settings are checked against the model's config.json and the machine before any work (train.validate_settings):
one message per bad setting, raised before data, weights or the first evaluation."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asru_min import train
from asru_min.model import Qwen3VLConfig
from asru_min.train import SettingsError, TrainConfig, validate_settings

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "fixtures" / "qwen3vl_tiny_b"  # 3 decoder layers, max_position_embeddings 8192
GOOD = TrainConfig(model=str(TINY), layer=1)


@pytest.fixture(scope="module")
def model_config() -> Qwen3VLConfig:
    return Qwen3VLConfig.from_pretrained(TINY)


# (field, bad value, words the message must hold)
BAD = [
    ("layer", 3, "0 <= layer < 3"),
    ("layer", -1, "0 <= layer < 3"),
    ("group_size", 1, ">= 2"),
    ("group_size", 0, ">= 2"),
    ("forget", 20, "(5, 10, 15)"),
    ("protocol", "paper", "('plain', 'release')"),
    ("dtype", "float64", "('float32', 'bfloat16', 'float16')"),
    ("device", "gpu", "not a torch device"),
    ("device", "meta", "cpu, cuda, cuda:N, mps"),
    ("threads", -1, ">= 0"),
    ("eval_limit", -1, ">= 0"),
    ("eval_batch_size", 0, ">= 1"),
    ("eval_max_new_tokens", 0, "in [1, 8192)"),
    ("eval_max_new_tokens", 8192, "in [1, 8192)"),
    ("positive_size", 0, ">= 1"),
    ("steer_kinds", "gen,essay", "QA kinds"),
    ("steer_kinds", "", "QA kinds"),
    ("forget_scale", 0.0, "> 0"),
    ("steer_retain_weight", -1.0, ">= 0"),
    ("steer_weight_decay", -0.01, ">= 0"),
    ("steer_lr", 0.0, "finite and > 0"),
    ("steer_lr", float("nan"), "finite and > 0"),
    ("steer_lr", float("inf"), "finite and > 0"),
    ("steer_batch_size", 0, ">= 1"),
    ("steer_epochs", 0, ">= 1"),
    ("steer_retain_size", -5, ">= 0"),
    ("boundary_size", 0, ">= 1"),
    ("boundary_forget_share", 0.0, "in (0, 1)"),
    ("boundary_forget_share", 1.0, "in (0, 1)"),
    ("boundary_kinds", "mcq", "QA kinds"),
    ("lora_r", 0, ">= 1"),
    ("lora_alpha", 0.0, "> 0"),
    ("lora_dropout", 1.0, "in [0, 1)"),
    ("lora_targets", "q_proj,qkv", "q_proj"),
    ("temperature", 0.0, "> 0"),
    ("temperature", float("inf"), "> 0"),
    ("top_p", 0.0, "in (0, 1]"),
    ("top_p", 1.5, "in (0, 1]"),
    ("max_new_tokens", 0, "in [1, 8192)"),
    ("prompts_per_step", 0, ">= 1"),
    ("mini_batch_size", -1, ">= 0"),
    ("rollout_batch", -1, ">= 0"),
    ("boundary_refusals", -1, ">= 0"),
    ("reward", "verl", "one of"),
    ("reward_reference", "answer", "one of"),
    ("steer_data", "paper", "one of"),
    ("forget_position", "last", "one of"),
    ("retain_position", "last", "one of"),
    ("micro_batch_tokens", -1, ">= 0"),
    ("logprob_chunk", -5, ">= 0"),
    ("grad_checkpoint", "yes", "one of"),
    ("epochs_per_rollout", 0, ">= 1"),
    ("grpo_epochs", 0, ">= 1"),
    ("clip_low", 1.0, "in [0, 1)"),
    ("clip_high", -0.1, ">= 0"),
    ("dual_clip", 0.5, "0 (off) or > 1"),
    ("kl_coef", -0.1, ">= 0"),
    ("grpo_lr", -1e-3, "finite and > 0"),
    ("grpo_lr", float("nan"), "finite and > 0"),
    ("grpo_weight_decay", -0.01, ">= 0"),
    ("grad_clip", float("nan"), ">= 0"),
    ("ckpt_every", 0, ">= 1"),
]


def test_defaults_and_good_settings_pass(model_config):
    validate_settings(GOOD, model_config)
    validate_settings(TrainConfig(), Qwen3VLConfig.from_pretrained(REPO / "weights"))  # the shipped default run


def test_one_flag_per_setting_and_stage_two_built_from_them():
    """Every TrainConfig field is the flag of its name; GRPOConfig's fields are TrainConfig fields of the same
    name (the advantage's epsilon alone is fixed), so each GRPO flag reaches stage 2 unchanged."""
    from asru_min.grpo import GRPOConfig

    cfg, _ = train.parse_args(["--steer-retain-weight", "2", "--steer-weight-decay", "0.5", "--grpo-weight-decay",
                               "0.25", "--epochs-per-rollout", "2", "--grpo-epochs", "5", "--grpo-lr", "0.1"])
    assert (cfg.steer_retain_weight, cfg.steer_weight_decay) == (2.0, 0.5)
    g = cfg.grpo()
    assert (g.grpo_weight_decay, g.epochs_per_rollout, g.grpo_epochs, g.grpo_lr) == (0.25, 2, 5, 0.1)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {f.name for f in dataclasses.fields(GRPOConfig)} - names == {"adv_eps"}
    assert all(getattr(g, n) == getattr(cfg, n) for n in {f.name for f in dataclasses.fields(GRPOConfig)} & names)


@pytest.mark.parametrize("field,value,words", BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_bad_setting_named_with_its_requirement(field, value, words, model_config):
    with pytest.raises(SettingsError) as err:
        validate_settings(dataclasses.replace(GOOD, **{field: value}), model_config)
    msg = str(err.value)
    assert f"--{field.replace('_', '-')} {value!r}: " in msg and words in msg
    assert msg.count("\n  ") == 1  # only this setting is reported


def test_every_bad_setting_listed_at_once(model_config):
    cfg = dataclasses.replace(GOOD, layer=9, group_size=0, top_p=2.0)
    with pytest.raises(SettingsError) as err:
        validate_settings(cfg, model_config)
    assert all(f"--{f} " in str(err.value) for f in ("layer", "group-size", "top-p"))


def test_base_model_must_match_the_model(model_config):
    """v compares --base-model's activations with --model's at --layer: same hidden size, that layer present."""
    other = Qwen3VLConfig.from_pretrained(REPO / "tests" / "fixtures" / "qwen3vl_tiny_a")  # hidden 64, 2 layers
    validate_settings(GOOD, model_config, model_config)
    with pytest.raises(SettingsError, match="--base-model .*hidden size 48"):
        validate_settings(dataclasses.replace(GOOD, base_model="a"), model_config, other)
    shallow = dataclasses.replace(model_config, text=dataclasses.replace(model_config.text, num_hidden_layers=1))
    with pytest.raises(SettingsError, match="--base-model .*a layer 1"):
        validate_settings(dataclasses.replace(GOOD, base_model="a"), model_config, shallow)


def test_cuda_without_cuda(monkeypatch, model_config):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SettingsError, match="--device 'cuda': must be usable here; CUDA is not available"):
        validate_settings(dataclasses.replace(GOOD, device="cuda"), model_config)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    validate_settings(dataclasses.replace(GOOD, device="cuda:0"), model_config)
    with pytest.raises(SettingsError, match="there is no GPU 3: 1 visible"):
        validate_settings(dataclasses.replace(GOOD, device="cuda:3"), model_config)


def test_run_checks_before_any_work(monkeypatch, tmp_path):
    """train.run stops on a bad setting before the world, the processor or the weights are read."""
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the settings were checked")

    monkeypatch.setattr(train, "load_world", forbidden)
    monkeypatch.setattr(train.Processor, "from_pretrained", forbidden)
    monkeypatch.setattr(train.Qwen3VL, "from_pretrained", forbidden)
    out = tmp_path / "run"
    with pytest.raises(SettingsError, match="--layer 9"):
        train.main(["--model", str(TINY), "--layer", "9", "--out", str(out)])
    assert not out.exists()


def test_moe_model_refused_by_train_before_work(monkeypatch, tmp_path):
    monkeypatch.setattr(train, "load_world", lambda *a, **k: pytest.fail("data read"))
    (tmp_path / "config.json").write_text('{"model_type": "qwen3_vl_moe", "architectures": '
                                          '["Qwen3VLMoeForConditionalGeneration"], "text_config": {}}')
    with pytest.raises(ValueError, match="Mixture-of-Experts"):
        train.main(["--model", str(tmp_path), "--out", str(tmp_path / "run")])


def test_command_line_fails_fast_with_the_message(tmp_path):
    """`python -m asru_min.train --layer 9` on the shipped 6-layer model: the message, no traceback, no output
    folder, no progress line (nothing was loaded or evaluated)."""
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "asru_min.train", "--layer", "9", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode != 0
    assert "--layer 9: must be a decoder layer of the model: 0 <= layer < 6" in res.stderr
    assert "Traceback" not in res.stderr and "[train" not in res.stdout
    assert not out.exists()


def test_evaluate_refuses_a_missing_device_before_loading(monkeypatch):
    from asru_min import evaluate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train.Qwen3VL, "from_pretrained", lambda *a, **k: pytest.fail("weights read"))
    with pytest.raises(ValueError, match="--device 'cuda': CUDA is not available"):
        evaluate.main(["--model", str(TINY), "--device", "cuda"])
