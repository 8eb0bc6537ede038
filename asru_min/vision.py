"""Qwen3-VL vision encoder (docs/QWEN3VL.md, "Vision encoder").

pixel_values (N, C*Tp*p*p) in m x m *block order*, grid_thw (n_images, 3)
  -> patch embedding (Conv3d == one matmul) + learned position table, bilinearly resampled per image
  -> depth x [LayerNorm -> attention with 2-D RoPE inside each image -> LayerNorm -> tanh-GELU MLP]
  -> merger (norm each patch, concat 4 patches, MLP)                -> image embeddings (N/4, D)
  -> DeepStack mergers on chosen block outputs (concat, norm, MLP)  -> K x (N/4, D)
Rows stay in block order (4 consecutive rows are one m x m block, so merging is a reshape); module attribute
names equal the checkpoint keys under `model.visual.`.
"""

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .text import checkpointable


@dataclass
class VisionConfig:
    depth: int = 27
    hidden_size: int = 1152  # Dv
    intermediate_size: int = 4304
    num_heads: int = 16  # Hv
    in_channels: int = 3
    patch_size: int = 16  # p
    temporal_patch_size: int = 2  # Tp
    spatial_merge_size: int = 2  # m
    out_hidden_size: int = 4096  # = text hidden size D
    num_position_embeddings: int = 2304  # S*S
    deepstack_visual_indexes: list[int] = field(default_factory=lambda: [8, 16, 24])
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10000.0  # not in config.json: the reference's code default
    layer_norm_eps: float = 1e-6  # hard-coded in the reference


def block_order(h: int, w: int, m: int) -> torch.Tensor:
    """Raster index (r*w + c) of each patch listed in m x m block order (the row order of processor.patchify)."""
    idx = torch.arange(h * w).view(h // m, m, w // m, m)  # (h/m, m, w/m, m)
    return idx.permute(0, 2, 1, 3).reshape(-1)  # (h/m, w/m, m, m) flattened


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        k = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel_size=k, stride=k, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # kernel == stride == input size, so the Conv3d is X0 = P W^T + b with W viewed (Dv, C*Tp*p*p);
        # the (C, Tp, p, p) flattening of W matches the pixel column order of processor.patchify.
        w = self.proj.weight
        return F.linear(x.to(w.dtype), w.reshape(w.shape[0], -1), self.proj.bias)  # (N, Dv)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """rot([x1, x2]) = [-x2, x1] over the halves of the last axis (half-split RoPE, not adjacent pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=True)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=True)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segments: list) -> torch.Tensor:
        N, Dv = x.shape
        q, k, v = self.qkv(x).view(N, 3, self.num_heads, Dv // self.num_heads).unbind(1)  # each (N, Hv, dv)
        # 2-D RoPE in fp32, cast back; cos/sin are (N, 1, dv)
        q = (q.float() * cos + rotate_half(q.float()) * sin).to(x.dtype)
        k = (k.float() * cos + rotate_half(k.float()) * sin).to(x.dtype)
        out = torch.empty_like(q)  # (N, Hv, dv)
        # Variable-length attention: segments of equal length are stacked into one batched call, so a batch
        # of same-sized images is a single SDPA and nothing ever attends across images.
        for length, rows in segments:  # rows: (n_seg, length) indices into N
            qs, ks, vs = (t[rows].transpose(1, 2) for t in (q, k, v))  # (n_seg, Hv, length, dv)
            o = F.scaled_dot_product_attention(qs, ks, vs)  # bidirectional, scale dv^-1/2
            out[rows] = o.transpose(1, 2)  # (n_seg, length, Hv, dv)
        return self.proj(out.reshape(N, Dv))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.linear_fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=True)
        self.linear_fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x), approximate="tanh"))


class VisionBlock(nn.Module):
    """X = X + Attn(LN1(X));  X = X + fc2(GELU_tanh(fc1(LN2(X))))."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = VisionAttention(cfg)
        self.mlp = VisionMLP(cfg)

    def forward(self, x, cos, sin, segments):
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Merge each m x m block (4 consecutive rows) into one LLM token.

    merger (postshuffle=False):            Z = fc2(GELU(fc1(concat_4(LN_Dv(x)))))
    DeepStack merger (postshuffle=True):   Z = fc2(GELU(fc1(LN_4Dv(concat_4(x)))))
    GELU is the exact (erf) one here, unlike the tanh one inside the blocks."""

    def __init__(self, cfg: VisionConfig, postshuffle_norm: bool):
        super().__init__()
        self.merged = cfg.hidden_size * cfg.spatial_merge_size**2  # 4Dv
        self.postshuffle_norm = postshuffle_norm
        self.norm = nn.LayerNorm(self.merged if postshuffle_norm else cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.linear_fc1 = nn.Linear(self.merged, self.merged, bias=True)
        self.linear_fc2 = nn.Linear(self.merged, cfg.out_hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.postshuffle_norm:
            x = self.norm(x.reshape(-1, self.merged))  # (N/4, 4Dv) then norm over 4Dv
        else:
            x = self.norm(x).reshape(-1, self.merged)  # norm each patch over Dv, then (N/4, 4Dv)
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))  # (N/4, D)


class VisionModel(nn.Module):
    grad_checkpoint = False  # set by `optim.gradient_checkpointing`: blocks recomputed in backward

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Embedding(cfg.num_position_embeddings, cfg.hidden_size)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg, postshuffle_norm=False)
        self.deepstack_merger_list = nn.ModuleList(PatchMerger(cfg, postshuffle_norm=True)
                                                   for _ in cfg.deepstack_visual_indexes)

    # ----- per-image geometry: position-table resampling, rotary angles, attention segments -----

    def position_embedding(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """Bilinear align-corners resampling of the (S, S, Dv) table to each (h, w) grid, in fp32, permuted into
        block order and repeated over the t temporal slices. Returns (N, Dv) fp32."""
        S, m = int(round(self.config.num_position_embeddings**0.5)), self.config.spatial_merge_size
        table = self.pos_embed.weight.float().view(S, S, -1)  # (S, S, Dv)

        def taps(n: int):  # s(i) = i (S-1)/(n-1); i0 = floor(s), i1 = min(i0+1, S-1), delta = s - i0
            s = torch.arange(n, device=table.device, dtype=torch.float32) * (S - 1) / max(n - 1, 1)
            i0 = s.floor()
            return i0.long(), (i0.long() + 1).clamp(max=S - 1), s - i0

        per_grid, out = {}, []  # per_grid: (h, w) -> (h*w, Dv); same-sized images resample the table once
        for t, h, w in grid_thw.tolist():
            if (h, w) not in per_grid:
                (r0, r1, dr), (c0, c1, dc) = taps(h), taps(w)
                dr, dc = dr[:, None, None], dc[None, :, None]  # broadcast over (h, w, Dv)
                pe = ((1 - dr) * (1 - dc) * table[r0][:, c0] + (1 - dr) * dc * table[r0][:, c1]
                      + dr * (1 - dc) * table[r1][:, c0] + dr * dc * table[r1][:, c1])  # (h, w, Dv)
                per_grid[(h, w)] = pe.reshape(h * w, -1)[block_order(h, w, m).to(table.device)]  # (h*w, Dv) block order
            out.append(per_grid[(h, w)].repeat(t, 1))  # (t*h*w, Dv)
        return torch.cat(out)

    def rotary(self, grid_thw: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of theta = [a, a], a = [r*w_0..r*w_{dv/4-1}, c*w_0..c*w_{dv/4-1}], w_j = theta^(-2j/(dv/2))
        for every patch (row r, col c) in block order. Returns (N, 1, dv) fp32 each."""
        m, dv = self.config.spatial_merge_size, self.config.hidden_size // self.config.num_heads
        inv = 1.0 / self.config.rope_theta ** (
            torch.arange(0, dv // 2, 2, device=device, dtype=torch.float32) / (dv // 2))  # (dv/4,)
        rc = []
        for t, h, w in grid_thw.tolist():
            order = block_order(h, w, m).to(device)
            rc.append(torch.stack([order // w, order % w], dim=1).repeat(t, 1))  # (t*h*w, 2) = (r, c)
        rc = torch.cat(rc).float()  # (N, 2)
        a = (rc[:, :, None] * inv).reshape(rc.shape[0], -1)  # (N, dv/2): rows then cols
        theta = torch.cat([a, a], dim=-1)[:, None, :]  # (N, 1, dv)
        return theta.cos(), theta.sin()

    @staticmethod
    def segments(grid_thw: torch.Tensor, device) -> list:
        """One attention segment per temporal slice of each image, grouped by length:
        a list of (length, rows (n_seg, length) long) so equal-length segments run as one batch."""
        groups: dict[int, list[int]] = {}  # length -> start rows of the segments of that length
        start = 0
        for t, h, w in grid_thw.tolist():
            for _ in range(t):
                groups.setdefault(h * w, []).append(start)
                start += h * w
        return [(n, torch.tensor(ss, device=device)[:, None] + torch.arange(n, device=device))
                for n, ss in groups.items()]

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor):
        """pixel_values (N, C*Tp*p*p), grid_thw (n, 3) -> (image embeddings (N/4, D), K DeepStack tensors (N/4, D))."""
        grid_thw = torch.as_tensor(grid_thw).long().cpu()
        n = int(grid_thw.prod(dim=1).sum())  # sum of t*h*w
        if pixel_values.shape[0] != n:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} rows but image_grid_thw implies {n} patches")
        x = self.patch_embed(pixel_values)  # (N, Dv)
        x = x + self.position_embedding(grid_thw).to(x.dtype)
        cos, sin = self.rotary(grid_thw, x.device)
        segs = self.segments(grid_thw, x.device)
        ds_layers, deepstack = self.config.deepstack_visual_indexes, []
        for i, blk in enumerate(self.blocks):
            if self.grad_checkpoint and checkpointable(blk):
                x = checkpoint(blk, x, cos, sin, segs, use_reentrant=False)
            else:
                x = blk(x, cos, sin, segs)
            if i in ds_layers:
                deepstack.append(self.deepstack_merger_list[ds_layers.index(i)](x))
        return self.merger(x), deepstack
