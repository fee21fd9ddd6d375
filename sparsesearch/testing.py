"""Helpers for tests and examples: a tiny search space with a closed-form latency and accuracy, so a search's
answer can be checked against exhaustive enumeration."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import SparsityConfig
from .errors import SparseSearchError
from .space import SearchSpace

if TYPE_CHECKING:
    from .search.settings import SearchSettings

__all__ = [
    "toy_architecture",
    "toy_space_yaml",
    "toy_space",
    "toy_latency",
    "toy_accuracy",
    "toy_config_latency",
    "exhaustive_best",
    "quick_profile_args",
    "quick_settings",
    "tiny_supernet",
]

#: what the toy space needs of a model: four rows of two blocks, every block prunable
TOY_DEPTHS = (2, 2, 2, 2)

_TOY_SPACE_YAML = """\
name: toy
architecture: {architecture}
resolutions: [[64, 64]]
sparsity_choices: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
genes:
  - {name: a, blocks: ["0.0", "0.1"]}
  - {name: b, blocks: ["1.0", "1.1"]}
  - {name: c, blocks: ["2.0"]}
  - {name: d, blocks: ["2.1"]}
  - {name: e, blocks: ["3.0", "3.1"]}
"""
_COST = np.array([4.0, 3.0, 2.0, 2.0, 1.0])  # ms a gene costs when dense
_SENS = np.array([0.5, 0.8, 1.5, 1.0, 2.0])  # how much accuracy a gene loses when pruned


def toy_architecture() -> str:
    """The first registered model (by name) with four rows of two blocks that all prune: the toy's latency and
    accuracy are closed-form, so any such model serves; the families say which ones are."""
    from .models import list_models  # noqa: PLC0415
    from .models.family import get_family  # noqa: PLC0415

    for name in list_models():
        family = get_family(name)
        arch = family.arch(name)
        depths = family.depths(arch)
        if tuple(depths) == TOY_DEPTHS and all(
            family.block_prunable(arch, s, j) for s, d in enumerate(depths) for j in range(d)
        ):
            return name
    raise SparseSearchError(f"no registered model has {len(TOY_DEPTHS)} rows of 2 prunable blocks")


def toy_space_yaml() -> str:
    """The toy space's YAML: five genes over `toy_architecture()`'s eight blocks, nine choices each."""
    return _TOY_SPACE_YAML.replace("{architecture}", toy_architecture())


def toy_space(folder: str | Path) -> SearchSpace:
    """Write the toy space YAML into `folder` and load it (59,049 configs)."""
    path = Path(folder) / "toy.yaml"
    path.write_text(toy_space_yaml())
    return SearchSpace.load(path)


def _gene_sparsity(X: np.ndarray) -> np.ndarray:
    return np.asarray(X)[..., :5] / 10.0


def toy_latency(X: np.ndarray) -> np.ndarray:
    """(n, n_var) genomes -> (n,) ms: 2 ms fixed plus each gene's cost times its kept fraction."""
    return 2.0 + ((1.0 - _gene_sparsity(np.atleast_2d(X))) * _COST).sum(axis=1)


def toy_config_latency(space: SearchSpace) -> Callable[[SparsityConfig], float]:
    """`toy_latency` as a function of one config of `space` (what `search` takes as its latency)."""
    return lambda config: float(toy_latency(space.encode(config)[None])[0])


def toy_accuracy(config: SparsityConfig) -> float:
    """A smooth accuracy with an interaction between the first two genes (higher is better)."""
    p = np.array(
        [
            config.sparsity[0][0],
            config.sparsity[1][0],
            config.sparsity[2][0],
            config.sparsity[2][1],
            config.sparsity[3][0],
        ]
    )
    return float(1.0 - (_SENS * p**2).sum() - 0.3 * p[0] * p[1])


def exhaustive_best(space: SearchSpace, budget_ms: float) -> tuple[np.ndarray, float]:
    """The true optimum of the toy problem under a budget, by enumerating every genome."""
    n_genes = len(space.genes)
    rest = [0] * (space.n_var - n_genes)
    X = np.array([list(g) + rest for g in itertools.product(*(range(len(g.choices)) for g in space.genes))])
    lat = toy_latency(X)
    X = X[lat <= budget_ms]
    acc = np.array([toy_accuracy(space.decode(x)) for x in X])
    i = int(np.argmax(acc))
    return X[i], float(acc[i])


def quick_profile_args(space: str | Path, resolution: str, out: str | Path, *extra: str) -> list[str]:
    """`sparsesearch profile` arguments for a table in seconds (one thread, one repeat and round, two calibration
    configs, no cache flush, the allocator as it is, no progress bar): what a test needs, not a usable table."""
    quick = ["--threads", "1", "--warmup", "0", "--repeats", "1", "--rounds", "1", "--calibration", "2"]
    quick += ["--flush-mb", "0", "--default-malloc", "--no-progress"]
    return ["profile", "--space", str(space), "--resolution", resolution, *quick, "--out", str(out), *extra]


def quick_settings(population: int, generations: int, **overrides: Any) -> SearchSettings:
    """The settings of a small, quiet search for a test or an example: `population` x `generations`, no progress
    bar, no GFLOPs counted; `overrides` are other fields of `SearchSettings` (e.g. ``seed=1``, ``refine=False``)."""
    from .search.settings import SearchSettings  # noqa: PLC0415

    return SearchSettings(
        **{"progress": False, "flops": False, **overrides}, population=population, generations=generations
    )


def tiny_supernet(folder: str | Path, space_yaml: str, num_classes: int = 3) -> tuple[SearchSpace, Any]:
    """A supernet file of a small space, for tests: `space_yaml` written to folder/space.yaml, the space's model
    with a segmentation head of `num_classes` and seeded random weights (seed 0; the process's generators are
    left alone) saved to folder/supernet.pt, its data 8 synthetic 64x64 scenes. Returns the space and the model."""
    from .supernet import SupernetMeta, save_supernet  # noqa: PLC0415

    folder = Path(folder)
    (folder / "space.yaml").write_text(space_yaml)
    space = SearchSpace.load(folder / "space.yaml")
    kwargs = {"head": "seg", "num_classes": num_classes}
    model = space.create_model(seed=0, **kwargs)
    meta = SupernetMeta.create(
        space, kwargs, task="seg", num_classes=num_classes, data="synthetic:8", image_size=(64, 64)
    )
    save_supernet(folder / "supernet.pt", model, meta)
    return space, model
