"""The parts of a search space's model that a latency table is made of: stage shapes, block kinds, kept counts.

Nothing here measures anything; the profiler and the table both use it, so they agree on what a "part" is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..models.family import ModelFamily, StageShape, family_named, get_family
from ..ops import WindowGeometry, keep_count
from ..space import SearchSpace

__all__ = [
    "StageShape",
    "BlockKind",
    "stage_shapes",
    "space_family",
    "space_fingerprint",
    "space_hash",
    "kinds_and_counts",
    "block_kind",
    "window_row",
    "sparsity_for_count",
    "res_key",
    "GenomeCanon",
    "BlockShape",
]


def res_key(resolution: tuple[int, int]) -> str:
    """(512, 1024) -> '512x1024'."""
    return f"{resolution[0]}x{resolution[1]}"


@dataclass(frozen=True)
class BlockShape:
    """Where a block runs and its shape: stage (config row), window size, variant (the family's own key,
    `ModelFamily.block_variant`), the feature map H x W, its width and heads."""

    stage: int
    window: int
    variant: str
    H: int
    W: int
    dim: int
    heads: int


@dataclass(frozen=True)
class BlockKind(BlockShape):
    """Blocks that cost the same for a given kept-window count: one shape (`BlockShape`) at one resolution, of one
    family."""

    resolution: tuple[int, int]
    family: str

    @property
    def geometry(self) -> WindowGeometry:
        return family_named(self.family).geometry(self.variant, self.H, self.W, self.window)

    @property
    def num_windows(self) -> int:
        return self.geometry.num_windows

    @property
    def key(self) -> str:
        return f"{res_key(self.resolution)}/s{self.stage}/w{self.window}/{self.variant}"


def _arch(space: SearchSpace) -> dict[str, Any]:
    return space_family(space).arch(space.architecture, space.model_kwargs)


def space_family(space: SearchSpace) -> ModelFamily:
    """The model family of a space's architecture."""
    return get_family(space.architecture)


def stage_shapes(space: SearchSpace, resolution: tuple[int, int]) -> list[StageShape]:
    """Feature map size, width and heads of every stage (config row) for a (H, W) input, from the family."""
    return space_family(space).stage_shapes(_arch(space), resolution)


def window_row(space: SearchSpace, stage: int, block: int) -> int:
    """The config row whose window block `block` of row `stage` runs with (the family says; usually `stage`)."""
    return space_family(space).window_row(_arch(space), stage, block)


def block_kind(
    space: SearchSpace,
    resolution: tuple[int, int],
    stage: int,
    block: int,
    window: int,
    shapes: list[StageShape] | None = None,
) -> BlockKind:
    """The kind of block `block` of row `stage` running `window` (the window of its `window_row`) at `resolution`."""
    fam = space_family(space)
    sh = (shapes or stage_shapes(space, resolution))[stage]
    variant = fam.block_variant(_arch(space), stage, block)
    res = (int(resolution[0]), int(resolution[1]))
    return BlockKind(stage, window, variant, sh.H, sh.W, sh.dim, sh.heads, resolution=res, family=fam.name)


def space_fingerprint(space: SearchSpace) -> dict[str, Any]:
    """What decides the latency of a config and how genomes map to blocks: not the name nor the resolutions."""
    data = space.to_dict()
    data.pop("name")
    data.pop("resolutions")
    data["architecture_args"] = {k: v for k, v in sorted(_arch(space).items()) if k != "img_size"}
    data["max_window_size"] = list(space.max_window_size)
    return data


def space_hash(space: SearchSpace) -> str:
    """'sha256:<16 hex>' of `space_fingerprint` (canonical JSON)."""
    text = json.dumps(space_fingerprint(space), sort_keys=True, default=list)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def kinds_and_counts(space: SearchSpace, resolutions: Iterable[tuple[int, int]]) -> dict[BlockKind, set[int]]:
    """Every block kind the space can run at these resolutions, with the kept-window counts it can take.

    The dense count (all windows) is always included, so the dense model can be predicted whatever the
    genes allow.
    """
    out: dict[BlockKind, set[int]] = {}
    for res in resolutions:
        shapes = stage_shapes(space, res)
        for g in space.genes:
            for s, b in g.blocks:
                for w in space.window_choices[window_row(space, s, b)]:
                    kind = block_kind(space, res, s, b, w, shapes)
                    nw = kind.num_windows
                    counts = out.setdefault(kind, {nw})
                    counts.update(keep_count(p, nw) for p in g.choices)
    return out


def sparsity_for_count(k: int, num_windows: int) -> float:
    """A sparsity p with keep_count(p, num_windows) == k (0.0 for the dense count)."""
    if not 1 <= k <= num_windows:
        raise ValueError(f"kept count {k} is outside [1, {num_windows}]")
    if k == num_windows:
        return 0.0
    p = (num_windows - k + 0.25) / num_windows  # (1 - p) * nW = k - 0.25, which rounds half up to k
    assert keep_count(p, num_windows) == k, (k, num_windows, p)
    return p


class GenomeCanon:
    """Maps genomes to the one genome that stands for their model: each sparsity gene to its smallest choice that
    keeps the same number of windows in every block of the gene, at the genome's resolution and window sizes.

    Sparsities that round to the same kept count run the same model (`keep_count`): 0.7 and 0.8 both keep one of
    the 4 windows of the demo's stage 3 at 256x256. A search that tells them apart evaluates one model twice and
    shows it twice. Picklable (plain arrays): pymoo's checkpoint keeps it with the problem.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.n_genes = len(space.genes)
        self.stages = np.array([g.stage for g in space.genes], dtype=np.int64)
        most = max(len(g.choices) for g in space.genes)
        windows = max(len(c) for c in space.window_choices)
        # canon[r, g, w, c]: the canonical choice of gene g's choice c at resolution r with window choice w
        self.canon = np.tile(np.arange(most, dtype=np.int64), (len(space.resolutions), self.n_genes, windows, 1))
        for r, res in enumerate(space.resolutions):
            shapes = stage_shapes(space, res)
            for gi, g in enumerate(space.genes):
                for wi, w in enumerate(space.window_choices[g.stage]):
                    nws = [block_kind(space, res, st, b, w, shapes).num_windows for st, b in g.blocks]
                    first: dict[tuple[int, ...], int] = {}
                    for c, p in enumerate(g.choices):
                        self.canon[r, gi, wi, c] = first.setdefault(tuple(keep_count(p, nw) for nw in nws), c)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """(..., n_var) int genomes -> the same shape, each sparsity gene at its canonical choice."""
        X = np.array(X, dtype=np.int64, copy=True)
        flat = X.reshape(-1, X.shape[-1])
        genes = np.arange(self.n_genes)[None, :]
        w = flat[:, self.n_genes + self.stages]  # (n, n_genes): the window choice of each gene's stage
        flat[:, : self.n_genes] = self.canon[flat[:, -1:], genes, w, flat[:, : self.n_genes]]
        return X
