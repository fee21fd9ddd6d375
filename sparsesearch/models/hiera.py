"""SAM 2's image encoder trunk (Hiera, timm's `hieradet_sam2`), NHWC, with timm's module and parameter names.

A 7x7 stride-4 convolution embeds the image; the position embedding is a small "background" table `pos_embed`
(1, C, 7, 7) resized bicubically to the token grid plus a window table `pos_embed_window` (1, C, w0, w0) tiled over
it. Four stages of multi-scale blocks follow:

- block i attends within its stage's window (no shift; the map is padded bottom/right with zeros *after* norm1, as
  SAM 2 does), or over the whole map if it is listed in `global_att_blocks`; there are no relative positions;
- the first block of stages 2-4 is a *q-pool* block: it keeps the previous stage's window, max-pools its queries
  2x2 inside each window (so its output window is w/2 and the map halves), doubles the width and heads, and
  projects its shortcut (`proj` of norm1(x), then the same 2x2 max pool).

Names (`patch_embed.proj`, `pos_embed`, `pos_embed_window`, `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,
mlp.fc2,proj}`) are timm's, so a timm state dict loads with `strict=True`; `checkpoint_filter_fn` converts original
SAM 2 checkpoints (`{"model": {"image_encoder.trunk.*": ...}}`, `mlp.layers.0/1`).

Any input size runs: SAM 2 and timm need a multiple of 32 (the window table tiles the token grid exactly and every
q-pool block sees an even map); here the window table is tiled and cropped, and a q-pool block pools the padded
windows and crops to the pooled shortcut, which is the same thing wherever SAM 2 runs.

Pruning (README, "SAM 2's image encoder (Hiera)"): blocks of one width are `PrunedWindowBlock`s; a windowed block prunes
as a Swin block without shift, a global block tiles its map with its stage's window and runs on the real tokens of
the kept windows; q-pool blocks are never pruned. A config row is a stage: one sparsity per block (q-pool blocks at
0), one window per stage (which the next stage's q-pool block also uses).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SparsityConfig
from ..errors import CheckpointError, SparseSearchError
from ..ops import WindowGeometry
from .checkpoint import LoadReport
from .family import ModelFamily, PartInputs, PartPlan, StageShape, head_part, register_family
from .heads import ClassifierHead, FPNSegHead
from .layers import DropPath, Mlp, _rows_of, init_linear_weights
from .pruned_path import ScoreCarry
from .registry import register_models
from .window_block import (
    PrunedWindowBlock,
    WindowPrunableModel,
    kept_key_mask,
    run_blocks,
    unprunable,
    window_partition,
)

__all__ = [
    "ARCHS",
    "HieraAttention",
    "HieraBlock",
    "HieraDet",
    "HieraPatchEmbed",
    "checkpoint_filter_fn",
    "hiera_geometry",
    "hiera_pos_embed",
    "HieraFamily",
]

#: Architectures (timm's `sam2_hiera_*` registrations and SAM 2's `sam2_hiera_{t,s,b+,l}.yaml` trunks) and a CPU
#: member for tests and demos.
ARCHS: dict[str, dict[str, Any]] = {
    "sam2_hiera_tiny": dict(
        embed_dim=96,
        num_heads=1,
        stages=(1, 2, 7, 2),
        global_att_blocks=(5, 7, 9),
        window_spec=(8, 4, 14, 7),
        global_pos_size=(7, 7),
        img_size=1024,
    ),
    "sam2_hiera_small": dict(
        embed_dim=96,
        num_heads=1,
        stages=(1, 2, 11, 2),
        global_att_blocks=(7, 10, 13),
        window_spec=(8, 4, 14, 7),
        global_pos_size=(7, 7),
        img_size=1024,
    ),
    "sam2_hiera_base_plus": dict(
        embed_dim=112,
        num_heads=2,
        stages=(2, 3, 16, 3),
        global_att_blocks=(12, 16, 20),
        window_spec=(8, 4, 14, 7),
        global_pos_size=(14, 14),
        img_size=1024,
    ),
    "sam2_hiera_large": dict(
        embed_dim=144,
        num_heads=2,
        stages=(2, 6, 36, 4),
        global_att_blocks=(23, 33, 43),
        window_spec=(8, 4, 16, 8),
        global_pos_size=(7, 7),
        img_size=1024,
    ),
    # CPU-sized member: 8 blocks (q-pool blocks 1, 3, 6; block 5 global); at 256x256 the stage maps are 64, 32,
    # 16, 8 tokens a side, tiled by windows of 8, 4, 4, 4 into 8x8, 8x8, 4x4 and 2x2 windows.
    "sam2_hiera_nano": dict(
        embed_dim=32,
        num_heads=1,
        stages=(1, 2, 3, 2),
        global_att_blocks=(5,),
        window_spec=(8, 4, 4, 4),
        global_pos_size=(7, 7),
        img_size=256,
    ),
}


def hiera_geometry(H: int, W: int, window: int) -> WindowGeometry:
    """No-shift w x w tiling of an (H, W) map. As in SAM 2 the window is never clamped to the map: a map smaller
    than the window is padded up to one full window."""
    return WindowGeometry(H, W, window, window, 0, 0)


def hiera_pos_embed(pos_embed: torch.Tensor, pos_embed_window: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """SAM 2's windowed position embedding for an (H, W) token grid.

    Args:
        pos_embed: (1, C, h, w) background table, resized bicubically (no antialiasing) to (H, W).
        pos_embed_window: (1, C, wh, ww) window table, tiled over the grid (and cropped where (H, W) is not a
            multiple of it; SAM 2 only runs where it is).
        size: (H, W).
    Returns:
        (1, H, W, C).
    """
    H, W = int(size[0]), int(size[1])
    dtype = torch.promote_types(pos_embed.dtype, torch.float32)  # bicubic needs float32 or wider
    pos = F.interpolate(pos_embed.to(dtype), size=(H, W), mode="bicubic", align_corners=False)
    wh, ww = pos_embed_window.shape[-2:]
    # repeat, not tile (the same for a full-rank repeat count): the ONNX exporter writes tile as an If whose
    # branches disagree on the rank of the repeats (ONNX Runtime's "Concat output 4 vs 5" shape-merge warning)
    win = pos_embed_window.to(dtype).repeat(1, 1, -(-H // wh), -(-W // ww))[:, :, :H, :W]
    return (pos + win).permute(0, 2, 3, 1).to(pos_embed.dtype)


def _pool_nhwc(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, H', W', C) through an NCHW pooling module (SAM 2's `do_pool`)."""
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class HieraAttention(nn.Module):
    """Multi-head attention with optional 2x2 query pooling (timm's `MultiScaleAttention` names: `qkv`, `proj`).

    No position terms: the attention of a set of tokens does not depend on where they are, so windows, the whole
    map and any gathered subset of tokens all go through the same two calls.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.head_dim = dim_out // num_heads
        self.scale = self.head_dim**-0.5
        self.q_pool = nn.MaxPool2d(q_stride, q_stride) if q_stride is not None else None
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Bw, L, dim) -> q, k, v, each (Bw, heads, L, head_dim)."""
        L = int(x.shape[1])
        # on 2-d rows (the same product as on (Bw, L, dim)): exported, one Gemm with its bias, not MatMul + Add
        qkv = self.qkv(_rows_of(x)).reshape(-1, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def _out(self, out: torch.Tensor) -> torch.Tensor:
        """(Bw, heads, L, head_dim) -> (Bw, L, dim_out) through `proj`."""
        L = int(out.shape[2])
        return self.proj(out.transpose(1, 2).reshape(-1, self.dim_out)).view(-1, L, self.dim_out)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """SDPA with its default scale given: exported, a constant rather than computed from the traced head size
        (Shape, Slice, Cast, Sqrt, Div per block)."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over each of Bw grids, queries pooled if this is a q-pool block.

        x: (Bw, h, w, dim) windows or whole maps -> (Bw, h', w', dim_out), (h', w') = (h, w) // q_stride.
        """
        _, h, w, C = x.shape  # the batch of grids as -1 in each reshape: a dynamic axis of an export
        q, k, v = self._qkv(x.reshape(-1, h * w, C))
        if self.q_pool is not None:
            q = _pool_nhwc(self.q_pool, q.transpose(1, 2).reshape(-1, h, w, self.dim_out))
            h, w = int(q.shape[1]), int(q.shape[2])
            q = q.reshape(-1, h * w, self.num_heads, self.head_dim).transpose(1, 2)
        return self._out(self._attend(q, k, v)).view(-1, h, w, self.dim_out)

    def attend(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention over token sets, without query pooling.

        x: (B, L, dim); key_mask: (B, L) bool, True where a token may be attended (None: all) -> (B, L, dim_out).
        """
        if self.q_pool is not None:
            raise ValueError("a q-pool attention pools its queries on a grid: call it with (B, h, w, C)")
        q, k, v = self._qkv(x)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return self._out(self._attend(q, k, v, mask))


class HieraBlock(PrunedWindowBlock):
    """One SAM 2 multi-scale block (timm's `MultiScaleBlock` names), windowed or global, maybe q-pool.

    Blocks of one width prune whole windows (`PrunedWindowBlock`); a block that changes the width (the first block
    of stages 2-4: a q-pool block, which also pools the map) is never pruned.

    Attributes:
        window_size: the window of a windowed block; for a global block, the tiling used to score and keep
            windows (its stage's window); for a q-pool block, the previous stage's window.
        global_attn: attends over the whole map.
        q_stride: (2, 2) for a q-pool block, else None.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        window_size: int,
        global_attn: bool = False,
        q_stride: tuple[int, int] | None = None,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if q_stride is not None and dim == dim_out:
            raise ValueError("a q-pool block projects its shortcut: it needs dim_out != dim (as in SAM 2)")
        self.dim = dim
        self.dim_out = dim_out
        self.window_size = window_size
        self.global_attn = global_attn
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = nn.MaxPool2d(q_stride, q_stride) if q_stride is not None else None
        self.attn = HieraAttention(dim, dim_out, num_heads, q_stride)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))
        self.drop_path2 = DropPath(drop_path)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None

    @property
    def is_qpool(self) -> bool:
        return self.q_stride is not None

    @property
    def prunable(self) -> bool:
        """False for a block that changes the width (and maybe pools the map): it is never pruned."""
        return self.proj is None

    def check_pooled_window(self, row: int, window: int) -> None:
        """Raise SparseSearchError if this is a windowed q-pool block and `window` (config row `row`'s, the
        previous stage's) is no multiple of its stride: it pools the queries of each window."""
        if self.q_stride is not None and not self.global_attn and window % self.q_stride[0]:
            q = self.q_stride[0]
            raise SparseSearchError(
                f"window_size[{row}] = {window}: stage {row}'s window is pooled {q}x{q} by the next stage's q-pool "
                f"block, so it must be a multiple of {q} (in a search space: every window choice of stage {row})"
            )

    def geometry(self, H: int, W: int) -> WindowGeometry:
        """The tiling of an (H, W) input by `window_size` (for a global block: the pruning tiling)."""
        return hiera_geometry(H, W, self.window_size)

    def attend_windows(self, y: torch.Tensor, g: WindowGeometry, rows: torch.Tensor | None) -> torch.Tensor:
        """(Bw, N, dim) normed windows, row-major -> (Bw, N', dim_out); N' = N / 4 for a q-pool block (its pooled
        windows). No position terms: `rows` does not matter."""
        Bw, N, C = y.shape
        if N != g.wh * g.ww:
            raise ValueError(f"expected windows of {g.wh}x{g.ww} = {g.wh * g.ww} tokens, got {N}")
        return self.attn(y.view(Bw, g.wh, g.ww, C)).flatten(1, 2)

    def attend_global(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) normed map -> (B, H, W, dim_out): attention over the whole map."""
        B, H, W, C = y.shape
        return self.attn.attend(y.reshape(B, H * W, C)).view(B, H, W, self.dim_out)

    def attend_kept(self, y: torch.Tensor, g: WindowGeometry, idx: torch.Tensor) -> torch.Tensor:
        """(B, k*N, dim) normed slots of the kept windows -> (B, k*N, dim_out): attention among their real tokens."""
        return self.attn.attend(y, kept_key_mask(g, idx))

    def forward(self, x: torch.Tensor, owns_input: bool = False, carry: ScoreCarry | None = None) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H', W', dim_out); (H', W') = (H, W) // 2 (floored) for a q-pool block."""
        if self.prunable:
            return super().forward(x, owns_input, carry)
        if carry is not None:
            carry.set(None, None)
        return self._forward_transition(x)

    def _forward_transition(self, x: torch.Tensor) -> torch.Tensor:
        """A block that widens (and, q-pool, halves) the map: dense, shortcut projected (and pooled)."""
        B, H, W, C = x.shape
        y = self.norm1(x)
        shortcut = self.proj(y) if self.proj is not None else x
        if self.pool is not None:
            shortcut = _pool_nhwc(self.pool, shortcut)
        if self.global_attn and self.q_stride is not None:
            out = self.attn(y)
        elif self.global_attn:
            out = self.attn.attend(y.reshape(B, H * W, C)).view(B, H, W, self.dim_out)
        else:
            out = self._windowed(y, int(shortcut.shape[1]), int(shortcut.shape[2]))
        x = shortcut + self.drop_path1(out)
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def _windowed(self, y: torch.Tensor, Ho: int, Wo: int) -> torch.Tensor:
        """Windowed attention of the normed map y (B, H, W, dim) -> (B, Ho, Wo, dim_out): pad bottom/right with
        zeros, partition, attend (pooling the queries of each window), reassemble, crop."""
        B, H, W, C = y.shape
        g = self.geometry(H, W)
        sh, sw = self.q_stride if self.q_stride is not None else (1, 1)
        if g.wh % sh or g.ww % sw:
            raise ValueError(f"a q-pool block's window ({g.wh}) must be a multiple of its q stride {(sh, sw)}")
        if g.padded:
            y = F.pad(y, (0, 0, 0, g.Wp - W, 0, g.Hp - H))
        out = self.attend_windows(window_partition(y, g.wh, g.ww), g, None)
        oh, ow = g.wh // sh, g.ww // sw
        out = out.view(B, g.nWh, g.nWw, oh, ow, self.dim_out).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(B, g.nWh * oh, g.nWw * ow, self.dim_out)[:, :Ho, :Wo]


class HieraPatchEmbed(nn.Module):
    """Overlapping patch embedding (SAM 2 / timm `HieraPatchEmbed`): a 7x7, stride 4, padding 3 convolution."""

    def __init__(
        self, in_chans: int = 3, embed_dim: int = 96, kernel_size: int = 7, stride: int = 4, padding: int = 3
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, ceil(H/4), ceil(W/4), C) for the default kernel."""
        return self.proj(x).permute(0, 2, 3, 1)


def _layout(stages: Sequence[int], global_att_blocks: Sequence[int], q_pool: int) -> list[tuple[int, int, bool, bool]]:
    """Per block (stage, window stage, global, q-pool), SAM 2's rule: the first block of a stage takes the window
    of the previous stage (the window lags a block); the first `q_pool` stage changes pool their queries."""
    ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
    qpool_blocks = {e + 1 for e in ends[:-1][:q_pool]}
    out, stage = [], 0
    for i in range(sum(stages)):
        window_stage = stage
        if i - 1 in ends:
            stage += 1
        out.append((stage, window_stage, i in global_att_blocks, i in qpool_blocks))
    return out


class HieraDet(WindowPrunableModel):
    """SAM 2's Hiera image encoder trunk with optional classification or segmentation head (timm's `HieraDet`).

    Args:
        img_size: nominal input size (informational: any size runs; the position embedding is resized).
        embed_dim, num_heads: width and heads of stage 1; each stage change multiplies them by dim_mul, head_mul.
        stages: blocks per stage.
        q_pool: how many stage changes pool their queries (3: every one, as SAM 2).
        global_pos_size: the size of the background position table `pos_embed`.
        window_spec: window per stage (the window table `pos_embed_window` is window_spec[0] a side).
        global_att_blocks: the blocks with global attention.
        max_window_size: per stage, the largest window a config may give it (no weights depend on the window;
            defaults to window_spec, raised by a search space with larger choices).
        head: "cls" (average pool + `head.fc`), "seg" (light FPN on the four stage maps, `seg_head.*`) or None.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 1024,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        num_heads: int = 1,
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        stages: Sequence[int] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        global_pos_size: tuple[int, int] = (7, 7),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        global_att_blocks: Sequence[int] = (12, 16, 20),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        max_window_size: int | Sequence[int] | None = None,
        head: str | None = "cls",
        seg_dim: int = 128,
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(f"one window per stage: {len(stages)} stages, window_spec {list(window_spec)}")
        if not 0 <= q_pool < len(stages):
            raise ValueError(f"q_pool must lie in [0, {len(stages) - 1}], not {q_pool}")
        depth = sum(stages)
        if any(not 0 <= i < depth for i in global_att_blocks):
            raise ValueError(f"global_att_blocks {list(global_att_blocks)} must lie in [0, {depth})")
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.depths = tuple(int(d) for d in stages)
        self.stage_ends = tuple(sum(self.depths[: i + 1]) - 1 for i in range(len(self.depths)))
        self.global_att_blocks = tuple(sorted({int(i) for i in global_att_blocks}))
        self.default_window_size = tuple(int(w) for w in window_spec)
        if max_window_size is None:
            max_window_size = self.default_window_size
        elif isinstance(max_window_size, int):
            max_window_size = [max_window_size] * len(self.depths)
        self.max_window_size = tuple(max(int(m), w) for m, w in zip(max_window_size, self.default_window_size))
        self.q_stride = tuple(q_stride)
        self.global_pos_size = tuple(global_pos_size)
        self.num_classes = num_classes
        self.head_type = head

        self.patch_embed = HieraPatchEmbed(in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *self.global_pos_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))
        layout = _layout(self.depths, self.global_att_blocks, q_pool)
        self.stage_of = tuple(s for s, _, _, _ in layout)  # the stage of block i (of its output)
        self.window_stage_of = tuple(ws for _, ws, _, _ in layout)  # the stage whose window block i uses
        self.blocks = nn.Sequential(
            *self._build_blocks(
                layout,
                self.default_window_size,
                embed_dim,
                num_heads,
                dim_mul,
                head_mul,
                q_stride,
                mlp_ratio,
                drop_path_rate,
            )
        )
        self.q_pool_blocks = tuple(i for i, blk in enumerate(self.hiera_blocks) if blk.is_qpool)
        self.embed_dims = tuple(self.hiera_blocks[e].dim_out for e in self.stage_ends)
        self.num_heads = tuple(self.hiera_blocks[e].attn.num_heads for e in self.stage_ends)
        self.num_features = self.embed_dims[-1]
        self.feature_info = self._feature_info(q_stride)
        if head == "cls":
            self.head = ClassifierHead(self.num_features, num_classes)
        elif head == "seg":
            self.seg_head = FPNSegHead(self.embed_dims, num_classes, seg_dim)
        elif head is not None:
            raise ValueError(f"head must be 'cls', 'seg' or None, not {head!r}")
        self._init_weights()

    @staticmethod
    def _build_blocks(
        layout: Sequence[tuple[int, int, bool, bool]],
        windows: Sequence[int],
        embed_dim: int,
        num_heads: int,
        dim_mul: float,
        head_mul: float,
        q_stride: tuple[int, int],
        mlp_ratio: float,
        drop_path_rate: float,
    ) -> list[HieraBlock]:
        depth = len(layout)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        blocks, dim, prev_stage = [], embed_dim, 0
        for i, (stage, window_stage, is_global, is_qpool) in enumerate(layout):
            dim_out = dim
            if stage != prev_stage:  # the first block of a stage widens (and, if q-pool, halves the map)
                dim_out, num_heads = int(dim * dim_mul), int(num_heads * head_mul)
            qs = q_stride if is_qpool else None
            window = windows[window_stage]
            blocks.append(HieraBlock(dim, dim_out, num_heads, window, is_global, qs, mlp_ratio, dpr[i]))
            dim, prev_stage = dim_out, stage
        return blocks

    def _feature_info(self, q_stride: tuple[int, int]) -> list[dict[str, Any]]:
        """timm's feature_info: one entry per stage map of `forward_stages`."""
        info, reduction = [], self.patch_embed.proj.stride[0]
        for s, end in enumerate(self.stage_ends):
            start = self.stage_ends[s - 1] + 1 if s else 0
            if self.hiera_blocks[start].is_qpool:
                reduction *= q_stride[0]
            info.append(dict(num_chs=self.embed_dims[s], reduction=reduction, module=f"blocks.{end}"))
        return info

    def _init_weights(self) -> None:
        """timm's init: truncated normal linears and position tables, attention / MLP outputs of block i scaled
        by 1/sqrt(2(i+1)) (`fix_init_weight`)."""
        self.apply(init_linear_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.pos_embed_window, std=0.02)
        with torch.no_grad():
            for i, blk in enumerate(self.hiera_blocks):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
                cast(Mlp, blk.mlp).fc2.weight.div_(math.sqrt(2.0 * (i + 1)))

    # ---- structure and configs -----------------------------------------------------------------------------
    @property
    def hiera_blocks(self) -> list[HieraBlock]:
        """The blocks, typed (`blocks` is the timm-named nn.Sequential)."""
        return cast("list[HieraBlock]", list(self.blocks))

    def stage_blocks(self, stage: int) -> list[HieraBlock]:
        """The blocks of one stage, in order (the first one of stages 2-4 is its q-pool block)."""
        return [b for b, s in zip(self.hiera_blocks, self.stage_of) if s == stage]

    def config_rows(self) -> list[list[PrunedWindowBlock]]:
        """The blocks of every stage (a config row is a stage; its q-pool block takes sparsity 0)."""
        return [list(self.stage_blocks(s)) for s in range(len(self.depths))]

    def apply_row_window(self, row: int, window: int) -> None:
        """Stage `row`'s window reaches its windowed and global blocks and the next stage's q-pool block (the
        window lags a block, as in SAM 2)."""
        for blk, ws in zip(self.hiera_blocks, self.window_stage_of):
            if ws == row:
                blk.window_size = window

    def check_config(self, config: SparsityConfig) -> None:
        """Blocks that change the width are never pruned; a window a q-pool block pools must be a multiple of its
        stride."""
        pruned = [
            f"{s}.{j}"
            for s, row in enumerate(self.config_rows())
            for j, blk in enumerate(row)
            if not cast(HieraBlock, blk).prunable and config.sparsity[s][j] > 0.0
        ]
        if pruned:
            raise unprunable("SAM 2's q-pool blocks (the first block of stages 2-4)", pruned)
        for blk, ws in zip(self.hiera_blocks, self.window_stage_of):
            blk.check_pooled_window(ws, config.window_size[ws])

    # ---- forward -------------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, ceil(H/4), ceil(W/4), embed_dim): patch embedding plus the position embedding.

        The sum is made contiguous NHWC: the convolution's permuted NCHW output would otherwise carry its strides
        through every dense block of stage 1 (a strided norm1 costs twice a contiguous one) and make the first
        pruned block copy the map instead of writing its kept windows in place."""
        x = self.patch_embed(x)
        pos = hiera_pos_embed(self.pos_embed, self.pos_embed_window, (int(x.shape[1]), int(x.shape[2])))
        return (x + pos).contiguous()

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> the four NHWC stage maps (SAM 2's `return_interm_layers`), strides 4, 8, 16, 32."""
        x = self.embed(x)
        feats = []
        for s in range(len(self.depths)):  # a stage never writes the previous stage's map, which is returned
            x = run_blocks(self.stage_blocks(s), x, owns_input=s == 0)[0]
            feats.append(x)
        return feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/32, W/32, C) the last block's output, NHWC (timm's forward_features)."""
        return run_blocks(self.hiera_blocks, self.embed(x), owns_input=True)[0]

    def forward_model(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits: (B, classes) for "cls", (B, classes, H, W) for "seg", features if no head."""
        if self.head_type == "seg":
            return self.seg_head(self.forward_stages(x), x.shape[-2:])
        feats = self.forward_features(x)
        return self.head(feats) if self.head_type == "cls" else feats


# ---- checkpoints ----------------------------------------------------------------------------------------------
_SAM2_TRUNK = "image_encoder.trunk."
_SAM2_MLP = {"mlp.layers.0.": "mlp.fc1.", "mlp.layers.1.": "mlp.fc2."}


def _sam2_part(key: str) -> str:
    """The SAM 2 part a key belongs to: `image_encoder.neck`, `memory_attention`, ..."""
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "image_encoder" and len(parts) > 2 else parts[0]


def _from_sam2(sd: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """Original SAM 2 keys -> timm's: the trunk without its prefix, `mlp.layers.0/1` -> `mlp.fc1/fc2`."""
    if not any(k.startswith(_SAM2_TRUNK) for k in sd):
        raise CheckpointError(
            "the checkpoint has image_encoder.* keys but no image_encoder.trunk.*: it is not a SAM 2 checkpoint "
            "(a SAM 1 image encoder is a samvit_* model)"
        )
    dropped = sorted({_sam2_part(k) for k in sd if not k.startswith(_SAM2_TRUNK)})
    notes.append("converted an original SAM 2 checkpoint (image_encoder.trunk.*)")
    if dropped:
        notes.append(f"dropped the SAM 2 parts this backbone does not have: {', '.join(dropped)}")
    out = {}
    for k, v in sd.items():
        if not k.startswith(_SAM2_TRUNK):
            continue
        k = k[len(_SAM2_TRUNK) :]
        for old, new in _SAM2_MLP.items():
            k = k.replace(old, new)
        out[k] = v
    return out


def _resize_tables(out: dict[str, Any], own: Mapping[str, torch.Tensor], notes: list[str]) -> None:
    """Resize `pos_embed` / `pos_embed_window` (1, C, h, w) of another size to the model's, bicubic (as the
    forward resizes `pos_embed` to the token grid)."""
    for k in ("pos_embed", "pos_embed_window"):
        v = out.get(k)
        if not isinstance(v, torch.Tensor) or k not in own or v.shape == own[k].shape:
            continue
        if v.dim() == 4 and v.shape[:2] == own[k].shape[:2]:
            size = tuple(int(s) for s in own[k].shape[2:])
            dtype = torch.promote_types(v.dtype, torch.float32)
            out[k] = F.interpolate(v.to(dtype), size=size, mode="bicubic", align_corners=False).to(v.dtype)
            notes.append(f"resized {k} from {tuple(v.shape[2:])} to {size} (bicubic)")


def _fit_head(out: dict[str, Any], own: Mapping[str, torch.Tensor], notes: list[str]) -> None:
    """Drop classifier tensors the model does not have or sizes differently (timm's `head.norm`, another class
    count); a head the model has and the checkpoint lacks is left to the loader."""
    drop = [k for k in out if k.startswith("head.") and (k not in own or own[k].shape != out[k].shape)]
    for k in drop:
        del out[k]
    if drop:
        notes.append(f"dropped classifier tensors this model does not have or sizes differently: {', '.join(drop)}")


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: HieraDet) -> tuple[dict[str, Any], list[str]]:
    """A timm `sam2_hiera_*` state dict or an original SAM 2 checkpoint -> `model`'s state dict, and notes.

    SAM 2 checkpoints (`{"model": {...}}`, or the inner dict) keep the trunk under `image_encoder.trunk.*` with
    `mlp.layers.0/1` for timm's `mlp.fc1/fc2`; the neck, memory and decoder parts are dropped (noted). timm state
    dicts pass through. Position tables of another size are resized; classifier tensors the model cannot take are
    dropped (noted). An `image_encoder.*` checkpoint without a trunk (SAM 1) raises CheckpointError.
    """
    sd: Mapping[str, Any] = state_dict
    inner = sd.get("model")
    if isinstance(inner, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        sd = inner
    notes: list[str] = []
    out = _from_sam2(sd, notes) if any(k.startswith("image_encoder.") for k in sd) else dict(sd)
    own = model.state_dict()
    _resize_tables(out, own, notes)
    _fit_head(out, own, notes)
    return out, notes


# ---- the family and its registered sizes ----------------------------------------------------------------------
# the quick run of a SAM 2 space (`--quick --space search_spaces/sam2_demo.yaml`): 16x16 tokens at 64x64
QUICK_SPACE_YAML = """\
name: quick_sam2
architecture: sam2_hiera_nano
model_kwargs: {embed_dim: 16, seg_dim: 16}
resolutions: [[64, 64]]
sparsity_choices: [0.0, 0.25, 0.5, 0.75]
genes:
  - {name: s1, blocks: ["0.0"]}
  - {name: s2, blocks: ["1.1"]}
  - {name: s3, blocks: ["2.1", "2.2"], choices: [0.0, 0.5]}
  - {name: rest, blocks: ["1.0", "2.0", "3.0", "3.1"], choices: [0.0]}
window_sizes: [[4], [4], [2], [2]]
"""


def _block_input(hiera: HieraDet, pos: int, shapes: Sequence[StageShape], batch: int) -> tuple[int, int, int, int]:
    """(B, H, W, C) of block `pos`'s input: the map of the stage of the block before it (the embedding's, stage
    1's map, for the first block); a q-pool block's input is the previous stage's map."""
    sh = shapes[hiera.stage_of[pos - 1]] if pos > 0 else shapes[0]
    return (batch, sh.H, sh.W, sh.dim)


def _hiera(model: nn.Module) -> HieraDet:
    if not isinstance(model, HieraDet):
        raise SparseSearchError(f"expected a SAM 2 Hiera encoder, got {type(model).__name__}")
    return model


@register_family
class HieraFamily(ModelFamily):
    """SAM 2's Hiera: four stages whose first blocks (2-4) pool the map and widen it (q-pool blocks, never pruned,
    running the previous stage's window); windowed and global blocks prune windows."""

    name = "Hiera"
    label = "a SAM 2 Hiera image encoder (sam2_hiera_*)"
    model_class = HieraDet
    variants = ("window", "global", "qpool")
    part_containers = ("blocks",)
    quick_space_yaml = QUICK_SPACE_YAML

    def depths(self, arch: dict[str, Any]) -> tuple[int, ...]:
        return tuple(int(d) for d in arch["stages"])

    def default_window(self, arch: dict[str, Any]) -> tuple[int, ...]:
        return tuple(int(w) for w in arch["window_spec"])

    def _flat(self, arch: dict[str, Any], stage: int, block: int) -> int:
        return sum(self.depths(arch)[:stage]) + block

    def stage_shapes(self, arch: dict[str, Any], resolution: tuple[int, int]) -> list[StageShape]:
        H, W = math.ceil(resolution[0] / 4), math.ceil(resolution[1] / 4)  # 7x7 conv, stride 4, padding 3
        dim, heads = int(arch.get("embed_dim", 96)), int(arch.get("num_heads", 1))
        dim_mul, head_mul = float(arch.get("dim_mul", 2.0)), float(arch.get("head_mul", 2.0))
        q_pool, stride = int(arch.get("q_pool", 3)), tuple(arch.get("q_stride", (2, 2)))
        out = []
        for s, depth in enumerate(self.depths(arch)):
            if s > 0:
                dim, heads = int(dim * dim_mul), int(heads * head_mul)
                if s <= q_pool:
                    H, W = H // int(stride[0]), W // int(stride[1])
            out.append(StageShape(s, H, W, dim, heads, depth))
        return out

    def block_variant(self, arch: dict[str, Any], stage: int, block: int) -> str:
        if stage > 0 and block == 0:
            return "qpool"
        return "global" if self._flat(arch, stage, block) in tuple(arch.get("global_att_blocks", ())) else "window"

    def block_prunable(self, arch: dict[str, Any], stage: int, block: int) -> bool:
        return self.block_variant(arch, stage, block) != "qpool"

    def check_window_choices(self, arch: dict[str, Any], choices: Sequence[Sequence[int]]) -> None:
        """A window that the next stage's (windowed) q-pool block pools must be a multiple of its stride."""
        depths, q = self.depths(arch), int(tuple(arch.get("q_stride", (2, 2)))[0])
        global_blocks = set(arch.get("global_att_blocks", ()))
        for s in range(min(int(arch.get("q_pool", 3)), len(depths) - 1)):
            odd = [w for w in choices[s] if w % q]
            if odd and sum(depths[: s + 1]) not in global_blocks:
                raise SparseSearchError(
                    f"window choice(s) {odd} of stage {s}: the next stage's q-pool block pools each window {q}x{q}, "
                    f"so stage {s}'s windows must be multiples of {q}"
                )

    def window_row(self, arch: dict[str, Any], stage: int, block: int) -> int:
        return stage - 1 if self.block_variant(arch, stage, block) == "qpool" else stage

    def geometry(self, variant: str, H: int, W: int, window: int) -> WindowGeometry:
        """A q-pool block tiles its (pooled-from) input map, about twice the stage's; it only ever runs dense."""
        return hiera_geometry(2 * H, 2 * W, window) if variant == "qpool" else hiera_geometry(H, W, window)

    def block_name(self, arch: dict[str, Any], stage: int, block: int) -> str:
        return f"blocks.{self._flat(arch, stage, block)}"

    def fixed_parts(self, arch: dict[str, Any], head: str | None) -> list[str]:
        return ["patch_embed", *(["head"] if head else [])]

    def model_parts(self, model: nn.Module, head: str | None) -> list[tuple[str, nn.Module]]:
        hiera = _hiera(model)
        parts: list[tuple[str, nn.Module]] = [("patch_embed", hiera.patch_embed)]
        parts.extend((f"blocks.{i}", blk) for i, blk in enumerate(hiera.blocks))
        return parts + head_part(hiera, head)

    def block_plan(
        self, model: nn.Module, stage: int, variant: str, window: int, sparsity: float, at: PartInputs
    ) -> PartPlan:
        """A block follows the one before it (the patch embedding for the first block), which runs on that block's
        own input map: the same window (where both run one row's window) and kept count (where it is a pruned block
        of the same stage), dense otherwise. So a q-pool block follows the previous stage's last block, and the
        first windowed block of stages 2-4 follows the q-pool block, which takes the previous stage's map."""
        shapes, resolution, batch = at.shapes, at.resolution, at.batch
        hiera = _hiera(model)
        blocks = hiera.hiera_blocks
        group = hiera.stage_blocks(stage)
        block = next(b for j, b in enumerate(group) if self.block_variant(self._arch_of(hiera), stage, j) == variant)
        pos = blocks.index(block)
        block.check_pooled_window(hiera.window_stage_of[pos], window)
        block.window_size, block.sparsity = window, sparsity
        if pos == 0:
            return PartPlan(block, hiera.embed, (batch, 3, *resolution))
        prev = blocks[pos - 1]
        if hiera.window_stage_of[pos - 1] == hiera.window_stage_of[pos]:
            prev.window_size = window
        prev.sparsity = sparsity if prev.prunable and hiera.stage_of[pos - 1] == stage else 0.0
        return PartPlan(block, prev, _block_input(hiera, pos - 1, shapes, batch))

    @staticmethod
    def _arch_of(model: HieraDet) -> dict[str, Any]:
        return {"stages": model.depths, "global_att_blocks": model.global_att_blocks}

    def fixed_plan(self, model: nn.Module, name: str, at: PartInputs) -> PartPlan:
        """The patch embedding (with the position embedding) takes the image; the head follows the last block
        (dense; a segmentation head also reads the other stage maps, random here)."""
        shapes, resolution, batch, head = at.shapes, at.resolution, at.batch, at.head
        hiera = _hiera(model)
        if name == "patch_embed":
            return PartPlan(hiera.embed, None, (batch, 3, *resolution))
        prev = hiera.hiera_blocks[-1]
        prev.window_size, prev.sparsity = at.default_window[hiera.window_stage_of[-1]], 0.0
        before = _block_input(hiera, len(hiera.hiera_blocks) - 1, shapes, batch)
        if head == "cls":
            return PartPlan(hiera.head, prev, before)
        param = next(hiera.parameters())
        others = [
            torch.randn(batch, s.H, s.W, s.dim, generator=torch.Generator().manual_seed(s.stage)).to(
                device=param.device, dtype=param.dtype
            )
            for s in shapes[:-1]
        ]
        seg_head = hiera.seg_head
        return PartPlan(lambda x: seg_head([*others, x], resolution), prev, before)

    def claims_checkpoint(self, sd: Mapping[str, torch.Tensor]) -> bool:
        return "pos_embed_window" in sd or any(k.startswith(_SAM2_TRUNK) for k in sd)

    def convert_checkpoint(
        self, sd: Mapping[str, torch.Tensor], model: nn.Module
    ) -> tuple[dict[str, torch.Tensor], LoadReport]:
        out, notes = checkpoint_filter_fn(sd, _hiera(model))
        report = LoadReport(notes=notes)
        if any(k.startswith("image_encoder.") for k in sd):
            report.converted_from = "sam2"
        return out, report

    def describe(self, arch: dict[str, Any]) -> str:
        return (
            f"embed {arch['embed_dim']:<4} stages {list(arch['stages'])} heads {arch['num_heads']} "
            f"window {list(arch['window_spec'])} global {list(arch['global_att_blocks'])}"
        )


register_models(ARCHS, HieraDet, HieraFamily.name)
