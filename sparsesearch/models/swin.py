"""Window-prunable Swin Transformer, NHWC, with timm's module and parameter names.

Every block can skip its least important windows (DESIGN.md, "Window pruning, per block"); every stage can run
at any window size up to the one its relative position table was built for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from .. import ops
from ..config import SparsityConfig
from ..ops import WindowGeometry
from .heads import ClassifierHead, FPNSegHead
from .layers import DropPath, Mlp, PatchEmbed, PatchMerging, WindowAttention, init_linear_weights
from .window_block import PrunedWindowBlock, WindowPrunableModel, run_blocks

__all__ = ["SwinBlock", "SwinStage", "SwinTransformer"]


class SwinBlock(PrunedWindowBlock):
    """One (shifted) window attention block that can prune windows (`PrunedWindowBlock`).

    Attention adds the relative position bias of the window size in use (the centre crop of a table built for
    `max_window`) and, on shifted blocks, the shift mask.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        max_window: int,
        shifted: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.shifted = shifted
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, max_window, qkv_bias)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = DropPath(drop_path)

    def geometry(self, H: int, W: int) -> WindowGeometry:
        return WindowGeometry.create(H, W, self.window_size, self.shifted)

    def attend_windows(self, y: torch.Tensor, g: WindowGeometry, rows: torch.Tensor | None) -> torch.Tensor:
        """(Bw, N, C) -> (Bw, N, C): windowed attention with the position bias and (shifted) the shift mask."""
        return self.attn(y, g.wh, g.ww, ops.shift_mask(g, y.device), rows)


class SwinStage(nn.Module):
    """Optional patch merging, then `depth` blocks alternating regular and shifted windows."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        max_window: int,
        downsample: bool,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: Sequence[float] = (),
    ) -> None:
        super().__init__()
        self.dim = out_dim
        self.max_window = max_window
        self.downsample = PatchMerging(dim, out_dim) if downsample else nn.Identity()
        dpr = list(drop_path) or [0.0] * depth
        self.blocks = nn.Sequential(
            *[
                SwinBlock(out_dim, num_heads, window_size, max_window, i % 2 == 1, mlp_ratio, qkv_bias, dpr[i])
                for i in range(depth)
            ]
        )

    @property
    def swin_blocks(self) -> list[SwinBlock]:
        """The blocks, typed (`blocks` is the timm-named nn.Sequential)."""
        return cast("list[SwinBlock]", list(self.blocks))

    @property
    def window_size(self) -> int:
        return self.swin_blocks[0].window_size

    @window_size.setter
    def window_size(self, value: int) -> None:
        for blk in self.swin_blocks:
            blk.window_size = value

    def forward(self, x: torch.Tensor, owns_input: bool = False) -> torch.Tensor:
        """(B, H, W, C_in) -> (B, H', W', C_out). The input is left untouched unless `owns_input`."""
        x_in = x
        x = self.downsample(x)
        return run_blocks(list(self.blocks), x, owns_input=owns_input or x is not x_in)[0]


class SwinTransformer(WindowPrunableModel):
    """Swin Transformer backbone with optional classification or segmentation head.

    Args:
        img_size: default input size (informational: any size is accepted at forward time).
        window_size: per-stage default window (int or 4 values).
        max_window_size: per-stage size the relative position tables are built for (>= window_size);
            defaults to window_size. A search space with larger window choices raises it.
        head: "cls" (global pool + linear, timm's `head.fc`), "seg" (light FPN, `seg_head.*`) or None.
        num_classes: classes of the head.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int] = 7,
        max_window_size: int | Sequence[int] | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        head: str | None = "cls",
        seg_dim: int = 128,
    ) -> None:
        super().__init__()
        n = len(depths)
        windows = [window_size] * n if isinstance(window_size, int) else list(window_size)
        if max_window_size is None:
            max_windows = list(windows)
        elif isinstance(max_window_size, int):
            max_windows = [max_window_size] * n
        else:
            max_windows = list(max_window_size)
        max_windows = [max(m, w) for m, w in zip(max_windows, windows)]
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_size = patch_size
        self.depths = tuple(depths)
        self.num_heads = tuple(num_heads)
        self.default_window_size = tuple(windows)
        self.max_window_size = tuple(max_windows)
        self.embed_dims = tuple(embed_dim * 2**i for i in range(n))
        self.num_features = self.embed_dims[-1]
        self.num_classes = num_classes
        self.head_type = head

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, prev, start = [], embed_dim, 0
        for i in range(n):
            stages.append(
                SwinStage(
                    prev,
                    self.embed_dims[i],
                    depths[i],
                    num_heads[i],
                    windows[i],
                    max_windows[i],
                    downsample=i > 0,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path=dpr[start : start + depths[i]],
                )
            )
            prev, start = self.embed_dims[i], start + depths[i]
        self.layers = nn.Sequential(*stages)
        # timm's feature_info: one entry per map of forward_stages (features_only=True builds on it)
        self.feature_info = [
            dict(num_chs=self.embed_dims[i], reduction=patch_size * 2**i, module=f"layers.{i}") for i in range(n)
        ]
        self.norm = nn.LayerNorm(self.num_features)
        if head == "cls":
            self.head = ClassifierHead(self.num_features, num_classes)
        elif head == "seg":
            self.seg_head = FPNSegHead(self.embed_dims, num_classes, seg_dim)
        elif head is not None:
            raise ValueError(f"head must be 'cls', 'seg' or None, not {head!r}")
        self._config: SparsityConfig | None = None
        self.apply(init_linear_weights)

    @property
    def stages(self) -> list[SwinStage]:
        """The stages, typed (`layers` is the timm-named nn.Sequential)."""
        return cast("list[SwinStage]", list(self.layers))

    # ---- configs -------------------------------------------------------------------------------------------
    def config_rows(self) -> list[list[PrunedWindowBlock]]:
        """The blocks of every stage (a config row is a stage)."""
        return [list(stage.swin_blocks) for stage in self.stages]

    # ---- forward -------------------------------------------------------------------------------------------
    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> per-stage NHWC features at strides 4, 8, 16, 32 (the last one before `norm`)."""
        x = self.patch_embed(x)
        feats = []
        for stage in self.layers:
            x = stage(x, owns_input=True)  # every stage input is an intermediate of this forward
            feats.append(x)
        return feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/32, W/32, C) normalised last-stage features (timm's forward_features)."""
        return self.norm(self.forward_stages(x)[-1])

    def forward_model(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits: (B, classes) for "cls", (B, classes, H, W) for "seg", features if no head."""
        if self.head_type == "seg":
            feats = self.forward_stages(x)
            feats[-1] = self.norm(feats[-1])
            return self.seg_head(feats, x.shape[-2:])
        features = self.forward_features(x)
        return self.head(features) if self.head_type == "cls" else features
