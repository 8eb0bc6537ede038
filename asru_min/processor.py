"""Qwen3-VL processor: image -> patches, chat template, tokens, left-padded batches (docs/QWEN3VL.md, "Processor").

The reference is Hugging Face's `Qwen3VLProcessor` with the **PIL** image backend (`Qwen2VLImageProcessorPil`);
its default torchvision backend differs by +-1 on a few resized pixels.

    images --RGB--> uint8 (H, W, 3) --smart_resize + PIL bicubic--> uint8 (h', w', 3)
           --rescale, normalize--> float32 (3, h', w') --patchify--> (gh*gw, 3*Tp*p*p) rows, grid [1, gh, gw]
    texts  --expand the i-th <|image_pad|> to t*gh*gw/m^2 copies--> tokenize --> left-pad --> ids, attention_mask

`apply_chat_template` renders the *Instruct* template (also for thinking checkpoints) in plain Python; tools, videos,
a later system message, unknown roles or items raise ValueError.
"""

import json
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tokenizers import Tokenizer

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, VISION_PAD = "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END  # what one image item renders to
REQUIRED_TOKENS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD)
IGNORE_INDEX = -100  # label value the loss skips


# ----------------------------------------------------------------------------------------- image preprocessing

@dataclass
class ImageProcessorConfig:
    """Fields of `preprocessor_config.json` that change the pixels. `min_pixels` / `max_pixels` are the file's
    `size.shortest_edge` / `size.longest_edge`: despite those names, bounds on the pixel count h'*w'."""

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    min_pixels: int = 65536
    max_pixels: int = 16777216
    rescale_factor: float = 1 / 255
    resample: int = 3  # PIL.Image.BICUBIC

    @classmethod
    def from_dict(cls, d: dict) -> "ImageProcessorConfig":
        """From a preprocessor_config.json dict; accepts `size.{shortest,longest}_edge`, the legacy
        `size.{min,max}_pixels`, and top-level `min_pixels` / `max_pixels` (which win, as in the reference)."""
        off = [f for f in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb") if d.get(f, True) is False]
        size = d.get("size") or {}
        if off or not isinstance(size, dict):
            raise ValueError(f"preprocessor_config.json: only the default pipeline with a dict `size` is supported "
                             f"(got {off} set to false, size {size!r})")
        c = cls()
        min_px = size.get("shortest_edge", size.get("min_pixels", c.min_pixels))
        max_px = size.get("longest_edge", size.get("max_pixels", c.max_pixels))
        min_px = d["min_pixels"] if d.get("min_pixels") is not None else min_px
        max_px = d["max_pixels"] if d.get("max_pixels") is not None else max_px
        ints = ("patch_size", "temporal_patch_size", "merge_size", "resample")
        return cls(**{k: int(d.get(k, getattr(c, k))) for k in ints}, min_pixels=int(min_px), max_pixels=int(max_px),
                   image_mean=tuple(float(x) for x in d.get("image_mean", c.image_mean)),
                   image_std=tuple(float(x) for x in d.get("image_std", c.image_std)),
                   rescale_factor=float(d.get("rescale_factor", c.rescale_factor)))

    def to_dict(self) -> dict:
        return {"patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size,
                "merge_size": self.merge_size, "image_mean": list(self.image_mean), "image_std": list(self.image_std),
                "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
                "rescale_factor": self.rescale_factor, "resample": self.resample,
                "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True}


def load_image(image) -> Image.Image:
    """A PIL image from a PIL image or a file path. Missing path -> FileNotFoundError; unreadable -> ValueError."""
    if isinstance(image, Image.Image):
        return image
    if not isinstance(image, (str, os.PathLike)):
        raise ValueError(f"expected a PIL.Image.Image or a file path, got {type(image).__name__}")
    path = os.fspath(image)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()  # decode now so a truncated/corrupt file fails here, with its name
            return im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image file {path!r}: {e}") from e


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited over opaque white (a plain convert("RGB") keeps the hidden colour)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def smart_resize(height: int, width: int, factor: int = 32, min_pixels: int = 65536,
                 max_pixels: int = 16777216) -> tuple[int, int]:
    """Target (h', w'), both multiples of `factor` = p*m, with min_pixels <= h'*w' <= max_pixels:

        h' = round(H/f)*f, w' = round(W/f)*f                       (Python round: ties to even)
        if h'w' > max: b = sqrt(HW/max);  h' = max(f, floor(H/b/f)*f), w' = max(f, floor(W/b/f)*f)
        elif h'w' < min: b = sqrt(min/(HW)); h' = ceil(H*b/f)*f,       w' = ceil(W*b/f)*f

    The float operations keep the reference's order (two successive divisions) so edge cases round alike.
    """
    if min(height, width) <= 0 or max(height, width) / min(height, width) > 200:
        raise ValueError(f"image must have positive sides and an aspect ratio of at most 200, got {height}x{width}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify(x: np.ndarray, patch_size: int, merge_size: int, temporal_patch_size: int) -> np.ndarray:
    """(C, H, W) float32 -> (gh*gw, C*Tp*p*p) rows in m x m block order.

    Row of patch (r, c): ((r//m)*(gw/m) + c//m)*m^2 + (r%m)*m + c%m.
    Column of pixel (k, tau, y, x): ((k*Tp + tau)*p + y)*p + x; the still image fills all Tp frames.
    """
    p, m, tp = patch_size, merge_size, temporal_patch_size
    c, h, w = x.shape
    gh, gw = h // p, w // p
    x = x.reshape(c, gh // m, m, p, gw // m, m, p)           # (C, gh/m, m, p, gw/m, m, p)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)                     # (gh/m, gw/m, m, m, C, p, p)
    x = np.broadcast_to(x[:, :, :, :, :, None], x.shape[:5] + (tp,) + x.shape[5:])  # (.., C, Tp, p, p)
    return x.reshape(gh * gw, c * tp * p * p)                # (gh*gw, C*Tp*p*p)


def preprocess_image(image, config: ImageProcessorConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One image (PIL or path) -> (patch rows (gh*gw, C*Tp*p*p) float32, grid (1, gh, gw)).
    x = (u8 * rescale_factor - mean) / std: the rescale in float64, cast to float32, then normalised in float32."""
    rgb = to_rgb(load_image(image))
    factor = config.patch_size * config.merge_size
    new_h, new_w = smart_resize(rgb.height, rgb.width, factor, config.min_pixels, config.max_pixels)
    resized = rgb.resize((new_w, new_h), resample=config.resample)  # PIL takes (width, height); uint8 in and out
    u8 = np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)  # (3, h', w')
    x = (u8.astype(np.float64) * config.rescale_factor).astype(np.float32)
    mean, std = (np.asarray(v, dtype=np.float32)[:, None, None] for v in (config.image_mean, config.image_std))
    rows = patchify((x - mean) / std, config.patch_size, config.merge_size, config.temporal_patch_size)
    return rows, (1, new_h // config.patch_size, new_w // config.patch_size)


def preprocess_images(images: list, config: ImageProcessorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Images -> pixel_values (sum of gh*gw, C*Tp*p*p) float32, rows in image order; image_grid_thw (n, 3) long."""
    if len(images) == 0:
        raise ValueError("preprocess_images needs at least one image")
    rows, grids = zip(*(preprocess_image(im, config) for im in images))
    pixel_values = torch.from_numpy(np.ascontiguousarray(np.concatenate(rows, axis=0)))
    return pixel_values, torch.tensor(grids, dtype=torch.long)


# ----------------------------------------------------------------------------------------- chat template

def apply_chat_template(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Render a conversation exactly as the Qwen3-VL Instruct chat template does (ChatML, no default system prompt):

        [<|im_start|>system\\n{system}<|im_end|>\\n]
        <|im_start|>{role}\\n{content}<|im_end|>\\n   ...for each user / assistant message
        [<|im_start|>assistant\\n]                    ...if add_generation_prompt

    A content is a str or a list of items joined with nothing between them. Image items (user turns only) become
    IMAGE_PLACEHOLDER (the reference's `add_vision_id` "Picture k: " prefix is not supported).
    """
    if not isinstance(messages, (list, tuple)) or len(messages) == 0:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg or msg.get("tool_calls"):
            raise ValueError(f"message {i} must be a dict with 'role' and 'content' and no tool calls, got {msg!r}")
        role, content = msg["role"], msg["content"]
        if role not in ("system", "user", "assistant") or (role == "system" and i != 0):
            raise ValueError(f"message {i}: unsupported role {role!r} (user, assistant, and system as the first only)")
        items = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise ValueError(f"message {i}: content must be a str or a list of dict items, got {content!r}")
        out.append(f"{IM_START}{role}\n")
        for item in items:
            # The template tests for an image first: {"type": "image"}, or any item with an image key.
            if item.get("type") == "image" or "image" in item or "image_url" in item:
                if role != "user":
                    raise ValueError(f"image items are only supported in user messages (got one in a {role} message)")
                out.append(IMAGE_PLACEHOLDER)
            elif item.get("type") == "video" or "video" in item or not isinstance(item.get("text"), str):
                raise ValueError(f"unsupported {role} content item {item!r} (supported: images, text as "
                                 "{'type': 'text', 'text': str}; no videos)")
            else:
                out.append(item["text"])
        out.append(f"{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return "".join(out)


# A jinja transcription of `apply_chat_template` above (same supported subset, no tools/videos), written by
# save_pretrained when no template was loaded, so the reference AutoProcessor renders the same strings.
SUBSET_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'system' or message.role == 'assistant' -%}{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{%- if message.content is string -%}{{- message.content -}}{%- else -%}{%- for item in message.content -%}"
    "{%- if 'text' in item -%}{{- item.text -}}{%- endif -%}{%- endfor -%}{%- endif -%}{{- '<|im_end|>\\n' -}}"
    "{%- elif message.role == 'user' -%}{{- '<|im_start|>user\\n' -}}"
    "{%- if message.content is string -%}{{- message.content -}}{%- else -%}{%- for item in message.content -%}"
    "{%- if item.type == 'image' or 'image' in item or 'image_url' in item -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}{%- elif 'text' in item -%}{{- item.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{- '<|im_end|>\\n' -}}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


# ----------------------------------------------------------------------------------------- processor

def _read_json(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


class Processor:
    """Tokenizer + image processor + chat template of a Qwen3-VL checkpoint. `pad_token_id` is <|endoftext|>,
    `eos_token_ids` [<|im_end|>, <|endoftext|>]; `chat_template` is the checkpoint's text, recorded, not executed."""

    def __init__(self, tokenizer: Tokenizer, image_config: ImageProcessorConfig | None = None,
                 chat_template: str | None = None, preprocessor_dict: dict | None = None,
                 tokenizer_config: dict | None = None, video_config: dict | None = None):
        missing = [t for t in REQUIRED_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the Qwen special tokens {missing}")
        tokenizer.no_padding()  # batches are padded here, never by the tokenizer, and nothing is truncated
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.image_config = image_config or ImageProcessorConfig()
        self.chat_template = chat_template
        # The loaded files, only written back by save_pretrained (the video config is never read: no video).
        self._preprocessor_dict = dict(preprocessor_dict or {})
        self._tokenizer_config = dict(tokenizer_config) if tokenizer_config else None
        self._video_config = video_config
        tid = tokenizer.token_to_id
        self.pad_token_id, self.eos_token_ids = tid(ENDOFTEXT), [tid(IM_END), tid(ENDOFTEXT)]
        self.image_token_id, self.video_token_id = tid(IMAGE_PAD), tid(VIDEO_PAD)
        self.vision_start_token_id, self.vision_end_token_id = tid(VISION_START), tid(VISION_END)

    @classmethod
    def from_pretrained(cls, path: str) -> "Processor":
        """Load tokenizer.json and the image processor's settings from a checkpoint folder, in either layout:

            transformers 4.x: preprocessor_config.json (+ video_preprocessor_config.json, chat_template.json)
            transformers 5:   processor_config.json {"image_processor": {...}, "video_processor": {...}, ...}
                              (+ chat_template.jinja)

        As in transformers 5, a nested "image_processor" wins over preprocessor_config.json. The chat template
        (chat_template.jinja, else chat_template.json, else tokenizer_config.json), tokenizer_config.json and the
        video settings are only recorded."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"processor folder not found: {path}")
        files = {n: os.path.join(path, n) for n in os.listdir(path) if os.path.isfile(os.path.join(path, n))}
        if "tokenizer.json" not in files:
            raise FileNotFoundError(f"missing tokenizer.json in {path}")
        try:
            tokenizer = Tokenizer.from_file(files["tokenizer.json"])
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise ValueError(f"cannot load {files['tokenizer.json']}: {e}") from e
        nested = _read_json(files.get("processor_config.json")) or {}
        pre = nested.get("image_processor") or _read_json(files.get("preprocessor_config.json"))
        if not isinstance(pre, dict):
            raise FileNotFoundError(f"no image processor settings in {path}: missing preprocessor_config.json "
                                    "(transformers 4) and processor_config.json with an \"image_processor\" entry "
                                    "(transformers 5)")
        video = _read_json(files.get("video_preprocessor_config.json")) or nested.get("video_processor")
        template = None
        if "chat_template.jinja" in files:
            with open(files["chat_template.jinja"], encoding="utf-8") as f:
                template = f.read()
        elif "chat_template.json" in files:
            template = _read_json(files["chat_template.json"]).get("chat_template")
        tok_cfg = _read_json(files.get("tokenizer_config.json"))
        if template is None and tok_cfg is not None:
            template = tok_cfg.get("chat_template")
        if template is not None and "<think>" in template:
            warnings.warn(f"{path} ships a thinking-style chat template; apply_chat_template renders the Instruct "
                          "format (no <think> block)")
        return cls(tokenizer, ImageProcessorConfig.from_dict(pre), template, pre, tok_cfg, video)

    def save_pretrained(self, path: str) -> None:
        """Write tokenizer.json, preprocessor_config.json (from `image_config`), and as loaded, else Qwen defaults,
        tokenizer_config.json, chat_template.json (`SUBSET_CHAT_TEMPLATE`), video_preprocessor_config.json (never
        read here, but the reference `AutoProcessor` refuses a folder without one)."""
        os.makedirs(path, exist_ok=True)
        self.tokenizer.save(os.path.join(path, "tokenizer.json"))
        pre = {k: v for k, v in self._preprocessor_dict.items() if k not in ("min_pixels", "max_pixels")}  # in `size`
        pre.update(self.image_config.to_dict())
        pre.setdefault("image_processor_type", "Qwen2VLImageProcessor")
        pre.setdefault("processor_class", "Qwen3VLProcessor")
        tok_cfg = self._tokenizer_config or {
            "tokenizer_class": "Qwen2Tokenizer", "processor_class": "Qwen3VLProcessor", "bos_token": None,
            "eos_token": IM_END, "pad_token": ENDOFTEXT, "unk_token": None, "errors": "replace",
            "add_prefix_space": False, "clean_up_tokenization_spaces": False, "split_special_tokens": False,
            "model_max_length": 262144}
        tok_cfg = {k: v for k, v in tok_cfg.items() if k != "chat_template"}  # kept in chat_template.json only
        c = self.image_config
        video = self._video_config or {
            "video_processor_type": "Qwen3VLVideoProcessor", "processor_class": "Qwen3VLProcessor",
            "patch_size": c.patch_size, "temporal_patch_size": c.temporal_patch_size, "merge_size": c.merge_size,
            "image_mean": list(c.image_mean), "image_std": list(c.image_std),
            "size": {"shortest_edge": 4096, "longest_edge": 25165824}}
        for name, obj in (("preprocessor_config.json", pre), ("tokenizer_config.json", tok_cfg),
                          ("chat_template.json", {"chat_template": self.chat_template or SUBSET_CHAT_TEMPLATE}),
                          ("video_preprocessor_config.json", video)):
            with open(os.path.join(path, name), "w", encoding="utf-8") as f:
                f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")

    apply_chat_template = staticmethod(apply_chat_template)  # the module-level function above

    def _encode_prompts(self, text, images) -> tuple[list[list[int]], torch.Tensor | None, torch.Tensor | None]:
        """Expand image placeholders and tokenize; returns per-row ids (unpadded), pixel_values, grids."""
        text = [text] if isinstance(text, str) else text
        if not isinstance(text, (list, tuple)) or len(text) == 0 or not all(isinstance(t, str) for t in text):
            raise ValueError("text must be a non-empty list of str")
        if not isinstance(images, (list, tuple)):
            images = [] if images is None else [images]
        # One level of nesting (a list of images per sample) is flattened; order stays placeholder order.
        images = [im for x in images for im in (x if isinstance(x, (list, tuple)) else [x])]
        n_slots = sum(t.count(IMAGE_PAD) for t in text)
        if n_slots != len(images):
            raise ValueError(f"the text has {n_slots} {IMAGE_PAD} placeholders but {len(images)} images were given")
        pixel_values = grids = None
        if images:
            pixel_values, grids = preprocess_images(images, self.image_config)
            counts = iter((grids.prod(dim=1) // self.image_config.merge_size ** 2).tolist())  # t*gh*gw/m^2 each
            text = ["".join(piece if j == 0 else IMAGE_PAD * next(counts) + piece
                            for j, piece in enumerate(t.split(IMAGE_PAD))) for t in text]
        # add_special_tokens=True as the reference tokenizer call does; Qwen's tokenizer adds no BOS/EOS.
        ids = [e.ids for e in self.tokenizer.encode_batch(list(text), add_special_tokens=True)]
        return ids, pixel_values, grids

    def _left_pad(self, rows: list[list[int]], labels: list[list[int]] | None = None) -> dict:
        """Left-pad rows to the longest with pad_token_id; attention_mask 1 on real tokens, labels -100 on pads."""
        length = max(len(r) for r in rows)
        pads = [length - len(r) for r in rows]
        out = {"input_ids": torch.tensor([[self.pad_token_id] * n + r for n, r in zip(pads, rows)], dtype=torch.long),
               "attention_mask": torch.tensor([[0] * n + [1] * len(r) for n, r in zip(pads, rows)], dtype=torch.long)}
        if labels is not None:
            out["labels"] = torch.tensor([[IGNORE_INDEX] * n + lab for n, lab in zip(pads, labels)], dtype=torch.long)
        return out

    def __call__(self, text, images=None) -> dict:
        """Rendered prompts and their images (consumed in placeholder order across the batch) -> input_ids (B, L),
        attention_mask (B, L) (left padding), pixel_values (N, C*Tp*p*p) float32 or None, image_grid_thw (n, 3)."""
        ids, pixel_values, grids = self._encode_prompts(text, images)
        return {**self._left_pad(ids), "pixel_values": pixel_values, "image_grid_thw": grids}

    def encode_sft(self, prompts: list[str], answers: list[str], images=None) -> dict:
        """prompt + answer + <|im_end|> rows, left-padded, with `labels` = -100 on prompt and pad positions.
        The prompt is tokenized as `__call__` does (the ids generation sees), answer + <|im_end|> separately. For
        answers not starting with a newline this equals tokenizing the joined string (the prompt ends in one)."""
        prompts = [prompts] if isinstance(prompts, str) else prompts
        answers = [answers] if isinstance(answers, str) else answers
        if len(prompts) != len(answers) or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"encode_sft needs one str answer per prompt, got {len(prompts)} prompts and "
                             f"{len(answers)} answers")
        prompt_ids, pixel_values, grids = self._encode_prompts(prompts, images)
        answer_ids = [e.ids for e in self.tokenizer.encode_batch([a + IM_END for a in answers],
                                                                  add_special_tokens=False)]
        rows = [p + a for p, a in zip(prompt_ids, answer_ids)]
        labels = [[IGNORE_INDEX] * len(p) + a for p, a in zip(prompt_ids, answer_ids)]
        return {**self._left_pad(rows, labels), "pixel_values": pixel_values, "image_grid_thw": grids}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Token ids (list or 1-D tensor) -> text; with skip_special_tokens, pads and all special tokens vanish."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode expects a 1-D sequence of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, ids, skip_special_tokens: bool = True) -> list[str]:
        """Rows of ids (list of lists or a 2-D tensor) -> texts."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 2:
                raise ValueError(f"batch_decode expects a 2-D batch of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        return self.tokenizer.decode_batch([[int(t) for t in r] for r in ids], skip_special_tokens=skip_special_tokens)
