"""Window-prunable Swin Transformer, NHWC, with timm's module and parameter names.

Every block can skip its least important windows (README, "Window pruning, exactly"); every stage can run
at any window size up to the one its relative position table was built for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..config import SparsityConfig
from ..errors import SparseSearchError
from ..ops import WindowGeometry
from .checkpoint import LoadReport
from .family import ModelFamily, PartInputs, PartPlan, StageShape, head_part, register_family
from .heads import ClassifierHead, FPNSegHead
from .layers import DropPath, Mlp, PatchEmbed, PatchMerging, WindowAttention, init_linear_weights
from .registry import register_models
from .window_block import PrunedWindowBlock, WindowPrunableModel, run_blocks

__all__ = ["SwinBlock", "SwinStage", "SwinTransformer", "SwinFamily", "checkpoint_filter_fn", "ARCHS"]


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
        """(Bw, N, C) -> (Bw, N, C): windowed attention with the position bias and (shifted) the shift mask.

        Kept windows (rows given) of a shifted block take their bias from the few distinct masks (`shift_mask_kinds`:
        the gather reads (u, heads, N, N), which stays in cache, instead of (nW, heads, N, N)); not when compiling
        (`torch.unique` has a data-dependent size) or exporting (the exported graph keeps one Gather)."""
        if rows is not None and g.shifted and not (torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()):
            kinds = ops.shift_mask_kinds(g, y.device)
            if kinds is not None:
                return self.attn(y, g.wh, g.ww, kinds[0], kinds[1].index_select(0, rows))
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
        total = sum(depths)  # stochastic depth rising linearly (not a tensor: meta-device builds)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
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


# ---- checkpoints ---------------------------------------------------------------------------------------------
_DROP = re.compile(r"(relative_position_index|attn_mask|relative_coords_table)$")


def _is_microsoft(sd: Mapping[str, torch.Tensor]) -> bool:
    # Microsoft puts patch merging at the end of stages 0..2 and names the classifier `head`.
    return "head.weight" in sd or any(k.startswith("layers.0.downsample.") for k in sd)


def _resize_table(table: torch.Tensor, size: int) -> torch.Tensor:
    """((2m-1)^2, heads) -> (size, heads), bicubic over the 2-D grid as timm does."""
    src = int(round(table.shape[0] ** 0.5))
    dst = int(round(size**0.5))
    grid = table.T.reshape(1, -1, src, src).float()
    out = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return out.reshape(-1, dst * dst).T.to(table.dtype).contiguous()


def checkpoint_filter_fn(
    sd: Mapping[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """A timm or Microsoft Swin state dict -> `model`'s layout: drops derived buffers, moves Microsoft's downsample
    to the start of the next stage, renames `head.` to `head.fc.`, resizes relative position tables to the model's
    (bicubic, as timm)."""
    report = LoadReport()
    out: dict[str, torch.Tensor] = {}
    microsoft = _is_microsoft(sd)
    if microsoft:
        report.converted_from = "microsoft"
    for k, v in sd.items():
        if _DROP.search(k):
            continue
        if microsoft:
            m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
            if m:
                k = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
            elif k.startswith("head."):
                k = "head.fc." + k[len("head.") :]
        out[k] = v
    own = model.state_dict()
    for k, v in list(out.items()):
        if k.endswith("relative_position_bias_table") and k in own and own[k].shape != v.shape:
            if v.shape[1] == own[k].shape[1]:
                out[k] = _resize_table(v, own[k].shape[0])
                report.resized.append(k)
    return out, report


# ---- the family and its registered sizes ----------------------------------------------------------------------
QUICK_SPACE_YAML = """\
name: quick
architecture: swin_nano
model_kwargs: {embed_dim: 16, num_heads: [1, 1, 2, 2]}
resolutions: [[64, 64]]
sparsity_choices: [0.0, 0.25, 0.5, 0.75]
genes:
  - {name: s1, blocks: ["0.0", "0.1"]}
  - {name: s2, blocks: ["1.0", "1.1"]}
  - {name: s34, blocks: ["2.0", "2.1", "3.0", "3.1"], choices: [0.0]}
window_sizes: [[4], [4], [4], [4]]
"""


def _swin(model: nn.Module) -> SwinTransformer:
    if not isinstance(model, SwinTransformer):
        raise SparseSearchError(f"expected a SwinTransformer, got {type(model).__name__}")
    return model


def _swin_stage(model: SwinTransformer, i: int) -> SwinStage:
    return model.stages[i]


def _swin_blocks(stage: SwinStage) -> list[SwinBlock]:
    return stage.swin_blocks


@register_family
class SwinFamily(ModelFamily):
    """Swin: four stages of (regular, shifted) block pairs, patch merging between stages."""

    name = "SwinTransformer"
    label = "a Swin Transformer (swin_*)"
    model_class = SwinTransformer
    variants = ("regular", "shifted")
    part_containers = ("layers",)
    quick_space_yaml = QUICK_SPACE_YAML

    def depths(self, arch: dict[str, Any]) -> tuple[int, ...]:
        return tuple(int(d) for d in arch["depths"])

    def stage_shapes(self, arch: dict[str, Any], resolution: tuple[int, int]) -> list[StageShape]:
        patch = int(arch.get("patch_size", 4))
        embed = int(arch.get("embed_dim", 96))
        heads = tuple(arch.get("num_heads", (3, 6, 12, 24)))
        H, W = math.ceil(resolution[0] / patch), math.ceil(resolution[1] / patch)
        out = []
        for i, depth in enumerate(self.depths(arch)):
            if i > 0:
                H, W = math.ceil(H / 2), math.ceil(W / 2)
            out.append(StageShape(i, H, W, embed * 2**i, int(heads[i]), depth))
        return out

    def block_variant(self, arch: dict[str, Any], stage: int, block: int) -> str:
        return "shifted" if block % 2 == 1 else "regular"

    def geometry(self, variant: str, H: int, W: int, window: int) -> WindowGeometry:
        return WindowGeometry.create(H, W, window, variant == "shifted")

    def block_name(self, arch: dict[str, Any], stage: int, block: int) -> str:
        return f"layers.{stage}.blocks.{block}"

    def fixed_parts(self, arch: dict[str, Any], head: str | None) -> list[str]:
        n = len(self.depths(arch))
        return ["patch_embed", *(f"layers.{i}.downsample" for i in range(1, n)), "norm", *(["head"] if head else [])]

    def model_parts(self, model: nn.Module, head: str | None) -> list[tuple[str, nn.Module]]:
        swin = _swin(model)
        parts: list[tuple[str, nn.Module]] = [("patch_embed", swin.patch_embed)]
        for i in range(len(swin.layers)):
            stage = _swin_stage(swin, i)
            if i > 0:
                parts.append((f"layers.{i}.downsample", stage.downsample))
            parts.extend((f"layers.{i}.blocks.{j}", blk) for j, blk in enumerate(stage.blocks))
        parts.append(("norm", swin.norm))
        return parts + head_part(swin, head)

    def block_plan(
        self, model: nn.Module, stage: int, variant: str, window: int, sparsity: float, at: PartInputs
    ) -> PartPlan:
        """Regular blocks follow the stage's patch merging (the patch embedding in stage 0); shifted blocks follow
        a regular block of the same window and kept count."""
        shapes, resolution, batch = at.shapes, at.resolution, at.batch
        swin = _swin(model)
        blocks = _swin_blocks(_swin_stage(swin, stage))
        block = blocks[1 if variant == "shifted" else 0]
        block.window_size, block.sparsity = window, sparsity
        sh = shapes[stage]
        if variant == "shifted":
            prev = blocks[0]
            prev.window_size, prev.sparsity = window, sparsity
            return PartPlan(block, prev, (batch, sh.H, sh.W, sh.dim))
        if stage == 0:
            return PartPlan(block, swin.patch_embed, (batch, 3, *resolution))
        p = shapes[stage - 1]
        return PartPlan(block, _swin_stage(swin, stage).downsample, (batch, p.H, p.W, p.dim))

    def fixed_plan(self, model: nn.Module, name: str, at: PartInputs) -> PartPlan:
        """A patch merging follows the last block of the previous stage (dense), the final norm the last block,
        the head the norm; the patch embedding takes the image."""
        shapes, resolution, batch, head = at.shapes, at.resolution, at.batch, at.head
        swin = _swin(model)
        if name == "patch_embed":
            return PartPlan(swin.patch_embed, None, (batch, 3, *resolution))
        last = shapes[-1]
        if name == "head":
            if head == "cls":
                return PartPlan(swin.head, swin.norm, (batch, last.H, last.W, last.dim))
            others = [
                torch.randn(batch, s.H, s.W, s.dim, generator=torch.Generator().manual_seed(s.stage))
                for s in shapes[:-1]
            ]
            param = next(swin.parameters())
            others = [o.to(device=param.device, dtype=param.dtype) for o in others]
            seg_head = swin.seg_head
            return PartPlan(lambda x: seg_head([*others, x], resolution), swin.norm, (batch, last.H, last.W, last.dim))
        i = int(name.split(".")[1]) - 1 if name.startswith("layers.") else len(shapes) - 1
        part = _swin_stage(swin, i + 1).downsample if name.startswith("layers.") else swin.norm
        prev = _swin_blocks(_swin_stage(swin, i))[-1]
        prev.window_size, prev.sparsity = at.default_window[i], 0.0
        sh = shapes[i]
        return PartPlan(part, prev, (batch, sh.H, sh.W, sh.dim))

    def claims_checkpoint(self, sd: Mapping[str, torch.Tensor]) -> bool:
        return any(k.startswith("layers.") or k.endswith("relative_position_bias_table") for k in sd)

    def convert_checkpoint(
        self, sd: Mapping[str, torch.Tensor], model: nn.Module
    ) -> tuple[dict[str, torch.Tensor], LoadReport]:
        return checkpoint_filter_fn(sd, model)

    def describe(self, arch: dict[str, Any]) -> str:
        return (
            f"embed {arch['embed_dim']:<4} depths {list(arch['depths'])} heads {list(arch['num_heads'])} "
            f"window {arch['window_size']}"
        )


ARCHS: dict[str, dict[str, Any]] = {
    "swin_tiny_patch4_window7_224": dict(
        embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, img_size=224
    ),
    "swin_small_patch4_window7_224": dict(
        embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7, img_size=224
    ),
    "swin_base_patch4_window7_224": dict(
        embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7, img_size=224
    ),
    "swin_base_patch4_window12_384": dict(
        embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12, img_size=384
    ),
    # CPU-sized model for demos and tests: same structure, a fraction of the width.
    "swin_nano": dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7, img_size=224),
}
register_models(ARCHS, SwinTransformer, SwinFamily.name)
