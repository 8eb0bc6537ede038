"""Checkpoint folders as the ecosystem writes them (docs/QWEN3VL.md, "Checkpoint and config"):

- transformers 5's layout (processor_config.json with the image processor nested, chat_template.jinja, no
  preprocessor_config.json) loads and gives what the 4.x layout of the same checkpoint gives;
- config.json written here holds, at the keys transformers 4.57 and 5 read (fixtures/checkpoint_readers.json,
  recorded by fixtures/make_checkpoint_layouts.py), the model's rope theta, mrope sections and head tying;
- MoE and other models are refused from config.json before any tensor is read;
- vocabularies resized by fine-tuning load, with config.json updated or not; inconsistent ones are refused."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from asru_min.model import Qwen3VL, Qwen3VLConfig
from asru_min.processor import Processor, apply_chat_template

FIX = Path(__file__).parent / "fixtures"
FACTS = json.loads((FIX / "checkpoint_readers.json").read_text())
EMBED, HEAD = "model.language_model.embed_tokens.weight", "lm_head.weight"
PROMPTS = [apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}])
           for q in ("Who is this person?", "Describe this image.")]


def get_path(d: dict, dotted: str):
    for k in dotted.split("."):
        d = d[k]
    return d


@pytest.fixture(scope="module")
def tf5_folder(tmp_path_factory) -> Path:
    """qwen3vl_tiny_a_tf5 (as transformers 5 saved it) with tiny_a's model.safetensors, the file it left out."""
    d = tmp_path_factory.mktemp("tf5") / "tiny_a_tf5"
    shutil.copytree(FIX / "qwen3vl_tiny_a_tf5", d)
    weights = (FIX / "qwen3vl_tiny_a" / "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == FACTS["tf5_layout"]["tiny_a_model_sha256"]
    (d / "model.safetensors").write_bytes(weights)
    return d


def image_batch(processor: Processor) -> dict:
    images = [Image.open(FIX / "images" / n) for n in ("rgb_64x96.png", "rgba_50x70.png")]
    return processor(PROMPTS, images)


# ------------------------------------------------------------------------------------------- transformers 5 layout


def test_tf5_layout_is_what_transformers_5_wrote():
    names = {p.name for p in (FIX / "qwen3vl_tiny_a_tf5").iterdir()}
    assert "preprocessor_config.json" not in names and {"processor_config.json", "chat_template.jinja"} <= names
    nested = json.loads((FIX / "qwen3vl_tiny_a_tf5" / "processor_config.json").read_text())
    assert nested["processor_class"] == "Qwen3VLProcessor" and "size" in nested["image_processor"]
    assert FACTS["tf5_layout"]["tensors_equal_tiny_a"]


def test_tf5_layout_processor_equals_4x_layout(tf5_folder):
    new, old = Processor.from_pretrained(tf5_folder), Processor.from_pretrained(FIX / "qwen3vl_tiny_a")
    assert new.image_config == old.image_config
    assert new.chat_template == (tf5_folder / "chat_template.jinja").read_text()
    a, b = image_batch(new), image_batch(old)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert new._video_config["video_processor_type"] == "Qwen3VLVideoProcessor"  # recorded, written back


def test_tf5_layout_model_equals_4x_layout(tf5_folder):
    new, old = Qwen3VL.from_pretrained(tf5_folder), Qwen3VL.from_pretrained(FIX / "qwen3vl_tiny_a")
    assert new.config == old.config
    x = image_batch(Processor.from_pretrained(tf5_folder))
    with torch.no_grad():
        assert torch.equal(new(**x), old(**x))


def test_tf5_layout_saved_again_reloads(tf5_folder, tmp_path):
    Processor.from_pretrained(tf5_folder).save_pretrained(tmp_path)
    again = Processor.from_pretrained(tmp_path)
    assert again.image_config == Processor.from_pretrained(tf5_folder).image_config
    assert json.loads((tmp_path / "video_preprocessor_config.json").read_text())["fps"] == 2  # tf5's nested one


def test_no_image_processor_settings_named(tmp_path):
    shutil.copy(FIX / "qwen3vl_tiny_a" / "tokenizer.json", tmp_path)
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen3VLProcessor"}))
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json.*processor_config.json"):
        Processor.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------- config.json for 4.57 and 5


@pytest.mark.parametrize("name", sorted(FACTS["checkpoints"]))
def test_saved_config_holds_what_each_transformers_reads(name, tmp_path):
    """At every key each version reads (checkpoint_readers.json), our config.json holds the model's value."""
    model = Qwen3VL.from_pretrained(FIX / f"qwen3vl_{name}")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    want = {"rope_theta": model.config.text.rope_theta, "mrope_section": model.config.text.mrope_section,
            "tie_word_embeddings": model.config.tie_word_embeddings}
    assert FACTS["checkpoints"][name] == want  # the facts were recorded on these same models
    for version, keys in FACTS["keys"].items():
        assert set(keys) == set(want), f"transformers {version}: no key recorded for {set(want) - set(keys)}"
        for quantity, paths in keys.items():
            for path in paths:
                assert get_path(saved, path) == want[quantity], f"transformers {version} reads {path}"
        read = FACTS["versions"][version]["reads"][name]  # what that version saw in this project's folder
        assert {q: read[q] for q in want} == want and read["inv_freq_matches_theta"]
        assert read["max_abs_logit_diff_vs_asru_min"] < 1e-4
    assert Qwen3VLConfig.from_dict(saved) == model.config


def test_rope_scaling_wins_over_rope_parameters():
    """Both transformers versions take rope_scaling's mrope sections when both blocks are present."""
    cfg = Qwen3VL.from_pretrained(FIX / "qwen3vl_tiny_b").config.to_dict()
    cfg["text_config"]["rope_parameters"]["mrope_section"] = [4, 6, 6]
    assert Qwen3VLConfig.from_dict(cfg).text.mrope_section == [8, 4, 4]
    assert all("text_config.rope_scaling.mrope_section" in keys["mrope_section"] for keys in FACTS["keys"].values())


# ------------------------------------------------------------------------------------------- supported models


def moe_config(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    d.update(model_type="qwen3_vl_moe", architectures=["Qwen3VLMoeForConditionalGeneration"])
    d["text_config"].update(model_type="qwen3_vl_moe_text", num_experts=128, num_experts_per_tok=8,
                            moe_intermediate_size=768)
    return d


REFUSED = {
    "moe": (moe_config, "Mixture-of-Experts"),
    "moe_architecture_only": (lambda d: {**d, "architectures": ["Qwen3VLMoeForConditionalGeneration"]},
                              "Mixture-of-Experts"),
    "qwen2_5_vl": (lambda d: {**d, "model_type": "qwen2_5_vl",
                              "architectures": ["Qwen2_5_VLForConditionalGeneration"]}, "'qwen2_5_vl'"),
    "no_model_type": (lambda d: {k: v for k, v in d.items() if k != "model_type"}, "model_type None"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_other_models_refused_before_reading_tensors(case, tmp_path):
    """The weights file is garbage: the refusal must come from config.json alone, naming what is supported."""
    change, words = REFUSED[case]
    cfg = json.loads((FIX / "qwen3vl_tiny_b" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(change(cfg)))
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    for load in (Qwen3VL.from_pretrained, Qwen3VLConfig.from_pretrained):
        with pytest.raises(ValueError, match=words) as err:
            load(tmp_path)
        assert "'qwen3_vl'" in str(err.value) and "Qwen3VLForConditionalGeneration" in str(err.value)
        assert "safetensors" not in str(err.value)


# ------------------------------------------------------------------------------------------- resized vocabularies


def resize(src: Path, dst: Path, rows: int, update_config: bool) -> dict:
    """Copy checkpoint `src` to `dst` with embed_tokens (and a stored lm_head) cut or grown to `rows`, new rows
    drawn at random, as resize_token_embeddings leaves them; config.json's vocab_size set to `rows` as transformers
    writes it (`update_config`, see checkpoint_readers.json) or left as it was (other tools)."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for k in (EMBED, HEAD):
        if k in tensors:
            w = tensors[k][:rows]
            extra = 0.05 * torch.randn(rows - w.shape[0], w.shape[1], generator=g)
            tensors[k] = torch.cat([w, extra]).contiguous()
    save_file(tensors, str(dst / "model.safetensors"))
    cfg = json.loads((dst / "config.json").read_text())
    if update_config:
        cfg["text_config"]["vocab_size"] = rows
        (dst / "config.json").write_text(json.dumps(cfg))
    return tensors


def test_transformers_resize_updates_text_config_vocab_size():
    for version, cases in FACTS["resize_token_embeddings"].items():
        for case in cases.values():
            assert case["config_text_vocab_size"] == case["new_rows"], version
            assert all(shape[0] == case["new_rows"] for shape in case["tensor_shapes"].values()), version


@pytest.mark.parametrize("update_config", [True, False], ids=["config_updated", "config_kept"])
@pytest.mark.parametrize("name,rows", [("tiny_b", 600), ("tiny_a", 640)], ids=["untied_shrunk", "tied_grown"])
def test_resized_vocabulary_loads(name, rows, update_config, tmp_path):
    src = FIX / f"qwen3vl_{name}"
    original = Qwen3VL.from_pretrained(src)
    tensors = resize(src, tmp_path / "resized", rows, update_config)
    if update_config:
        model = Qwen3VL.from_pretrained(tmp_path / "resized")
    else:
        with pytest.warns(UserWarning, match=f"{rows} rows"):
            model = Qwen3VL.from_pretrained(tmp_path / "resized")
    assert model.config.text.vocab_size == rows and model.lm_head.weight.shape[0] == rows
    assert torch.equal(model.model.language_model.embed_tokens.weight, tensors[EMBED])
    x = image_batch(Processor.from_pretrained(src))
    with torch.no_grad():
        old, new = original(**x), model(**x)
    kept = min(rows, original.config.text.vocab_size)
    assert new.shape[-1] == rows and torch.allclose(new[..., :kept], old[..., :kept], atol=1e-5)
    model.save_pretrained(tmp_path / "saved")  # written back with the vocab_size the tensors have
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["text_config"]["vocab_size"] == rows


def test_resized_embed_and_head_disagree(tmp_path):
    resize(FIX / "qwen3vl_tiny_b", tmp_path / "r", 600, update_config=False)
    tensors = load_file(str(tmp_path / "r" / "model.safetensors"))
    tensors[HEAD] = torch.zeros(768, tensors[HEAD].shape[1])
    save_file(tensors, str(tmp_path / "r" / "model.safetensors"))
    with pytest.raises(ValueError, match="embed_tokens has 600 rows but lm_head.weight has 768"):
        Qwen3VL.from_pretrained(tmp_path / "r")


def test_vocabulary_without_the_special_tokens_refused(tmp_path):
    """590 rows cannot be this config's model: its special ids are 592..599."""
    resize(FIX / "qwen3vl_tiny_b", tmp_path / "r", 590, update_config=False)
    with pytest.raises(ValueError, match=r"special token ids \[598, 599, 595, 596, 594\].*590 rows"):
        Qwen3VL.from_pretrained(tmp_path / "r")
