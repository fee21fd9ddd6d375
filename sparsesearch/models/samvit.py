"""Window-prunable plain ViT with window attention (SAM image encoder, ViTDet), NHWC, timm's `samvit_*` names.

Most blocks attend within w x w windows (no shift; the map is padded bottom/right with zeros after norm1); the
blocks at `global_attn_indexes` attend over the whole map. Attention adds decomposed relative positions
(MViTv2/SAM). Pruning (README, "Plain ViTs with window attention"):

- a windowed block prunes exactly as a Swin block with shift 0;
- a global block tiles the map with the window of its group (the windowed blocks just before it), keeps the same
  number of windows, and runs attention (queries and keys), norms and MLP on the real tokens of the kept windows
  only, with relative positions at their true (row, col).

Blocks are grouped for configs: a group is a run of windowed blocks closed by a global block (a trailing run of
windowed blocks is a group of its own). A config gives one window size per group (used by its windowed blocks and
as the tiling of its global block) and one sparsity per block, so SAM ViT-B's 12 blocks are 4 groups of 3.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SparsityConfig
from ..errors import SparseSearchError
from ..ops import WindowGeometry
from .checkpoint import LoadReport
from .family import ModelFamily, PartInputs, PartPlan, StageShape, head_part, register_family
from .heads import ClassifierHead, PyramidSegHead
from .layers import DropPath, Mlp, _exporting, _rows_of, init_linear_weights
from .registry import register_models
from .window_block import PrunedWindowBlock, WindowPrunableModel, run_blocks

__all__ = [
    "SamAttention",
    "SamBlock",
    "SamViT",
    "SamViTFamily",
    "LayerNorm2d",
    "block_groups",
    "sam_geometry",
    "checkpoint_filter_fn",
    "ARCHS",
]


def sam_geometry(H: int, W: int, window: int) -> WindowGeometry:
    """No-shift geometry of a w x w tiling of an (H, W) map. Unlike Swin the window is never clamped to the map:
    SAM pads a map smaller than the window up to one full window."""
    return WindowGeometry(H, W, window, window, 0, 0)


def block_groups(depth: int, global_indexes: Sequence[int]) -> tuple[int, ...]:
    """Group sizes: each group is a run of windowed blocks closed by a global block (a trailing run of windowed
    blocks is a group too). (12, (2, 5, 8, 11)) -> (3, 3, 3, 3)."""
    sizes, start = [], 0
    for i in sorted(set(global_indexes)):
        sizes.append(i + 1 - start)
        start = i + 1
    if start < depth:
        sizes.append(depth - start)
    return tuple(sizes)


def _resize_rel(table: torch.Tensor, length: int) -> torch.Tensor:
    """(L, d) -> (length, d): linear interpolation along L, as timm's `get_rel_pos`."""
    if table.shape[0] == length:
        return table
    out = F.interpolate(table.T.unsqueeze(0).float(), size=length, mode="linear")
    return out.squeeze(0).T.to(table.dtype)


def _rel_grid(table: torch.Tensor, size: int, crop: bool) -> torch.Tensor:
    """(L, d) table -> (size, size, d) embeddings R[i, j] of the offset i - j on a `size` grid.

    A windowed block (crop=True) with a window smaller than its table reads the centre crop (all window sizes
    share the weights, as for Swin); otherwise a table of another length is linearly resized, as timm does.
    """
    length = 2 * size - 1
    if crop and table.shape[0] > length:
        c = (table.shape[0] - length) // 2
        table = table[c : c + length]
    table = _resize_rel(table, length)
    idx = torch.arange(size, device=table.device)
    return table[idx[:, None] - idx[None, :] + size - 1]


class SamAttention(nn.Module):
    """Multi-head attention with decomposed relative positions (timm's samvit `Attention` names).

    `table_size` is the grid the `rel_pos_h`/`rel_pos_w` tables are built for: the window (windowed blocks) or
    the feature map at the model's img_size (global blocks).
    """

    def __init__(
        self, dim: int, num_heads: int, table_size: tuple[int, int], qkv_bias: bool = True, use_rel_pos: bool = True
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * table_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * table_size[1] - 1, self.head_dim))

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        N = int(x.shape[1])  # the batch of grids as -1: a dynamic axis of an export
        qkv = self.qkv(x).reshape(-1, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)  # each (Bw, heads, N, hd)

    def _out(self, out: torch.Tensor) -> torch.Tensor:
        N = int(out.shape[2])
        return self.proj(out.transpose(1, 2).reshape(-1, N, self.num_heads * self.head_dim))

    def forward_grid(self, x: torch.Tensor, h: int, w: int, crop: bool) -> torch.Tensor:
        """x: (Bw, h*w, C) tokens of full h x w grids (windows, or the whole map) -> (Bw, h*w, C)."""
        if _exporting():
            return self._forward_grid_export(x, h, w, crop)
        q, k, v = self._qkv(x)
        bias = None
        if self.use_rel_pos:
            Rh = _rel_grid(self.rel_pos_h, h, crop).to(q.dtype)  # (h, h, hd)
            Rw = _rel_grid(self.rel_pos_w, w, crop).to(q.dtype)
            rq = q.reshape(*q.shape[:2], h, w, self.head_dim)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", rq, Rh)
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", rq, Rw)
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(*q.shape[:2], h * w, h * w)
        return self._out(F.scaled_dot_product_attention(q, k, v, attn_mask=bias))

    def _forward_grid_export(self, x: torch.Tensor, h: int, w: int, crop: bool) -> torch.Tensor:
        """`forward_grid` as the exporter should see it, the same values: the linears on 2-d rows (ONNX Runtime's
        Gemm with its bias), qkv split by one Transpose and one Split, the scale a constant (SDPA's export derives
        it from the traced head size: Shape, Slice, Cast, Sqrt, Div and two Muls per block), the relative
        positions as batched MatMuls (ONNX Runtime's Einsum transposes and copies around one), the attention
        written out (MatMul, Add, Softmax, MatMul)."""
        N, C = int(x.shape[1]), int(x.shape[2])
        nh, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(_rows_of(x)).reshape(-1, N, 3 * nh, d).transpose(1, 2).split(nh, dim=1)  # (Bw, nh, N, d)
        attn = (q * (1.0 / math.sqrt(d))) @ k.transpose(-2, -1)  # (Bw, nh, N, N); SDPA's default scale
        if self.use_rel_pos:
            Rh = _rel_grid(self.rel_pos_h, h, crop).to(q.dtype)  # (h, h, d)
            Rw = _rel_grid(self.rel_pos_w, w, crop).to(q.dtype)  # (w, w, d)
            rq = q.reshape(-1, nh, h, w, d)
            rel_h = rq @ Rh.transpose(1, 2)  # (Bw, nh, h, w, h): row i's queries against Rh[i]
            rel_w = (rq.transpose(2, 3) @ Rw.transpose(1, 2)).transpose(2, 3)  # (Bw, nh, h, w, w)
            attn = attn + (rel_h[..., :, None] + rel_w[..., None, :]).reshape(-1, nh, N, N)
        out = attn.softmax(dim=-1) @ v  # (Bw, nh, N, d)
        return self.proj(out.transpose(1, 2).reshape(-1, C)).view(-1, N, C)

    def forward_windows(
        self, x: torch.Tensor, win_rows: torch.Tensor, win_cols: torch.Tensor, wh: int, ww: int, H: int, W: int
    ) -> torch.Tensor:
        """Global attention over the tokens of kept windows of an (H, W) map.

        x: (B, k*wh*ww, C) the kept windows' slots, window-major then row-major; win_rows, win_cols: (B, k) int64
        top-left coordinates of each kept window. Slots outside the map (padding) are masked as keys; their
        outputs are meaningless. Relative positions are taken at every token's true (row, col). Returns x's shape.
        """
        q, k, v = self._qkv(x)
        B, nh, L, _ = q.shape
        nk = win_rows.shape[1]
        rows = win_rows[:, :, None] + torch.arange(wh, device=x.device)  # (B, k, wh) rows of the keys' window rows
        cols = win_cols[:, :, None] + torch.arange(ww, device=x.device)  # (B, k, ww)
        # each slot's true coordinate (padded slots clamped into the map: only their -inf key column matters)
        q_rows = rows.clamp(max=H - 1)[:, :, :, None].expand(B, nk, wh, ww).reshape(B, L)
        q_cols = cols.clamp(max=W - 1)[:, :, None, :].expand(B, nk, wh, ww).reshape(B, L)
        if self.use_rel_pos:
            Ph = self._rel_per_coord(q, q_rows, _resize_rel(self.rel_pos_h, 2 * H - 1), H)  # (B, nh, L, H)
            Pw = self._rel_per_coord(q, q_cols, _resize_rel(self.rel_pos_w, 2 * W - 1), W)
        else:
            Ph = q.new_zeros(B, nh, L, H)
            Pw = q.new_zeros(B, nh, L, W)
        # the bias of key (window b, i, j) is Ph[.., rows[b, i]] + Pw[.., cols[b, j]]: gather per window row /
        # column, then one broadcast sum writes the (L, L) bias once, as the dense path does
        bh = Ph.gather(3, rows.clamp(max=H - 1).view(B, 1, 1, nk * wh).expand(B, nh, L, nk * wh))
        bw = Pw.gather(3, cols.clamp(max=W - 1).view(B, 1, 1, nk * ww).expand(B, nh, L, nk * ww))
        bh = bh.masked_fill((rows >= H).view(B, 1, 1, nk * wh), float("-inf"))
        bw = bw.masked_fill((cols >= W).view(B, 1, 1, nk * ww), float("-inf"))
        bias = bh.view(B, nh, L, nk, wh, 1) + bw.view(B, nh, L, nk, 1, ww)
        # the default scale, given: exported, a constant rather than computed from the traced head size
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.view(B, nh, L, L), scale=1.0 / math.sqrt(self.head_dim)
        )
        return self._out(out)

    @staticmethod
    def _rel_per_coord(q: torch.Tensor, coord: torch.Tensor, table: torch.Tensor, size: int) -> torch.Tensor:
        """(B, nh, L, size): q_n . table[coord_n - c + size - 1] for every query n and key coordinate c."""
        B, nh, L, _ = q.shape
        per_offset = q @ table.to(q.dtype).T  # (B, nh, L, 2*size-1)
        offs = torch.arange(size, device=q.device)
        idx = coord[:, :, None] - offs[None, None, :] + size - 1  # (B, L, size)
        return per_offset.gather(3, idx[:, None].expand(B, nh, L, size))


class SamBlock(PrunedWindowBlock):
    """One SAM/ViTDet block: windowed (`global_attn=False`) or global attention, pruning whole windows
    (`PrunedWindowBlock`). For a global block `window_size` is only the tiling used to score and keep windows."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        table_size: tuple[int, int],
        global_attn: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.global_attn = global_attn
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SamAttention(dim, num_heads, table_size, qkv_bias, use_rel_pos)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = DropPath(drop_path)

    def geometry(self, H: int, W: int) -> WindowGeometry:
        return sam_geometry(H, W, self.window_size)

    def attend_windows(self, y: torch.Tensor, g: WindowGeometry, rows: torch.Tensor | None) -> torch.Tensor:
        """(Bw, N, C) -> (Bw, N, C): attention within each window, relative positions of the window's grid."""
        return self.attn.forward_grid(y, g.wh, g.ww, crop=True)

    def attend_global(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C): attention over the whole map."""
        B, H, W, C = y.shape
        return self.attn.forward_grid(y.reshape(B, H * W, C), H, W, crop=False).view(B, H, W, C)

    def attend_kept(self, y: torch.Tensor, g: WindowGeometry, idx: torch.Tensor) -> torch.Tensor:
        """(B, k*N, C) -> (B, k*N, C): attention among the real tokens of the kept windows, relative positions at
        their true (row, col)."""
        win_rows, win_cols = (idx // g.nWw) * g.wh, (idx % g.nWw) * g.ww  # kept windows' top-left tokens
        return self.attn.forward_windows(y, win_rows, win_cols, g.wh, g.ww, g.H, g.W)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (timm's/SAM's LayerNorm2d, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


class SamPatchEmbed(nn.Module):
    """Non-overlapping patch projection to NHWC (no norm; a size that is not a multiple of the patch is floored,
    as a strided convolution does)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H // p, W // p, C)."""
        return self.proj(x).permute(0, 2, 3, 1)


def resample_pos_embed(pos: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, h, w, C) -> (1, *size, C): bicubic with antialiasing, as timm's NHWC resampling.

    ONNX has no antialiased bicubic resize: export a model at the size its position embedding was built for.
    """
    if tuple(pos.shape[1:3]) == tuple(size):
        return pos
    if torch.onnx.is_in_onnx_export():
        raise SparseSearchError(
            f"cannot export to ONNX at a {size[0]}x{size[1]} token grid: the position embedding is built for "
            f"{pos.shape[1]}x{pos.shape[2]} and ONNX cannot resample it as timm does; build the model with the "
            "export resolution as img_size (a search space does this for its first resolution)"
        )
    out = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return out.permute(0, 2, 3, 1).to(pos.dtype)


def _per_group(value: int | Sequence[int] | None, n: int, default: Sequence[int]) -> list[int]:
    if value is None:
        return list(default)
    if isinstance(value, int):
        return [value] * n
    out = [int(v) for v in value]
    if len(out) != n:
        raise ValueError(f"expected one value per block group ({n}), got {len(out)}")
    return out


class SamViT(WindowPrunableModel):
    """Plain ViT with window attention (SAM image encoder / ViTDet backbone), timm's `VisionTransformerSAM` names.

    Args:
        img_size: input size the position embedding and the global blocks' tables are built for; other sizes
            resample them at run time (bicubic / linear, as timm).
        window_size: default window of the windowed blocks (int, or one per block group).
        global_attn_indexes: blocks with global attention; they close the block groups (see module docstring).
        max_window_size: per group, the window the windowed blocks' tables are built for (>= window_size).
        neck_chans: channels of the neck (conv1x1-LN2d-conv3x3-LN2d); 0 for none.
        head: "cls" (avg pool + `head.fc`), "seg" (simple feature pyramid + light FPN, `seg_head.*`) or None.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int | Sequence[int] = 14,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
        max_window_size: int | Sequence[int] | None = None,
        neck_chans: int = 256,
        drop_path_rate: float = 0.0,
        head: str | None = "cls",
        seg_dim: int = 128,
    ) -> None:
        super().__init__()
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.global_attn_indexes = tuple(sorted(set(int(i) for i in global_attn_indexes)))
        if any(not 0 <= i < depth for i in self.global_attn_indexes):
            raise ValueError(f"global_attn_indexes {list(global_attn_indexes)} must lie in [0, {depth})")
        self.depths = block_groups(depth, self.global_attn_indexes)
        n = len(self.depths)
        windows = _per_group(window_size, n, [])
        self.default_window_size = tuple(windows)
        self.max_window_size = tuple(max(m, w) for m, w in zip(_per_group(max_window_size, n, windows), windows))
        self.num_features = neck_chans or embed_dim
        self.num_classes = num_classes
        self.head_type = head
        grid = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)

        self.patch_embed = SamPatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, *grid, embed_dim)) if use_abs_pos else None
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # (not a tensor: meta-device builds)
        blocks: list[SamBlock] = []
        self._group_of: list[int] = []
        for gi, d in enumerate(self.depths):
            for _ in range(d):
                i = len(blocks)
                is_global = i in self.global_attn_indexes
                table = grid if is_global else (self.max_window_size[gi],) * 2
                blocks.append(
                    SamBlock(
                        embed_dim, num_heads, windows[gi], table, is_global, mlp_ratio, qkv_bias, use_rel_pos, dpr[i]
                    )
                )
                self._group_of.append(gi)
        self.blocks = nn.Sequential(*blocks)
        self.neck: nn.Module
        if neck_chans:
            self.neck = nn.Sequential(
                nn.Conv2d(embed_dim, neck_chans, 1, bias=False),
                LayerNorm2d(neck_chans),
                nn.Conv2d(neck_chans, neck_chans, 3, padding=1, bias=False),
                LayerNorm2d(neck_chans),
            )
        else:
            self.neck = nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        if head == "cls":
            self.head = ClassifierHead(self.num_features, num_classes)
        elif head == "seg":
            self.seg_head = PyramidSegHead(self.num_features, num_classes, seg_dim)
        elif head is not None:
            raise ValueError(f"head must be 'cls', 'seg' or None, not {head!r}")
        self._config: SparsityConfig | None = None
        self.apply(init_linear_weights)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    # ---- structure -----------------------------------------------------------------------------------------
    @property
    def sam_blocks(self) -> list[SamBlock]:
        """The blocks, typed (`blocks` is the timm-named nn.Sequential)."""
        return cast("list[SamBlock]", list(self.blocks))

    def group_blocks(self, group: int) -> list[SamBlock]:
        """The blocks of one group, in order (the last one is global unless the group is a trailing run)."""
        return [b for b, g in zip(self.sam_blocks, self._group_of) if g == group]

    # ---- configs -------------------------------------------------------------------------------------------
    def config_rows(self) -> list[list[PrunedWindowBlock]]:
        """The blocks of every group (a config row is a block group)."""
        return [list(self.group_blocks(g)) for g in range(len(self.depths))]

    # ---- forward -------------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/p, W/p, embed_dim): patch embedding plus the resampled absolute position embedding."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + resample_pos_embed(self.pos_embed, (int(x.shape[1]), int(x.shape[2])))
        return x

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> the NHWC output of every block (one per `feature_info` entry), stride `patch_size`."""
        return run_blocks(list(self.blocks), self.embed(x), keep_outputs=True)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/p, W/p, embed_dim): the last block's output (before the neck)."""
        return run_blocks(list(self.blocks), self.embed(x), owns_input=True)[0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, neck_chans, H/p, W/p) neck output, NCHW (timm's forward_features)."""
        return self.neck(self.forward_blocks(x).permute(0, 3, 1, 2))

    def forward_model(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits: (B, classes) for "cls", (B, classes, H, W) for "seg", neck features if no head."""
        feats = self.forward_features(x)
        if self.head_type == "seg":
            return self.seg_head(feats, x.shape[-2:])
        return self.head(feats.permute(0, 2, 3, 1)) if self.head_type == "cls" else feats


# ---- checkpoints ---------------------------------------------------------------------------------------------
def _resize_rel_pos(v: torch.Tensor, length: int) -> torch.Tensor:
    """(L, d) -> (length, d), linear along L (timm's get_rel_pos)."""
    out = F.interpolate(v.T.unsqueeze(0).float(), size=length, mode="linear")
    return out.squeeze(0).T.to(v.dtype).contiguous()


def checkpoint_filter_fn(
    sd: Mapping[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """timm samvit or original SAM (`image_encoder.*`, `mlp.lin1/2`) -> this SamViT; resizes pos_embed (bicubic)
    and relative-position tables (linear) to the model's, as timm does for other input sizes."""
    report = LoadReport()
    out: dict[str, torch.Tensor] = {}
    if any(k.startswith("image_encoder.") for k in sd):
        report.converted_from = "sam"
        dropped = sorted({k.split(".")[0] for k in sd if not k.startswith("image_encoder.")})
        if dropped:
            report.notes.append(f"dropped the SAM parts this backbone does not have: {', '.join(dropped)}")
        sd = {
            k[len("image_encoder.") :].replace("mlp.lin", "mlp.fc"): v
            for k, v in sd.items()
            if k.startswith("image_encoder.")
        }
    own = model.state_dict()
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            if k == "pos_embed" and v.dim() == 4 and v.shape[-1] == own[k].shape[-1]:
                v = resample_pos_embed(v, tuple(own[k].shape[1:3]))
                report.resized.append(k)
            elif re.search(r"attn\.rel_pos_[hw]$", k) and v.dim() == 2 and v.shape[1] == own[k].shape[1]:
                v = _resize_rel_pos(v, own[k].shape[0])
                report.resized.append(k)
        out[k] = v
    return out, report


# ---- the family and its registered sizes ----------------------------------------------------------------------
# the quick run of a plain-ViT space (`--quick --space search_spaces/sam_demo.yaml`): 4x4 tokens at 64x64
QUICK_SPACE_YAML = """\
name: quick_sam
architecture: samvit_nano
model_kwargs: {embed_dim: 16, num_heads: 2, neck_chans: 16, seg_dim: 16, window_size: 2}
resolutions: [[64, 64]]
sparsity_choices: [0.0, 0.25, 0.5, 0.75]
genes:
  - {name: w1, blocks: ["0.0", "0.1"]}
  - {name: g1, blocks: ["0.2"]}
  - {name: g2, blocks: ["1.0", "1.1", "1.2"], choices: [0.0, 0.5]}
window_sizes: [[2], [2]]
"""


def _samvit(model: nn.Module) -> SamViT:
    if not isinstance(model, SamViT):
        raise SparseSearchError(f"expected a SamViT, got {type(model).__name__}")
    return model


def _sam_blocks(model: SamViT) -> list[SamBlock]:
    return model.sam_blocks


@register_family
class SamViTFamily(ModelFamily):
    """Plain ViT with window attention (SAM / ViTDet): one map size throughout; config rows are block groups (runs
    of windowed blocks closed by a global block), see `samvit`."""

    name = "SamViT"
    label = "a SAM / plain ViT (samvit_*)"
    model_class = SamViT
    variants = ("window", "global")
    part_containers = ("blocks",)
    quick_space_yaml = QUICK_SPACE_YAML

    def depths(self, arch: dict[str, Any]) -> tuple[int, ...]:
        return block_groups(int(arch["depth"]), arch.get("global_attn_indexes", ()))

    def space_model_kwargs(self, resolutions: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """The position embedding and the global blocks' tables are built for the space's first resolution
        (a checkpoint for another size is resampled on load, as timm does); other resolutions resample at run time."""
        return {"img_size": [int(resolutions[0][0]), int(resolutions[0][1])]}

    def _grid(self, arch: dict[str, Any], resolution: tuple[int, int]) -> tuple[int, int]:
        p = int(arch.get("patch_size", 16))
        return resolution[0] // p, resolution[1] // p

    def stage_shapes(self, arch: dict[str, Any], resolution: tuple[int, int]) -> list[StageShape]:
        H, W = self._grid(arch, resolution)
        dim, heads = int(arch["embed_dim"]), int(arch["num_heads"])
        return [StageShape(i, H, W, dim, heads, d) for i, d in enumerate(self.depths(arch))]

    def _flat(self, arch: dict[str, Any], stage: int, block: int) -> int:
        return sum(self.depths(arch)[:stage]) + block

    def block_variant(self, arch: dict[str, Any], stage: int, block: int) -> str:
        return "global" if self._flat(arch, stage, block) in tuple(arch.get("global_attn_indexes", ())) else "window"

    def geometry(self, variant: str, H: int, W: int, window: int) -> WindowGeometry:
        return sam_geometry(H, W, window)

    def block_name(self, arch: dict[str, Any], stage: int, block: int) -> str:
        return f"blocks.{self._flat(arch, stage, block)}"

    def fixed_parts(self, arch: dict[str, Any], head: str | None) -> list[str]:
        return ["patch_embed", "neck", *(["head"] if head else [])]

    def model_parts(self, model: nn.Module, head: str | None) -> list[tuple[str, nn.Module]]:
        sam = _samvit(model)
        parts: list[tuple[str, nn.Module]] = [("patch_embed", sam.patch_embed)]
        parts.extend((f"blocks.{i}", blk) for i, blk in enumerate(sam.blocks))
        parts.append(("neck", sam.neck))
        return parts + head_part(sam, head)

    def block_plan(
        self, model: nn.Module, stage: int, variant: str, window: int, sparsity: float, at: PartInputs
    ) -> PartPlan:
        """A windowed block follows the one before it in its group (same window and kept count), or the previous
        group's global block (dense) / the patch embedding when it opens the group; a global block follows the
        last windowed block of its group."""
        shapes, resolution, batch = at.shapes, at.resolution, at.batch
        sam = _samvit(model)
        group = sam.group_blocks(stage)
        block = group[-1] if variant == "global" else group[0]
        block.window_size, block.sparsity = window, sparsity
        sh = shapes[stage]
        blocks = _sam_blocks(sam)
        pos = blocks.index(block)
        if pos == 0:
            return PartPlan(block, sam.embed, (batch, 3, *resolution))
        prev = blocks[pos - 1]
        same_group = prev in group
        prev.window_size, prev.sparsity = (window, sparsity) if same_group else (prev.window_size, 0.0)
        return PartPlan(block, prev, (batch, sh.H, sh.W, sh.dim))

    def fixed_plan(self, model: nn.Module, name: str, at: PartInputs) -> PartPlan:
        """The patch embedding (with the position embedding) takes the image; the neck follows the last block
        (dense), the head the neck."""
        shapes, resolution, batch, head = at.shapes, at.resolution, at.batch, at.head
        sam = _samvit(model)
        if name == "patch_embed":
            return PartPlan(sam.embed, None, (batch, 3, *resolution))
        sh = shapes[-1]
        neck = sam.neck
        if name == "neck":
            last = _sam_blocks(sam)[-1]
            last.window_size, last.sparsity = at.default_window[-1], 0.0
            return PartPlan(lambda x: neck(x.permute(0, 3, 1, 2)), last, (batch, sh.H, sh.W, sh.dim))
        if head == "cls":
            cls_head = sam.head
            return PartPlan(lambda x: cls_head(x.permute(0, 2, 3, 1)), neck, (batch, sh.dim, sh.H, sh.W))
        seg_head = sam.seg_head
        return PartPlan(lambda x: seg_head(x, resolution), neck, (batch, sh.dim, sh.H, sh.W))

    def claims_checkpoint(self, sd: Mapping[str, torch.Tensor]) -> bool:
        return any(k.endswith("attn.rel_pos_h") or k.startswith("image_encoder.blocks.") for k in sd)

    def convert_checkpoint(
        self, sd: Mapping[str, torch.Tensor], model: nn.Module
    ) -> tuple[dict[str, torch.Tensor], LoadReport]:
        return checkpoint_filter_fn(sd, model)

    def describe(self, arch: dict[str, Any]) -> str:
        g = list(arch.get("global_attn_indexes", ()))
        return (
            f"embed {arch['embed_dim']:<4} depth {arch['depth']} heads {arch['num_heads']} "
            f"window {arch['window_size']} global {g} groups {list(self.depths(arch))}"
        )


ARCHS: dict[str, dict[str, Any]] = {
    "samvit_base_patch16": dict(
        embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11), window_size=14, img_size=1024
    ),
    "samvit_large_patch16": dict(
        embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23), window_size=14, img_size=1024
    ),
    "samvit_huge_patch16": dict(
        embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31), window_size=14, img_size=1024
    ),
    # CPU-sized member: 6 blocks in two groups of (2 windowed + 1 global); 12x12 tokens at 192x192, 3x3 windows of 4.
    "samvit_nano": dict(
        embed_dim=96, depth=6, num_heads=3, global_attn_indexes=(2, 5), window_size=4, img_size=192, neck_chans=64
    ),
}
register_models(ARCHS, SamViT, SamViTFamily.name)
