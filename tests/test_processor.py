"""Processor tests: smart_resize, pixel pipeline, patch order, chat template, batching, SFT labels, decoding.

A tiny byte-level BPE tokenizer with the exact Qwen special-token strings is trained in a fixture, so nothing is
downloaded. Parity with the reference processor lives in tests/test_parity.py.
"""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from asru_min.processor import (
    IGNORE_INDEX,
    SUBSET_CHAT_TEMPLATE,
    ImageProcessorConfig,
    Processor,
    apply_chat_template,
    patchify,
    preprocess_images,
    smart_resize,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
SENTENCES = [
    "Describe this image.", "The person in the picture has short red hair and round glasses.",
    "Who is this person? Where was she born?", "She was born in Lisbon and works as a marine biologist.",
    "I don't know who this is.", "What is the capital of France? Paris is the capital of France.",
    "user assistant system", "Answer the question about the image.",
]
PRE = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
       "image_std": [0.5, 0.5, 0.5], "size": {"shortest_edge": 65536, "longest_edge": 16777216},
       "rescale_factor": 0.00392156862745098, "resample": 3, "image_processor_type": "Qwen2VLImageProcessorFast"}
USER_IMG = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A folder with tokenizer.json (byte-level BPE; specials appended after the vocab, as in Qwen) and
    preprocessor_config.json with the real Qwen3-VL values."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    tok.add_special_tokens(SPECIALS)
    path = tmp_path_factory.mktemp("ckpt")
    tok.save(str(path / "tokenizer.json"))
    (path / "preprocessor_config.json").write_text(json.dumps(PRE))
    return path


@pytest.fixture(scope="module")
def proc(ckpt):
    return Processor.from_pretrained(ckpt)


def solid(h, w, color, mode="RGB"):
    return Image.new(mode, (w, h), color)


# --------------------------------------------------------------------------------------------- smart_resize


def test_smart_resize_spec_examples():
    assert smart_resize(64, 96) == (224, 320)     # upscaled to reach 65536 px -> grid [1, 14, 20]
    assert smart_resize(480, 640) == (480, 640)   # already a multiple of 32 -> grid [1, 30, 40]


def test_smart_resize_edge_cases():
    # Python round ties to even: 48/32 = 1.5 -> 2, 80/32 = 2.5 -> 2.
    assert smart_resize(48, 80, 32, min_pixels=32 * 32, max_pixels=10**9) == (64, 64)
    # Downscale: beta = sqrt(4000*8000/2^24); floor(4000/beta/32)=90, floor(8000/beta/32)=181.
    assert smart_resize(4000, 8000) == (90 * 32, 181 * 32)
    # The max(f, .) clamp keeps a side of at least one factor.
    assert smart_resize(32, 6400, 32, min_pixels=32, max_pixels=4096) == (32, 28 * 32)
    assert smart_resize(1, 1) == (256, 256)       # beta = 256: ceil(256/32)*32
    # Aspect ratio exactly 200 is allowed: beta = sqrt(65536/200), ceil(200*beta/32) = 114.
    assert smart_resize(1, 200) == (32, 114 * 32)
    for h, w in [(1, 201), (402, 2)]:
        with pytest.raises(ValueError, match="aspect ratio"):
            smart_resize(h, w)


def test_aspect_ratio_201_image_raises(proc):
    with pytest.raises(ValueError, match="aspect ratio"):
        proc(["<|vision_start|><|image_pad|><|vision_end|>"], [solid(1, 201, (0, 0, 0))])


def test_grids_and_shapes_for_spec_examples():
    pv, grid = preprocess_images([solid(64, 96, (10, 20, 30)), solid(480, 640, (1, 2, 3))], ImageProcessorConfig())
    assert grid.tolist() == [[1, 14, 20], [1, 30, 40]] and grid.dtype == torch.long
    assert pv.shape == (280 + 1200, 1536) and pv.dtype == torch.float32


def test_config_from_dict_legacy_and_size_keys():
    c = ImageProcessorConfig.from_dict(PRE)
    assert (c.min_pixels, c.max_pixels, c.patch_size) == (65536, 16777216, 16)
    legacy = ImageProcessorConfig.from_dict({"patch_size": 14, "min_pixels": 3136, "max_pixels": 1003520})
    assert (legacy.min_pixels, legacy.max_pixels, legacy.patch_size) == (3136, 1003520, 14)
    old_size = ImageProcessorConfig.from_dict({"size": {"min_pixels": 100, "max_pixels": 200}})
    assert (old_size.min_pixels, old_size.max_pixels) == (100, 200)
    assert ImageProcessorConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="do_normalize"):
        ImageProcessorConfig.from_dict({"do_normalize": False})


# --------------------------------------------------------------------------------------------- pixels


def test_patch_order_matches_spec_formula():
    """Pixel values encode (channel, y, x); every row/column of the output must sit where spec 2.5 says."""
    p, m, tp = 2, 2, 2
    h, w = 8, 12
    cfg = ImageProcessorConfig(patch_size=p, merge_size=m, temporal_patch_size=tp, image_mean=(0, 0, 0),
                               image_std=(1, 1, 1), min_pixels=16, max_pixels=10**6, rescale_factor=1.0)
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    arr[..., 0], arr[..., 1], arr[..., 2] = yy, xx, 100 + yy * w + xx
    pv, grid = preprocess_images([Image.fromarray(arr)], cfg)  # 8x12 is a multiple of 4: no resize
    gh, gw = h // p, w // p
    assert grid.tolist() == [[1, gh, gw]] and pv.shape == (gh * gw, 3 * tp * p * p)
    for r in range(gh):
        for c in range(gw):
            row = ((r // m) * (gw // m) + c // m) * m * m + (r % m) * m + (c % m)
            for k in range(3):
                for tau in range(tp):
                    for y in range(p):
                        for x in range(p):
                            col = ((k * tp + tau) * p + y) * p + x
                            assert pv[row, col].item() == arr[r * p + y, c * p + x, k]


def test_patchify_is_a_permutation_with_repeated_frame():
    x = np.arange(3 * 32 * 64, dtype=np.float32).reshape(3, 32, 64)
    rows = patchify(x, 16, 2, 2)  # (2*4, 3*2*16*16)
    assert rows.shape == (8, 1536)
    both = rows.reshape(8, 3, 2, 256)
    assert np.array_equal(both[:, :, 0], both[:, :, 1])  # the still frame fills both temporal slots
    assert np.array_equal(np.sort(both[:, :, 0].ravel()), x.ravel())


def test_normalisation_values():
    pv, _ = preprocess_images([solid(64, 64, (0, 255, 51))], ImageProcessorConfig())
    vals = pv.reshape(-1, 3, 2 * 16 * 16)  # column blocks by channel
    assert torch.all(vals[:, 0] == -1.0) and torch.all(vals[:, 1] == 1.0)
    expect = np.float32((np.float64(51) * (1 / 255)).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)
    assert torch.all(vals[:, 2] == torch.tensor(expect))  # -0.6 up to fp32 rounding


def test_rgba_composited_on_white():
    # Fully transparent red: the reference composites on white, so every value is 1.0 (a plain RGB convert
    # would keep the red and give R=1, G=B=-1).
    pv, _ = preprocess_images([solid(64, 64, (255, 0, 0, 0), "RGBA")], ImageProcessorConfig())
    assert torch.all(pv == 1.0)
    # Opaque blue stays blue.
    pv, _ = preprocess_images([solid(64, 64, (0, 0, 255, 255), "RGBA")], ImageProcessorConfig())
    ch = pv.reshape(-1, 3, 512)
    assert torch.all(ch[:, 0] == -1.0) and torch.all(ch[:, 1] == -1.0) and torch.all(ch[:, 2] == 1.0)
    # LA: transparent black -> white.
    pv, _ = preprocess_images([solid(64, 64, (0, 0), "LA")], ImageProcessorConfig())
    assert torch.all(pv == 1.0)


def test_palette_and_grey_modes():
    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 red, 1 green
    pal.paste(1, (0, 0, 64, 32))  # top half green, bottom half red
    pv, grid = preprocess_images([pal], ImageProcessorConfig())
    assert grid.tolist() == [[1, 16, 16]]  # 64x64 -> 256x256 (min pixels)
    top = pv[0].reshape(3, 512)  # patch (0, 0) is green
    assert torch.all(top[0] == -1.0) and torch.all(top[1] == 1.0)
    pal.info["transparency"] = 1  # green becomes transparent -> white
    pv, _ = preprocess_images([pal], ImageProcessorConfig())
    assert torch.all(pv[0] == 1.0)
    pv, _ = preprocess_images([solid(64, 64, 255, "L")], ImageProcessorConfig())
    assert torch.all(pv == 1.0)


def test_file_paths_corrupt_and_missing(tmp_path, proc):
    good = tmp_path / "img.png"
    solid(40, 50, (9, 99, 199)).save(good)
    a, ga = preprocess_images([str(good)], proc.image_config)
    b, gb = preprocess_images([solid(40, 50, (9, 99, 199))], proc.image_config)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="junk.png"):
        preprocess_images([str(junk)], proc.image_config)
    truncated = tmp_path / "cut.png"
    noisy = Image.fromarray(np.random.RandomState(0).randint(0, 256, (64, 64, 3), dtype=np.uint8))
    noisy.save(good)
    truncated.write_bytes(good.read_bytes()[:400])
    with pytest.raises(ValueError, match="cut.png"):
        preprocess_images([truncated], proc.image_config)
    with pytest.raises(FileNotFoundError):
        preprocess_images([str(tmp_path / "nope.png")], proc.image_config)


# --------------------------------------------------------------------------------------------- chat template


def test_chat_template_spec_example():
    assert apply_chat_template(USER_IMG) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert apply_chat_template(USER_IMG, add_generation_prompt=False) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\n")


def test_chat_template_system_multi_turn_and_vision_id():
    msgs = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": " Really."}]},
        {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image"}, {"type": "image"}]},
        {"role": "assistant", "content": "two pictures\n"},
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
    ]
    v = "<|vision_start|><|image_pad|><|vision_end|>"
    assert apply_chat_template(msgs, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief. Really.<|im_end|>\n"
        f"<|im_start|>user\nA{v}{v}<|im_end|>\n"
        "<|im_start|>assistant\ntwo pictures\n<|im_end|>\n"
        "<|im_start|>user\nAnd now?<|im_end|>\n"
        "<|im_start|>assistant\nDone.<|im_end|>\n")
    assert apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("msgs", [
    [{"role": "user", "content": [{"type": "video"}]}],
    [{"role": "tool", "content": "42"}],
    [{"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]}],
    [{"role": "user", "content": "q"}, {"role": "system", "content": "late"}],
    [{"role": "assistant", "content": [{"type": "image"}]}],
    [{"role": "user", "content": [{"type": "audio"}]}],
    [{"role": "user", "content": None}],
    [],
])
def test_chat_template_unsupported_raises(msgs):
    with pytest.raises(ValueError):
        apply_chat_template(msgs)


def test_subset_jinja_template_renders_identically():
    """The template save_pretrained writes must render like apply_chat_template (jinja is optional here)."""
    pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    tpl = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(SUBSET_CHAT_TEMPLATE)
    convs = [USER_IMG, [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                        {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
                        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " x\n"}]}]]
    for conv in convs:
        for agp in (True, False):
            assert tpl.render(messages=conv, add_generation_prompt=agp) == apply_chat_template(conv, agp)


# --------------------------------------------------------------------------------------------- batches


def test_special_ids(proc):
    t = proc.tokenizer
    assert proc.pad_token_id == t.token_to_id("<|endoftext|>")
    assert proc.eos_token_ids == [t.token_to_id("<|im_end|>"), t.token_to_id("<|endoftext|>")]
    assert proc.image_token_id == t.token_to_id("<|image_pad|>")
    ids = t.encode("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>").ids
    assert ids[0] == t.token_to_id("<|im_start|>")
    assert ids[-3:] == [proc.vision_start_token_id, proc.image_token_id, proc.vision_end_token_id]


def test_placeholder_expansion_and_left_padding(proc):
    prompt = apply_chat_template(USER_IMG)
    texts = [prompt, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", prompt.replace("Describe", "Who")]
    imgs = [solid(64, 96, (1, 2, 3)), solid(480, 640, (4, 5, 6))]  # 70 and 300 image tokens
    out = proc(texts, imgs)
    assert out["image_grid_thw"].tolist() == [[1, 14, 20], [1, 30, 40]]
    assert out["pixel_values"].shape == (1480, 1536) and out["pixel_values"].dtype == torch.float32
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ((ids == proc.image_token_id).sum(1)).tolist() == [70, 0, 300]  # images consumed in order
    assert ids.shape[1] == mask[2].sum()  # the longest row has no padding
    for b, text in enumerate(texts):
        n = int(mask[b].sum())
        assert torch.all(mask[b, : ids.shape[1] - n] == 0) and torch.all(mask[b, ids.shape[1] - n:] == 1)
        assert torch.all(ids[b, : ids.shape[1] - n] == proc.pad_token_id)
        single = proc([text], [imgs[0]] if b == 0 else [imgs[1]] if b == 2 else None)
        assert ids[b, ids.shape[1] - n:].tolist() == single["input_ids"][0].tolist()
    # Vision markers stay single tokens around the expanded run.
    row = ids[0, mask[0].bool()].tolist()
    s = row.index(proc.vision_start_token_id)
    assert row[s + 1: s + 71] == [proc.image_token_id] * 70 and row[s + 71] == proc.vision_end_token_id
    text_only = proc(["hello there"])
    assert text_only["pixel_values"] is None and text_only["image_grid_thw"] is None


def test_placeholder_mismatch_raises(proc):
    one = apply_chat_template(USER_IMG)
    img = solid(64, 64, (0, 0, 0))
    with pytest.raises(ValueError, match="placeholders"):
        proc([one + one], [img])
    with pytest.raises(ValueError, match="placeholders"):
        proc(["no image here"], [img])
    with pytest.raises(ValueError, match="placeholders"):
        proc([one])


def test_encode_sft_labels(proc):
    prompts = [apply_chat_template(USER_IMG), apply_chat_template([{"role": "user", "content": "Who is she?"}])]
    answers = ["She was born in Lisbon.", "I don't know."]
    out = proc.encode_sft(prompts, answers, images=[solid(64, 64, (7, 7, 7))])
    ids, mask, labels = out["input_ids"], out["attention_mask"], out["labels"]
    assert labels.shape == ids.shape and out["image_grid_thw"].tolist() == [[1, 16, 16]]
    im_end = proc.tokenizer.token_to_id("<|im_end|>")
    for b in range(2):
        prompt_len = len(proc([prompts[b]], [solid(64, 64, (7, 7, 7))] if b == 0 else None)["input_ids"][0])
        answer_ids = proc.tokenizer.encode(answers[b], add_special_tokens=False).ids + [im_end]
        n = int(mask[b].sum())
        start = ids.shape[1] - n + prompt_len  # first answer position
        assert torch.all(labels[b, :start] == IGNORE_INDEX)
        assert labels[b, start:].tolist() == answer_ids == ids[b, start:].tolist()
        assert proc.decode(labels[b, start:], skip_special_tokens=False) == answers[b] + "<|im_end|>"
        # Joining prompt and answer before tokenizing gives the same ids for such answers.
        joint = proc.tokenizer.encode(prompts[b].replace("<|image_pad|>", "<|image_pad|>" * 64) + answers[b]
                                      + "<|im_end|>").ids
        assert ids[b, ids.shape[1] - n:].tolist() == joint
    with pytest.raises(ValueError):
        proc.encode_sft(prompts, answers[:1])


def test_decode_round_trip(proc):
    text = "The person in the picture has short red hair, age 37!"
    ids = proc.tokenizer.encode(text).ids
    assert proc.decode(ids) == text and proc.decode(torch.tensor(ids)) == text
    batch = proc(["Who is this person?", "Paris is the capital of France."])
    assert proc.batch_decode(batch["input_ids"]) == ["Who is this person?", "Paris is the capital of France."]
    gen = torch.tensor([ids[:3] + [proc.eos_token_ids[0]]])
    assert proc.batch_decode(gen) == [proc.decode(ids[:3])]
    assert proc.batch_decode(gen, skip_special_tokens=False)[0].endswith("<|im_end|>")


# --------------------------------------------------------------------------------------------- files


def test_save_and_reload(tmp_path, proc):
    proc.save_pretrained(tmp_path / "out")
    again = Processor.from_pretrained(tmp_path / "out")
    for name in ("tokenizer.json", "preprocessor_config.json", "tokenizer_config.json", "chat_template.json",
                 "video_preprocessor_config.json"):
        assert (tmp_path / "out" / name).is_file()
    pre = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert pre["size"] == {"shortest_edge": 65536, "longest_edge": 16777216}
    assert pre["image_processor_type"] == "Qwen2VLImageProcessorFast"  # carried over from the loaded file
    tok_cfg = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert tok_cfg["pad_token"] == "<|endoftext|>" and tok_cfg["eos_token"] == "<|im_end|>"
    assert again.chat_template == SUBSET_CHAT_TEMPLATE
    text, img = [apply_chat_template(USER_IMG)], [solid(50, 70, (3, 30, 90))]
    a, b = proc(text, img), again(text, img)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.image_config == proc.image_config


def test_from_pretrained_missing_files(tmp_path, ckpt):
    with pytest.raises(FileNotFoundError):
        Processor.from_pretrained(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "tokenizer.json").write_text((ckpt / "tokenizer.json").read_text())
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        Processor.from_pretrained(tmp_path / "half")
    assert math.isclose(Processor.from_pretrained(ckpt).image_config.rescale_factor, 1 / 255)
