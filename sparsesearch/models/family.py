"""Model families describe themselves (DESIGN.md): what latency tables, FLOPs, search spaces and the profiler need
to know about a family's architecture, so that none of them assumes Swin.

A family turns architecture kwargs (a registered model's defaults + a space's `model_kwargs`) into:

- `depths`: blocks per config row ("stage": Swin's stages, SamViT's block groups) and the default windows;
- `stage_shapes` at an input resolution: the feature map, width and heads each row's blocks see;
- `block_variant(stage, block)`: which kind of block it is (blocks of one row, window and variant cost the same for
  a kept-window count) and `geometry(variant, H, W, window)`: how such a block tiles its map;
- the fixed parts (everything that is not a prunable block) and the module path of every part;
- `block_plan` / `fixed_plan`: how to run one part of a built model on realistic input, for the profiler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import torch
from torch import nn

from ..errors import SparseSearchError
from ..ops import WindowGeometry
from .registry import model_defaults, model_family_name

if TYPE_CHECKING:
    from ..config import SparsityConfig
    from .samvit import SamBlock, SamViT
    from .swin import SwinBlock, SwinStage, SwinTransformer

__all__ = [
    "StageShape",
    "PartPlan",
    "ModelFamily",
    "SwinFamily",
    "SamViTFamily",
    "get_family",
    "family_named",
    "family_of_model",
    "Prunable",
    "prunable",
]


@runtime_checkable
class Prunable(Protocol):
    """A model whose window sparsity can be set: every registered backbone, and a `FeatureListNet` of one."""

    def set_config(self, config: SparsityConfig | None) -> None:
        """Apply a sparsity config (None: the dense model)."""


def prunable(model: nn.Module) -> Prunable:
    """`model` as a `Prunable`; SparseSearchError if it has no `set_config`."""
    if not isinstance(model, Prunable):
        raise SparseSearchError(f"{type(model).__name__} has no set_config: it is not a prunable model")
    return model


@dataclass(frozen=True)
class StageShape:
    """What the blocks of one config row (stage / group) see at one input resolution."""

    stage: int
    H: int
    W: int
    dim: int
    heads: int
    depth: int


@dataclass
class PartPlan:
    """How to time one part of a built model.

    `run(x)` runs the part on `x`, the output of `before` (the part that precedes it in the model) applied to a
    random tensor of shape `before_input`; with `before=None`, `x` is that random tensor itself (an image).
    """

    run: Callable[[Any], Any]
    before: Callable[[Any], Any] | None
    before_input: tuple[int, ...]


class ModelFamily:
    """Base class: one subclass per model family (see module docstring)."""

    name = ""
    variants: tuple[str, ...] = ()

    def arch(self, architecture: str, model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """A registered model's architecture kwargs with overrides."""
        return {**model_defaults(architecture), **(model_kwargs or {})}

    def depths(self, arch: dict[str, Any]) -> tuple[int, ...]:
        raise NotImplementedError

    def space_model_kwargs(self, resolutions: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """Architecture kwargs a search space adds for its resolutions (before its own `model_kwargs`)."""
        return {}

    def default_window(self, arch: dict[str, Any]) -> tuple[int, ...]:
        w = arch["window_size"]
        return tuple([int(w)] * len(self.depths(arch))) if isinstance(w, int) else tuple(int(v) for v in w)

    def stage_shapes(self, arch: dict[str, Any], resolution: tuple[int, int]) -> list[StageShape]:
        raise NotImplementedError

    def block_variant(self, arch: dict[str, Any], stage: int, block: int) -> str:
        raise NotImplementedError

    def geometry(self, variant: str, H: int, W: int, window: int) -> WindowGeometry:
        raise NotImplementedError

    def block_name(self, arch: dict[str, Any], stage: int, block: int) -> str:
        """Module path of a block (also its part name in latency tables)."""
        raise NotImplementedError

    def fixed_parts(self, arch: dict[str, Any], head: str | None) -> list[str]:
        """Names (module paths) of the parts that are not prunable blocks, in forward order."""
        raise NotImplementedError

    def model_parts(self, model: nn.Module, head: str | None) -> list[tuple[str, nn.Module]]:
        """(name, module) of every part, fixed and blocks, in forward order."""
        raise NotImplementedError

    def block_plan(
        self,
        model: nn.Module,
        stage: int,
        variant: str,
        window: int,
        sparsity: float,
        shapes: list[StageShape],
        resolution: tuple[int, int],
        batch: int,
    ) -> PartPlan:
        """Set a representative block of (stage, variant) to `window` and `sparsity` and say how to time it."""
        raise NotImplementedError

    def fixed_plan(
        self,
        model: nn.Module,
        name: str,
        resolution: tuple[int, int],
        head: str | None,
        shapes: list[StageShape],
        default_window: Sequence[int],
        batch: int,
    ) -> PartPlan:
        """How to time the fixed part `name` (one of `fixed_parts`)."""
        raise NotImplementedError

    def describe(self, arch: dict[str, Any]) -> str:
        """One line for `sparsesearch models`."""
        raise NotImplementedError

    def block_modules(self, model: nn.Module) -> list[nn.Module]:
        """Every prunable block of a built model, in forward order."""
        return [m for m in model.modules() if hasattr(m, "kernel_backend") and hasattr(m, "sparsity")]


def _win(arch_window: Any, n: int) -> list[int]:
    return [int(arch_window)] * n if isinstance(arch_window, int) else [int(w) for w in arch_window]


def _swin(model: nn.Module) -> SwinTransformer:
    from .swin import SwinTransformer  # noqa: PLC0415  (the model modules import nothing from here)

    if not isinstance(model, SwinTransformer):
        raise SparseSearchError(f"expected a SwinTransformer, got {type(model).__name__}")
    return model


def _swin_stage(model: SwinTransformer, i: int) -> SwinStage:
    return cast("SwinStage", model.layers[i])


def _swin_blocks(stage: SwinStage) -> list[SwinBlock]:
    return [cast("SwinBlock", b) for b in stage.blocks]


def _samvit(model: nn.Module) -> SamViT:
    from .samvit import SamViT  # noqa: PLC0415

    if not isinstance(model, SamViT):
        raise SparseSearchError(f"expected a SamViT, got {type(model).__name__}")
    return model


def _sam_blocks(model: SamViT) -> list[SamBlock]:
    return [cast("SamBlock", b) for b in model.blocks]


class SwinFamily(ModelFamily):
    """Swin: four stages of (regular, shifted) block pairs, patch merging between stages."""

    name = "SwinTransformer"
    variants = ("regular", "shifted")

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
        return parts + _head_part(swin, head)

    def block_plan(
        self,
        model: nn.Module,
        stage: int,
        variant: str,
        window: int,
        sparsity: float,
        shapes: list[StageShape],
        resolution: tuple[int, int],
        batch: int,
    ) -> PartPlan:
        """Regular blocks follow the stage's patch merging (the patch embedding in stage 0); shifted blocks follow
        a regular block of the same window and kept count."""
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

    def fixed_plan(
        self,
        model: nn.Module,
        name: str,
        resolution: tuple[int, int],
        head: str | None,
        shapes: list[StageShape],
        default_window: Sequence[int],
        batch: int,
    ) -> PartPlan:
        """A patch merging follows the last block of the previous stage (dense), the final norm the last block,
        the head the norm; the patch embedding takes the image."""
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
        prev.window_size, prev.sparsity = default_window[i], 0.0
        sh = shapes[i]
        return PartPlan(part, prev, (batch, sh.H, sh.W, sh.dim))

    def describe(self, arch: dict[str, Any]) -> str:
        return (
            f"embed {arch['embed_dim']:<4} depths {list(arch['depths'])} heads {list(arch['num_heads'])} "
            f"window {arch['window_size']}"
        )


class SamViTFamily(ModelFamily):
    """Plain ViT with window attention (SAM / ViTDet): one map size throughout; config rows are block groups (runs
    of windowed blocks closed by a global block), see `samvit`."""

    name = "SamViT"
    variants = ("window", "global")

    def depths(self, arch: dict[str, Any]) -> tuple[int, ...]:
        from .samvit import block_groups  # noqa: PLC0415

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
        from .samvit import sam_geometry  # noqa: PLC0415

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
        return parts + _head_part(sam, head)

    def block_plan(
        self,
        model: nn.Module,
        stage: int,
        variant: str,
        window: int,
        sparsity: float,
        shapes: list[StageShape],
        resolution: tuple[int, int],
        batch: int,
    ) -> PartPlan:
        """A windowed block follows the one before it in its group (same window and kept count), or the previous
        group's global block (dense) / the patch embedding when it opens the group; a global block follows the
        last windowed block of its group."""
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

    def fixed_plan(
        self,
        model: nn.Module,
        name: str,
        resolution: tuple[int, int],
        head: str | None,
        shapes: list[StageShape],
        default_window: Sequence[int],
        batch: int,
    ) -> PartPlan:
        """The patch embedding (with the position embedding) takes the image; the neck follows the last block
        (dense), the head the neck."""
        sam = _samvit(model)
        if name == "patch_embed":
            return PartPlan(sam.embed, None, (batch, 3, *resolution))
        sh = shapes[-1]
        neck = sam.neck
        if name == "neck":
            last = _sam_blocks(sam)[-1]
            last.window_size, last.sparsity = default_window[-1], 0.0
            return PartPlan(lambda x: neck(x.permute(0, 3, 1, 2)), last, (batch, sh.H, sh.W, sh.dim))
        if head == "cls":
            cls_head = sam.head
            return PartPlan(lambda x: cls_head(x.permute(0, 2, 3, 1)), neck, (batch, sh.dim, sh.H, sh.W))
        seg_head = sam.seg_head
        return PartPlan(lambda x: seg_head(x, resolution), neck, (batch, sh.dim, sh.H, sh.W))

    def describe(self, arch: dict[str, Any]) -> str:
        g = list(arch.get("global_attn_indexes", ()))
        return (
            f"embed {arch['embed_dim']:<4} depth {arch['depth']} heads {arch['num_heads']} "
            f"window {arch['window_size']} global {g} groups {list(self.depths(arch))}"
        )


def _head_part(model: nn.Module, head: str | None) -> list[tuple[str, nn.Module]]:
    """[("head", the classification or segmentation head)] as `head` asks; [] for none."""
    if head == "cls":
        return [("head", cast(nn.Module, model.head))]
    if head == "seg":
        return [("head", cast(nn.Module, model.seg_head))]
    return []


_FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (SwinFamily(), SamViTFamily())}


def family_named(name: str) -> ModelFamily:
    """A family by its name ("SwinTransformer", "SamViT")."""
    return _FAMILIES[name]


def get_family(architecture: str) -> ModelFamily:
    """The family of a registered model name."""
    return _FAMILIES[model_family_name(architecture)]


def family_of_model(model: nn.Module) -> ModelFamily:
    """The family of a built model: its class (or a base class) is named after a family; a wrapper such as
    FeatureListNet is asked through its `backbone`."""
    inner = getattr(model, "backbone", model)
    for cls in type(inner).__mro__:
        if cls.__name__ in _FAMILIES:
            return _FAMILIES[cls.__name__]
    raise SparseSearchError(
        f"{type(inner).__name__} is not a model of a known family ({', '.join(_FAMILIES)}): build it with "
        "sparsesearch.create_model"
    )
