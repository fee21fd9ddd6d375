"""Window-prunable Swin Transformer, NHWC, with timm's module and parameter names.

Every block can skip its least important windows (DESIGN.md, "Window pruning, per block"); every stage can run
at any window size up to the one its relative position table was built for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..config import SparsityConfig
from ..ops import WindowGeometry
from .heads import ClassifierHead, FPNSegHead
from .layers import DropPath, Mlp, PatchEmbed, PatchMerging, WindowAttention, config_applied, init_linear_weights
from .pruned_path import ScoreCarry, fused_pruned_forward, token_scores, window_scores

__all__ = ["SwinBlock", "SwinStage", "SwinTransformer"]

#: The real-token MLP path pays for its row gather and copy-back only when at least this share of the kept
#: windows' positions is padding (measured on CPU: Swin-T at 512, uniform 0.5 gains, 0.7 with little padding loses).
PAD_SKIP_MIN = 0.1


def _window_partition(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, Hp, Wp, C) -> (B*nW, wh*ww, C), windows row-major."""
    B, H, W, C = x.shape
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def _window_reverse(w: torch.Tensor, wh: int, ww: int, H: int, W: int) -> torch.Tensor:
    """(B*nW, wh*ww, C) -> (B, H, W, C) for the padded H, W."""
    C = w.shape[-1]
    x = w.view(-1, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


class SwinBlock(nn.Module):
    """One (shifted) window attention block that can prune windows.

    `sparsity` (a float in [0, 1)) and `window_size` are set by the owning model's `set_config`.
    `skip_padded_tokens` (class-wide; a benchmark switch) lets a pruned block run norm2 + MLP on the real tokens
    of its kept windows only; `fused_pruned_path` (class-wide; a benchmark switch) lets it run the whole block on
    those tokens in inference (`pruned_path.fused_pruned_forward`; compiled: unpadded maps only); the output is
    the same either way.
    """

    skip_padded_tokens: bool = True
    fused_pruned_path: bool = True
    carry_scores: bool = True

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
        self.sparsity = 0.0
        self.kernel_backend: ops.Backend | None = None  # None: ops dispatch decides
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, max_window, qkv_bias)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = DropPath(drop_path)

    def geometry(self, H: int, W: int) -> WindowGeometry:
        return WindowGeometry.create(H, W, self.window_size, self.shifted)

    def forward(self, x: torch.Tensor, owns_input: bool = False, carry: ScoreCarry | None = None) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C).

        `owns_input=True` declares that x is not used after this call, so in inference the pruned path may
        write the kept windows straight into x instead of copying every pruned token (the model does this).
        `carry` (given by the stage) passes token scores from one block's output to the next block's scoring.
        """
        geom = self.geometry(int(x.shape[1]), int(x.shape[2]))  # int(): sizes are tensors when ONNX-traced
        if self.sparsity > 0.0:
            k = ops.keep_count(self.sparsity, geom.num_windows)
            if k < geom.num_windows:
                if self._fused_ok(x, geom):
                    return self._forward_fused(x, geom, k, owns_input, carry)
                out = self._forward_pruned(x, geom, k, owns_input)
                if carry is not None:
                    carry.set(None, None)
                return out
        if carry is not None:
            carry.set(None, None)
        return self._forward_dense(x, geom)

    def _forward_fused(
        self, x: torch.Tensor, g: WindowGeometry, k: int, owns_input: bool, carry: ScoreCarry | None
    ) -> torch.Tensor:
        """The pruned block on the real tokens of its kept windows (`pruned_path`); scores from the carry when it
        holds those of x."""
        B, H, W, _ = x.shape
        if carry is not None and not self.carry_scores:
            carry.set(None, None)
            carry = None
        tok = carry.get(x) if carry is not None else None
        if carry is not None and not carry.wanted:  # the last block of its stage: no one reads its output's scores
            carry.set(None, None)
            carry = None
        if tok is None:
            tok = token_scores(x).reshape(B, H * W)
        idx = ops.select_windows(window_scores(tok, g), k)  # (B, k); not "export" here (see _fused_ok)
        mask, rows = ops.shift_mask(g, x.device), idx.reshape(-1)
        out = fused_pruned_forward(
            x,
            g,
            idx,
            self.norm1,
            lambda y: self.attn(y, g.wh, g.ww, mask, rows),
            self.norm2,
            self.mlp,
            inplace=owns_input and ops.can_scatter_inplace(x, x),
            tok=tok if carry is not None else None,
        )
        if carry is not None:
            carry.set(out, tok)
        return out

    def _forward_dense(self, x: torch.Tensor, g: WindowGeometry) -> torch.Tensor:
        B, H, W, C = x.shape
        y = self.norm1(x)
        if g.shifted:
            y = torch.roll(y, shifts=(-g.sh, -g.sw), dims=(1, 2))
        if g.padded:
            y = F.pad(y, (0, 0, 0, g.Wp - W, 0, g.Hp - H))
        windows = _window_partition(y, g.wh, g.ww)
        y = self.attn(windows, g.wh, g.ww, ops.shift_mask(g, x.device))
        y = _window_reverse(y, g.wh, g.ww, g.Hp, g.Wp)[:, :H, :W]
        if g.shifted:
            y = torch.roll(y, shifts=(g.sh, g.sw), dims=(1, 2))
        x = x + self.drop_path1(y)
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def _forward_pruned(self, x: torch.Tensor, g: WindowGeometry, k: int, owns_input: bool = False) -> torch.Tensor:
        B = x.shape[0]
        scores = ops.score_windows(x, g, self.kernel_backend)
        idx = ops.select_windows(scores, k, self.kernel_backend)  # (B, k)
        windows = ops.gather_windows(x, idx, g, self.kernel_backend)  # (B*k, N, C)
        y = self.norm1(windows)
        if g.padded:  # padded positions enter attention as zeros after norm1, as in the dense path
            valid = ops.window_tables(g, x.device).valid[idx]  # (B, k, N), 1 at real tokens
            y = y * valid.view(B * k, -1, 1).to(y.dtype)
        mask = ops.shift_mask(g, x.device)
        windows = windows + self.drop_path1(self.attn(y, g.wh, g.ww, mask, idx.reshape(-1)), B)
        pad = _kept_padding(g, idx, x.device) if g.padded and self._skip_padded() else None
        if pad is not None and int(pad.sum()) >= PAD_SKIP_MIN * pad.numel():
            windows = self._mlp_on_real_tokens(windows, pad)
        else:
            windows = windows + self.drop_path2(self.mlp(self.norm2(windows)), B)
        return ops.scatter_windows(x, windows, idx, g, self.kernel_backend, inplace=owns_input)

    def _skip_padded(self) -> bool:
        """Whether norm2 + MLP may run on the real tokens only: not when exporting (ONNX wants static shapes)
        nor under torch.compile (a data-dependent count breaks the graph), nor with stochastic depth active
        (DropPath groups rows by sample)."""
        return self.skip_padded_tokens and not (
            torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling()
            or (self.training and self.drop_path2.p > 0.0)
        )

    def _fused_ok(self, x: torch.Tensor, g: WindowGeometry) -> bool:
        """Whether the fused real-token path may run: inference (grad mode off) on the torch backend, no stochastic
        depth, not exporting; under torch.compile only on an unpadded map (a padded one gathers a data-dependent
        count of real tokens, which would break the graph; the general path has static shapes)."""
        backend: Any = self.kernel_backend  # typed loosely: a str here, ops.Backend in the dispatch
        if not self.fused_pruned_path or torch.is_grad_enabled() or ops.resolve_backend(x, backend) != "torch":
            return False
        if self.training and (self.drop_path1.p > 0.0 or self.drop_path2.p > 0.0):
            return False
        if torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export():
            return self.skip_padded_tokens and not g.padded
        return self._skip_padded()  # False when exporting

    def _mlp_on_real_tokens(self, windows: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """windows (B*k, N, C), pad (B, k, N) bool -> windows with norm2 + MLP + residual applied to the real
        tokens only. Padded slots keep their value: the scatter never reads them. The MLP is most of a block's
        work and a kept window at the map's border can be mostly padding (Swin-T at 512: 20 % of stage 3's and
        72 % of stage 4's padded grid)."""
        C = windows.shape[-1]
        flat = windows.reshape(-1, C)
        rows = (~pad).reshape(-1).nonzero().squeeze(1)  # (M,)
        real = flat.index_select(0, rows)
        real = real + self.mlp(self.norm2(real))
        if torch.is_grad_enabled():
            return flat.index_copy(0, rows, real).view_as(windows)
        return flat.index_copy_(0, rows, real).view_as(windows)  # `windows` is this block's own tensor


def _kept_padding(g: WindowGeometry, idx: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """(B, k, N) bool, True at the padded positions of the kept windows `idx`; None when g has no padding."""
    pad = ops.window_tables(g, device).pad
    return pad[idx] if pad is not None else None


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
        x = self.downsample(x)
        fresh = owns_input or not isinstance(self.downsample, nn.Identity)
        carry = ScoreCarry()
        for i, blk in enumerate(self.blocks):
            carry.wanted = i + 1 < len(self.blocks)
            x_in = x
            x = blk(x, owns_input=fresh, carry=carry)
            fresh = fresh or x is not x_in
        return x


class SwinTransformer(nn.Module):
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
    @property
    def config(self) -> SparsityConfig | None:
        """The active sparsity config (None = dense with the default windows)."""
        return self._config

    def set_config(self, config: SparsityConfig | None) -> None:
        """Apply a config to every block (validated against this model); None restores the dense model."""
        if config is None:
            for stage, w in zip(self.stages, self.default_window_size):
                stage.window_size = w
                for blk in stage.swin_blocks:
                    blk.sparsity = 0.0
            self._config = None
            return
        config.validate(self.depths, self.max_window_size)
        for stage, w, ps in zip(self.stages, config.window_size, config.sparsity):
            stage.window_size = w
            for blk, p in zip(stage.swin_blocks, ps):
                blk.sparsity = float(p)
        self._config = config

    def set_kernel_backend(self, backend: ops.Backend | None) -> None:
        """Force the window-op backend of every block ("torch", "triton") or let dispatch decide (None)."""
        for stage in self.stages:
            for blk in stage.swin_blocks:
                blk.kernel_backend = backend

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

    def forward(self, x: torch.Tensor, config: SparsityConfig | None = None) -> torch.Tensor:
        """(B, 3, H, W) -> logits: (B, classes) for "cls", (B, classes, H, W) for "seg", features if no head.

        `config`, when given, is applied for this call only.
        """
        if config is not None:
            with config_applied(self, config):
                return self.forward(x)
        if self.head_type == "seg":
            feats = self.forward_stages(x)
            feats[-1] = self.norm(feats[-1])
            return self.seg_head(feats, x.shape[-2:])
        features = self.forward_features(x)
        return self.head(features) if self.head_type == "cls" else features
