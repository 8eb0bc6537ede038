"""Qwen3-VL glue (docs/QWEN3VL.md, "Glue"; "Checkpoint and config").

    pixel_values --VisionModel--> image rows (N/4, D) + DeepStack rows K x (N/4, D)
    input_ids --embed--> E;  E[image placeholders] = image rows
    3-D positions (T, H, W) over the real tokens (attention_mask == 1)
    TextModel(E, positions, DeepStack on visual positions) -> lm_head -> logits

Also a KV-cached `generate` (loop in generate.py) and checkpoint I/O whose tensor names are exactly the module
paths (`model.visual.*`, `model.language_model.*`, `lm_head.weight`), so files round-trip with the reference.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from . import generate as generation
from .text import KVCache, TextConfig, TextModel
from .vision import VisionConfig, VisionModel

META_INIT_PARAMS = 50_000_000  # from_pretrained builds models above this size on the meta device
TOP_LEVEL_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                  "tie_word_embeddings")  # config.json keys outside text_config / vision_config
SUPPORTED = ("the dense Qwen3-VL (config.json model_type 'qwen3_vl', architectures "
             "['Qwen3VLForConditionalGeneration']: 2B, 4B, 8B, 32B, Instruct or Thinking)")


def check_supported(d: dict, source) -> None:
    """Refuse, from config.json alone (before any tensor is read), a model this code does not implement: a
    Mixture-of-Experts Qwen3-VL (model_type 'qwen3_vl_moe', e.g. 30B-A3B, 235B-A22B) or any other model."""
    model_type, architectures = d.get("model_type"), d.get("architectures") or []
    text = d.get("text_config") if isinstance(d.get("text_config"), dict) else {}
    if model_type == "qwen3_vl_moe" or any("Moe" in a for a in architectures) or text.get("num_experts"):
        raise ValueError(f"{source}: a Mixture-of-Experts Qwen3-VL (model_type {model_type!r}, architectures "
                         f"{architectures}) is not supported; asru_min implements {SUPPORTED}")
    if model_type != "qwen3_vl" or any(a != "Qwen3VLForConditionalGeneration" for a in architectures):
        raise ValueError(f"{source}: model_type {model_type!r}, architectures {architectures} is not supported; "
                         f"asru_min implements {SUPPORTED}")


def _fields(cls, d: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class Qwen3VLConfig:
    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tie_word_embeddings: bool = False  # read at the top level of config.json
    dtype: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "Qwen3VLConfig":
        """Parse config.json. Accepts the legacy layout (text_config.rope_scaling + text_config.rope_theta,
        as in the released checkpoints), the transformers v5 layout (text_config.rope_parameters) and both side
        by side (as `to_dict` writes them), where rope_scaling wins as in transformers 4.57 and 5."""
        t = dict(d.get("text_config") or {})
        rope = t.get("rope_scaling") or t.get("rope_parameters") or {}
        t["rope_theta"] = rope.get("rope_theta", t.get("rope_theta", 500000.0))  # reference class default 5e5
        t["mrope_section"] = list(rope.get("mrope_section", [24, 20, 20]))
        t["mrope_interleaved"] = rope.get("mrope_interleaved", True)
        if t.get("eos_token_id") is None and d.get("eos_token_id") is not None:
            t["eos_token_id"] = d["eos_token_id"]
        if t.get("num_key_value_heads") is None and "num_attention_heads" in t:
            t["num_key_value_heads"] = t["num_attention_heads"]
        v = dict(d.get("vision_config") or {})
        v.setdefault("num_heads", v.get("num_attention_heads", VisionConfig.num_heads))
        v.setdefault("depth", v.get("num_hidden_layers", VisionConfig.depth))
        if isinstance(v.get("rope_parameters"), dict) and "rope_theta" in v["rope_parameters"]:
            v["rope_theta"] = v["rope_parameters"]["rope_theta"]
        if "deepstack_visual_indexes" in v:
            v["deepstack_visual_indexes"] = list(v["deepstack_visual_indexes"])
        top = {k: d[k] for k in TOP_LEVEL_KEYS if k in d}
        if "tie_word_embeddings" not in top and "tie_word_embeddings" in t:  # a file with 4.57's text_config flag only
            top["tie_word_embeddings"] = t["tie_word_embeddings"]
        dtype = d.get("dtype") or d.get("torch_dtype") or t.get("dtype") or t.get("torch_dtype")
        return cls(text=TextConfig(**_fields(TextConfig, t)), vision=VisionConfig(**_fields(VisionConfig, v)),
                   dtype=dtype, **top)

    def to_dict(self) -> dict:
        """A config.json that transformers 4.57 and 5 read alike (tests/fixtures/checkpoint_readers.json records
        which keys each one takes): the text rope in both layouts, v5's `rope_parameters` and beside it 4.57's
        `rope_theta` + `rope_scaling` (4.57 reads only those; 5 lets `rope_scaling` replace `rope_parameters`),
        and `tie_word_embeddings` at the top level (read by 5) and in text_config (read by 4.57)."""
        t = dataclasses.asdict(self.text)
        theta, section, interleaved = t.pop("rope_theta"), t.pop("mrope_section"), t.pop("mrope_interleaved")
        t["rope_parameters"] = {"rope_type": "default", "rope_theta": theta, "mrope_section": section,
                                "mrope_interleaved": interleaved}
        t["rope_theta"] = theta
        t["rope_scaling"] = {"rope_type": "default", "mrope_section": list(section), "mrope_interleaved": interleaved}
        t["tie_word_embeddings"] = self.tie_word_embeddings  # 4.57 ties by text_config's flag, 5 by the top level
        t["model_type"] = "qwen3_vl_text"
        v = dataclasses.asdict(self.vision)
        v["rope_parameters"] = {"rope_type": "axial", "rope_theta": v.pop("rope_theta")}
        v.pop("layer_norm_eps")  # hard-coded 1e-6 in the reference, not a config field
        v["model_type"] = "qwen3_vl_vision"
        out = {"architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
               **{k: getattr(self, k) for k in TOP_LEVEL_KEYS}, "text_config": t, "vision_config": v}
        if self.dtype is not None:
            out["dtype"] = self.dtype
        return out

    @classmethod
    def from_pretrained(cls, path) -> "Qwen3VLConfig":
        """The config.json of a checkpoint folder, refused unless it is a model this code implements
        (`check_supported`); reads no weights."""
        cfg_file = Path(path) / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"config.json not found in {path}")
        try:
            d = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_file} is not valid JSON: {e}") from e
        check_supported(d, cfg_file)
        return cls.from_dict(d)

    @property
    def special_token_ids(self) -> list[int]:
        """Token ids the model itself emits or looks for: image / video placeholders, vision start / end, EOS."""
        return [self.image_token_id, self.video_token_id, self.vision_start_token_id, self.vision_end_token_id,
                *self.eos_token_ids]

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.text.eos_token_id
        return [] if e is None else [e] if isinstance(e, int) else list(e)


def rope_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_grid_thw: torch.Tensor | None,
                   image_token_id: int, merge: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (3, B, L) and rope deltas (B,): the reference's get_rope_index, vectorised; pads anywhere.
    Over the real tokens of a row (pads skipped), with a running `cur`:
      text token:                    (cur, cur, cur), cur += 1
      image run, merged grid H'xW':  token (i, j) in raster order -> (cur, cur+i, cur+j); cur += max(H', W')
    i.e. position = base + offset, base = #real text tokens before + sum of max(H', W') of earlier image runs.
    Pads get 0.  delta = max(position) + 1 - #real tokens (a decoded token s gets s + delta).
    Images are consumed in row-major order of their placeholder runs across the batch."""
    B, L = input_ids.shape
    dev, real = input_ids.device, attention_mask.bool()
    is_img = (input_ids == image_token_id) & real
    is_text = (real & ~is_img).long()
    # an image run starts where the previous *real* token (pads skipped) is not an image token
    idx = torch.arange(L, device=dev).expand(B, L)
    last_real = torch.where(real, idx, -1).cummax(dim=1).values  # (B, L) last real index <= l
    prev_real = torch.cat([torch.full((B, 1), -1, device=dev, dtype=torch.long), last_real[:, :-1]], dim=1)
    prev_is_img = torch.where(prev_real >= 0, is_img.gather(1, prev_real.clamp(min=0)), False)
    run_start = is_img & ~prev_is_img
    n_runs = int(run_start.sum())
    n_grids = 0 if image_grid_thw is None else image_grid_thw.shape[0]
    if n_runs != n_grids:
        raise ValueError(f"found {n_runs} runs of image placeholder tokens but {n_grids} image grids")

    base = is_text.cumsum(1) - is_text  # exclusive count of real text tokens
    pos = base.expand(3, B, L)
    if n_runs:
        grid = image_grid_thw.to(dev).long()
        t, hm, wm = grid[:, 0], grid[:, 1] // merge, grid[:, 2] // merge
        extent = torch.maximum(hm, wm)  # cur advances by max(H', W') after a run
        run_id = (run_start.flatten().long().cumsum(0) - 1).view(B, L).clamp(min=0)  # run of each image token
        sizes = torch.bincount(run_id[is_img], minlength=n_runs)
        if not torch.equal(sizes, t * hm * wm):
            raise ValueError(f"image placeholder runs have lengths {sizes.tolist()} but the grids need "
                             f"{(t * hm * wm).tolist()}")
        ext_at_start = torch.zeros(B, L, dtype=torch.long, device=dev)
        ext_at_start[run_start] = extent
        ext_before = ext_at_start.cumsum(1) - torch.where(is_img, extent[run_id], 0)  # earlier runs only
        base = base + ext_before
        img_excl = is_img.long().cumsum(1) - is_img.long()
        k = img_excl - img_excl[run_start][run_id]  # index of the token inside its run
        hw = (hm * wm)[run_id]
        off_t = torch.where(is_img, k // hw, 0)
        off_h = torch.where(is_img, (k // wm[run_id]) % hm[run_id], 0)
        off_w = torch.where(is_img, k % wm[run_id], 0)
        pos = torch.stack([base + off_t, base + off_h, base + off_w])
    pos = torch.where(real, pos, 0)
    n_real = real.long().sum(1)
    deltas = torch.where(n_real > 0, pos.amax(dim=(0, 2)) + 1 - n_real, 0)
    return pos, deltas


def attention_mask_4d(real_keys: torch.Tensor, q_len: int, past: int) -> torch.Tensor:
    """(B, 1, q_len, past+q_len) bool: query i (absolute past+i) sees key j iff j <= past+i and key j is real.
    Every query also sees itself, so a pad query never has an empty softmax row (its output is unused)."""
    S = past + q_len
    qi = torch.arange(past, S, device=real_keys.device)[:, None]
    kj = torch.arange(S, device=real_keys.device)[None, :]
    return ((kj <= qi) & real_keys[:, None, None, :S]) | (kj == qi)  # (causal & real key) | itself


def checkpoint_shapes(cfg: Qwen3VLConfig) -> dict[str, tuple]:
    """Every tensor of a checkpoint and its shape; equals the module paths of `Qwen3VL`."""
    v, t, p = cfg.vision, cfg.text, cfg.vision.patch_size
    Dv, I, D4 = v.hidden_size, v.intermediate_size, v.hidden_size * v.spatial_merge_size**2
    out = {"model.visual.patch_embed.proj.weight": (Dv, v.in_channels, v.temporal_patch_size, p, p),
           "model.visual.patch_embed.proj.bias": (Dv,),
           "model.visual.pos_embed.weight": (v.num_position_embeddings, Dv)}
    for i in range(v.depth):
        b = f"model.visual.blocks.{i}."
        out.update({b + "norm1.weight": (Dv,), b + "norm1.bias": (Dv,), b + "norm2.weight": (Dv,),
                    b + "norm2.bias": (Dv,), b + "attn.qkv.weight": (3 * Dv, Dv), b + "attn.qkv.bias": (3 * Dv,),
                    b + "attn.proj.weight": (Dv, Dv), b + "attn.proj.bias": (Dv,),
                    b + "mlp.linear_fc1.weight": (I, Dv), b + "mlp.linear_fc1.bias": (I,),
                    b + "mlp.linear_fc2.weight": (Dv, I), b + "mlp.linear_fc2.bias": (Dv,)})
    mergers = ["model.visual.merger."] + [f"model.visual.deepstack_merger_list.{k}."
                                          for k in range(len(v.deepstack_visual_indexes))]
    for j, b in enumerate(mergers):
        norm = Dv if j == 0 else D4  # main merger normalises each patch, DeepStack ones the concatenation
        out.update({b + "norm.weight": (norm,), b + "norm.bias": (norm,), b + "linear_fc1.weight": (D4, D4),
                    b + "linear_fc1.bias": (D4,), b + "linear_fc2.weight": (v.out_hidden_size, D4),
                    b + "linear_fc2.bias": (v.out_hidden_size,)})
    D, q, kv = t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    out["model.language_model.embed_tokens.weight"] = (t.vocab_size, D)
    for i in range(t.num_hidden_layers):
        b = f"model.language_model.layers.{i}."
        out.update({b + "input_layernorm.weight": (D,), b + "self_attn.q_proj.weight": (q, D),
                    b + "self_attn.k_proj.weight": (kv, D), b + "self_attn.v_proj.weight": (kv, D),
                    b + "self_attn.o_proj.weight": (D, q), b + "self_attn.q_norm.weight": (t.head_dim,),
                    b + "self_attn.k_norm.weight": (t.head_dim,), b + "post_attention_layernorm.weight": (D,),
                    b + "mlp.gate_proj.weight": (t.intermediate_size, D),
                    b + "mlp.up_proj.weight": (t.intermediate_size, D),
                    b + "mlp.down_proj.weight": (D, t.intermediate_size)})
    out["model.language_model.norm.weight"] = (D,)
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = (t.vocab_size, D)
    return out


def resized_vocabulary(config: Qwen3VLConfig, tensors: dict, path) -> Qwen3VLConfig:
    """The config with vocab_size = the rows of the checkpoint's embed_tokens (V').

    Fine-tuning that adds or drops tokens (transformers' resize_token_embeddings, e.g. 151,936 -> 151,669 rows,
    the tokenizer's size) leaves embed_tokens and lm_head with V' rows; transformers also writes V' into
    text_config.vocab_size, other tools may keep the old V. The tensors decide, provided they agree with each other
    (an untied lm_head has V' rows too) and every special token id of the config is one of the V' rows."""
    embed = tensors.get("model.language_model.embed_tokens.weight")
    if embed is None or embed.dim() != 2:
        return config  # reported with the other missing / mis-shaped tensors
    rows, head = embed.shape[0], tensors.get("lm_head.weight")
    if not config.tie_word_embeddings and head is not None and head.shape[0] != rows:
        raise ValueError(f"checkpoint {path}: embed_tokens has {rows} rows but lm_head.weight has "
                         f"{head.shape[0]}; a resized vocabulary must resize both")
    if rows == config.text.vocab_size:
        return config
    outside = [i for i in config.special_token_ids if i >= rows]
    if outside:
        raise ValueError(f"checkpoint {path}: config.json's special token ids {outside} have no row in "
                         f"embed_tokens ({rows} rows; config vocab_size {config.text.vocab_size}): the config and "
                         "the tensors come from different models")
    warnings.warn(f"{path}: config.json says vocab_size {config.text.vocab_size}, the checkpoint's embeddings have "
                  f"{rows} rows (a vocabulary resized by fine-tuning); using {rows}")
    return dataclasses.replace(config, text=dataclasses.replace(config.text, vocab_size=rows))


class Qwen3VLModel(nn.Module):
    """Container so that attribute paths equal checkpoint keys: model.visual.*, model.language_model.*."""

    def __init__(self, cfg: Qwen3VLConfig):
        super().__init__()
        self.visual = VisionModel(cfg.vision)
        self.language_model = TextModel(cfg.text)


class Qwen3VL(nn.Module):
    def __init__(self, config: Qwen3VLConfig):
        super().__init__()
        self.config = config
        self.model = Qwen3VLModel(config)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.language_model.embed_tokens.weight

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def num_parameters(self) -> int:
        """Unique parameter count (a tied head counts once)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def encode_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor):
        """-> (image_embeds (N/4, D), DeepStack features: list of K x (N/4, D)); rows in image order."""
        return self.model.visual(pixel_values.to(self.dtype), image_grid_thw)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, image_grid_thw: torch.Tensor | None = None,
                image_features=None, cache: KVCache | None = None, logits_to_keep: int = 0,
                return_hidden: bool = False) -> torch.Tensor:
        """Logits (B, L, V) (or the last `logits_to_keep` positions). return_hidden: the final-normed hidden states
        (B, L, D) instead, which `lm_head` maps to the logits (optim.token_logprobs does that chunk by chunk).
        attention_mask (B, L): 1 real, 0 pad, pads anywhere. With a cache, it covers the new input_ids only
        (a mask over cache.pos + L columns is also accepted; its last L columns are used).
        The first call on an empty cache is the prefill (3-D positions, rope deltas stored in the cache);
        later calls are decode steps: a real token with s real tokens before it gets position s + delta."""
        cfg, L = self.config, input_ids.shape[1]
        past = 0 if cache is None else cache.pos
        if past + L > cfg.text.max_position_embeddings:
            raise ValueError(f"sequence length {past + L} exceeds max_position_embeddings "
                             f"{cfg.text.max_position_embeddings}")
        if cache is not None and past + L > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions, need {past + L}")
        if attention_mask is not None and attention_mask.shape[1] == past + L and past > 0:
            attention_mask = attention_mask[:, past:]
        all_real = attention_mask is None or bool(attention_mask.all())
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()

        emb = self.model.language_model.embed_tokens(input_ids)  # (B, L, D)
        visual_pos_mask, deepstack = None, None
        if pixel_values is not None and image_features is None:
            if image_grid_thw is None:
                raise ValueError("pixel_values given without image_grid_thw")
            image_features = self.encode_images(pixel_values, image_grid_thw)
        if image_features is not None or past == 0:  # decode steps never hold images: skip the count
            img_mask = input_ids == cfg.image_token_id
            n_placeholders = int(img_mask.sum())
            if image_features is not None:
                embeds, deepstack = image_features
                if image_grid_thw is None:
                    raise ValueError("image_features need image_grid_thw for the 3-D positions")
                n_grid = int(torch.as_tensor(image_grid_thw).prod(-1).sum()) // cfg.vision.spatial_merge_size ** 2
                if not (n_placeholders == embeds.shape[0] == n_grid):
                    raise ValueError(f"{n_placeholders} image placeholder tokens in input_ids, but the images give "
                                     f"{embeds.shape[0]} feature rows (image_grid_thw implies {n_grid})")
                if past > 0:
                    raise ValueError("images must be in the first (prefill) call of a cached forward")
                emb = emb.index_put(img_mask.nonzero(as_tuple=True), embeds.to(emb.dtype))  # row-major (masked_scatter)
                visual_pos_mask = img_mask
            elif n_placeholders:
                raise ValueError(f"input_ids contain {n_placeholders} image placeholder tokens but no images "
                                 f"were given")

        if past == 0:
            grid = None if image_features is None else torch.as_tensor(image_grid_thw)
            pos, deltas = rope_positions(input_ids, real, grid, cfg.image_token_id, cfg.vision.spatial_merge_size)
            if cache is not None:
                cache.rope_deltas, cache.seen = deltas, real.long().sum(1)
        else:  # text tokens after the prefill: T = H = W = (real tokens before it) + delta, as (B, L)
            pos = torch.where(real, cache.seen[:, None] + real.long().cumsum(1) - 1 + cache.rope_deltas[:, None], 0)
            cache.seen = cache.seen + real.long().sum(1)
        mask = None  # plain causal, or one decode query with no pad keys: it sees every key
        if cache is not None:
            cache.key_mask[:, past:past + L] = real
            cache.has_pad = cache.has_pad or not all_real
            if L > 1 or cache.has_pad:
                mask = attention_mask_4d(cache.key_mask, L, past)
        elif not all_real:
            mask = attention_mask_4d(real, L, 0)

        h = self.model.language_model(emb, pos, mask, cache, visual_pos_mask, deepstack)
        if logits_to_keep > 0:
            # contiguous: on a strided (B, k, D) view, F.linear runs a batched matmul that copies W_lm B times
            # ((B, V, D): 4.6 GiB for 8 prompts of the 2B model on a CPU)
            h = h[:, -logits_to_keep:].contiguous()
        return h if return_hidden else self.lm_head(h)

    generate = generation.generate  # model.generate(input_ids, ...): the KV-cached sampling loop in generate.py

    def checkpoint_keys(self) -> dict[str, tuple]:
        """{checkpoint key: shape} for this config; a tied model has no lm_head.weight.
        Built from the config, not from state_dict(), so parameters attached later (e.g. LoRA) never count."""
        return checkpoint_shapes(self.config)

    def save_pretrained(self, path) -> None:
        """Write config.json + model.safetensors with exactly the checkpoint keys."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        sd, keys = self.state_dict(), self.checkpoint_keys()
        missing = [k for k in keys if k not in sd]
        if missing:
            raise ValueError(f"cannot save: the model has no tensors for {missing[:10]}")
        tensors = {k: sd[k].detach().contiguous().cpu() for k in keys}
        cfg = dataclasses.replace(self.config, dtype=str(self.dtype).replace("torch.", ""))
        (path / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | None = None, device=None) -> "Qwen3VL":
        """Load config.json and model.safetensors (or a sharded model.safetensors.index.json).
        dtype None keeps the stored dtype. The model comes in eval mode (no dropout), the mode it keeps outside the
        blocks that train it (`optim.train_mode`). Raises FileNotFoundError for a missing folder/file, ValueError
        for a corrupt file, and one ValueError naming every missing, unexpected and mis-shaped tensor."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {path}")
        config = Qwen3VLConfig.from_pretrained(path)  # refuses MoE / other models before reading any tensor
        index, files = path / "model.safetensors.index.json", [path / "model.safetensors"]
        if index.is_file():  # sharded
            files = [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"weights file not found: {f}")
        tensors = {}
        for f in files:
            try:
                with safe_open(str(f), framework="pt", device="cpu") as sf:
                    tensors.update({k: sf.get_tensor(k) for k in sf.keys()})
            except Exception as e:  # safetensors raises its own error type for bad headers / truncated data
                raise ValueError(f"cannot read safetensors file {f} (truncated or corrupt?): {e}") from e

        config = resized_vocabulary(config, tensors, path)
        expected = checkpoint_shapes(config)
        # A large model is built on the meta device (no random init, no memory) and the loaded tensors are
        # assigned in place; a small one is simply built on the CPU (the meta path has a one-off import cost).
        if sum(math.prod(s) for s in expected.values()) > META_INIT_PARAMS:
            with torch.device("meta"):
                model = cls(config)
        else:
            model = cls(config)
        if config.tie_word_embeddings:
            tensors.pop("lm_head.weight", None)  # tied: the head is embed_tokens
        elif "lm_head.weight" not in tensors and "model.language_model.embed_tokens.weight" in tensors:
            tensors["lm_head.weight"] = tensors["model.language_model.embed_tokens.weight"].clone()
        missing = sorted(k for k in expected if k not in tensors)
        unexpected = sorted(k for k in tensors if k not in expected)
        misshaped = sorted(f"{k}: file {tuple(tensors[k].shape)} vs model {expected[k]}"
                           for k in expected if k in tensors and tuple(tensors[k].shape) != expected[k])
        if missing or unexpected or misshaped:
            raise ValueError(f"checkpoint {path} does not match the config:\n  missing: {missing}\n"
                             f"  unexpected: {unexpected}\n  mis-shaped: {misshaped}")
        if dtype is not None:
            tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        model.load_state_dict(tensors, strict=False, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.language_model.embed_tokens.weight
        if device is not None:
            model.to(device)
        return model.eval()
