"""Model families describe themselves (CONTRIBUTING.md, "A model family"): what checkpoints, latency tables,
FLOPs, search spaces and the profiler need to know about a family's architecture, so that none of them names one.

A family lives in its model's file (`swin.py`, `samvit.py`, ...), which defines a `ModelFamily` subclass,
registers it with `@register_family` and its sizes with `register_model(name, family=...)`. A family turns
architecture kwargs (a registered model's defaults + a space's `model_kwargs`) into:

- `depths`: blocks per config row ("stage": Swin's stages, SamViT's block groups, Hiera's stages) and the
  default windows;
- `stage_shapes` at an input resolution: the feature map, width and heads each row's blocks see;
- `block_variant(stage, block)`: which kind of block it is (blocks of one row, window and variant cost the same for
  a kept-window count; latency tables record a kind by this key) and `geometry(variant, H, W, window)`: how such a
  block tiles its map;
- the fixed parts (everything that is not a prunable block) and the module path of every part;
- `block_plan` / `fixed_plan`: how to run one part of a built model on realistic input, for the profiler;
- its checkpoints: which state dicts are its own (`claims_checkpoint`) and how to convert them
  (`convert_checkpoint`, timm's `checkpoint_filter_fn`);
- what a search space adds to its model kwargs (`space_model_kwargs`) and a tiny space for quick runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import torch
from torch import nn

from ..errors import SparseSearchError
from ..ops import WindowGeometry
from .registry import model_defaults, model_family_name

if TYPE_CHECKING:
    from ..config import SparsityConfig
    from .checkpoint import LoadReport

__all__ = [
    "StageShape",
    "PartPlan",
    "PartInputs",
    "ModelFamily",
    "register_family",
    "families",
    "get_family",
    "family_named",
    "family_of_model",
    "checkpoint_family",
    "head_part",
    "Prunable",
    "prunable",
]


@runtime_checkable
class Prunable(Protocol):
    """A model whose window sparsity can be set: every registered backbone, and a `FeatureListNet` of one."""

    @property
    def config(self) -> SparsityConfig | None:
        """The active config (None: dense)."""

    def set_config(self, config: SparsityConfig | None) -> None:
        """Apply a sparsity config (None: the dense model)."""

    def set_kernel_backend(self, backend: Any) -> None:
        """Force the window-op backend of every block ("torch", "triton", "export") or let dispatch decide (None)."""


def prunable(model: nn.Module) -> Prunable:
    """`model` as a `Prunable`; SparseSearchError if it lacks `config`, `set_config` or `set_kernel_backend`."""
    if not isinstance(model, Prunable):
        raise SparseSearchError(
            f"{type(model).__name__} is not a prunable model (it needs config, set_config and set_kernel_backend): "
            "build it with sparsesearch.create_model"
        )
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


@dataclass(frozen=True)
class PartInputs:
    """What the profiler times a part at: the stage shapes at `resolution`, the batch, the head, and each row's
    default window (the window of the parts around a fixed part)."""

    shapes: list[StageShape]
    resolution: tuple[int, int]
    batch: int
    head: str | None
    default_window: tuple[int, ...]


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

    #: registry key (what `register_model(family=...)` names)
    name = ""
    #: how messages name the family's checkpoints and models, e.g. "a Swin Transformer (swin_*)"
    label = ""
    #: the model class `family_of_model` recognises (a subclass counts)
    model_class: type[nn.Module] = nn.Module
    variants: tuple[str, ...] = ()
    #: module lists whose children FLOP reports list one by one (e.g. Swin's `layers`)
    part_containers: tuple[str, ...] = ()
    #: a tiny search space (YAML) of this family for quick runs (`sparsesearch demo --quick`)
    quick_space_yaml = ""

    def arch(self, architecture: str, model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """A registered model's architecture kwargs with overrides."""
        return {**model_defaults(architecture), **(model_kwargs or {})}

    def depths(self, arch: dict[str, Any]) -> tuple[int, ...]:
        raise NotImplementedError

    def space_model_kwargs(self, resolutions: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """Architecture kwargs a search space adds for its resolutions (before its own `model_kwargs`)."""
        return {}

    def window_model_kwargs(self, max_windows: Sequence[int]) -> dict[str, Any]:
        """Architecture kwargs that let a model run every window a space offers (one max per row); by default
        position tables sized for the largest (`max_window_size`)."""
        return {"max_window_size": [int(w) for w in max_windows]}

    def claims_checkpoint(self, sd: Mapping[str, torch.Tensor]) -> bool:
        """Whether a state dict has this family's layout (timm's or an original release's)."""
        return False

    def convert_checkpoint(
        self, sd: Mapping[str, torch.Tensor], model: nn.Module
    ) -> tuple[dict[str, torch.Tensor], LoadReport]:
        """A state dict of this family (any layout it claims) -> `model`'s keys and shapes, with what was done."""
        raise NotImplementedError

    def default_window(self, arch: dict[str, Any]) -> tuple[int, ...]:
        w = arch["window_size"]
        return tuple([int(w)] * len(self.depths(arch))) if isinstance(w, int) else tuple(int(v) for v in w)

    def stage_shapes(self, arch: dict[str, Any], resolution: tuple[int, int]) -> list[StageShape]:
        raise NotImplementedError

    def block_variant(self, arch: dict[str, Any], stage: int, block: int) -> str:
        raise NotImplementedError

    def geometry(self, variant: str, H: int, W: int, window: int) -> WindowGeometry:
        raise NotImplementedError

    def block_prunable(self, arch: dict[str, Any], stage: int, block: int) -> bool:
        """Whether a block may take a sparsity above 0 (a block that reshapes the map, e.g., never does)."""
        return True

    def check_window_choices(self, arch: dict[str, Any], choices: Sequence[Sequence[int]]) -> None:
        """SparseSearchError if a space's window choices (one list per row) hold a window the family cannot run."""

    def window_row(self, arch: dict[str, Any], stage: int, block: int) -> int:
        """The config row whose window block `block` of row `stage` runs with (its own row unless the family says
        otherwise: SAM 2's q-pool blocks keep the previous stage's window)."""
        return stage

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
        self, model: nn.Module, stage: int, variant: str, window: int, sparsity: float, at: PartInputs
    ) -> PartPlan:
        """Set a representative block of (stage, variant) to `window` and `sparsity` and say how to time it (at the
        shapes, resolution and batch of `at`)."""
        raise NotImplementedError

    def fixed_plan(self, model: nn.Module, name: str, at: PartInputs) -> PartPlan:
        """How to time the fixed part `name` (one of `fixed_parts`) at `at`."""
        raise NotImplementedError

    def describe(self, arch: dict[str, Any]) -> str:
        """One line for `sparsesearch models`."""
        raise NotImplementedError

    def block_modules(self, model: nn.Module) -> list[nn.Module]:
        """Every prunable block of a built model, in forward order."""
        return [m for m in model.modules() if hasattr(m, "kernel_backend") and hasattr(m, "sparsity")]


def head_part(model: nn.Module, head: str | None) -> list[tuple[str, nn.Module]]:
    """[("head", the classification or segmentation head)] as `head` asks; [] for none."""
    if head == "cls":
        return [("head", cast(nn.Module, model.head))]
    if head == "seg":
        return [("head", cast(nn.Module, model.seg_head))]
    return []


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(cls: type[ModelFamily]) -> type[ModelFamily]:
    """Class decorator: a model file registers its family (one instance, under `cls.name`)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    _FAMILIES[cls.name] = cls()
    return cls


def families() -> list[ModelFamily]:
    """Every registered family."""
    return list(_FAMILIES.values())


def family_named(name: str) -> ModelFamily:
    """A family by its name (a `ModelFamily.name`, e.g. what `register_model` recorded)."""
    if name not in _FAMILIES:
        raise SparseSearchError(f"unknown model family {name!r} (known: {', '.join(_FAMILIES)})")
    return _FAMILIES[name]


def get_family(architecture: str) -> ModelFamily:
    """The family of a registered model name."""
    return family_named(model_family_name(architecture))


def family_of_model(model: nn.Module) -> ModelFamily:
    """The family of a built model (an instance of a family's `model_class`); a wrapper such as FeatureListNet is
    asked through its `backbone`."""
    inner = getattr(model, "backbone", model)
    for fam in _FAMILIES.values():
        if isinstance(inner, fam.model_class):
            return fam
    raise SparseSearchError(
        f"{type(inner).__name__} is not a model of a known family ({', '.join(_FAMILIES)}): build it with "
        "sparsesearch.create_model"
    )


def checkpoint_family(sd: Mapping[str, torch.Tensor]) -> ModelFamily | None:
    """The family whose checkpoint layout `sd` has (timm's or an original release's), None if none claims it."""
    return next((f for f in _FAMILIES.values() if f.claims_checkpoint(sd)), None)
