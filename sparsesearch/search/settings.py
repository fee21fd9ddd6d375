"""The settings of a search, declared once: `ss.search`, `run_search`, `sparsesearch evolve` (its flags are built
from these fields) and the demo all take a `SearchSettings`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import SparseSearchError
from ..options import option
from .backends import ALGORITHMS, SearchCallback, check_algorithm

__all__ = ["SearchSettings", "FINALISTS_HELP"]

FINALISTS_HELP = (
    "before choosing, time N of the configs the pick weighs on this machine, interleaved with dense, and pick by "
    "those figures: among those predicted within the budget + 10%, the ones whose accuracy ties with the best "
    "(fastest predicted first, at most half of N), then the rest of the accuracy/latency front (most accurate "
    "first), plus the baselines near the budget; a config counts as within the budget when its measured ratio to "
    "dense plus 1.5 standard errors is (0: off, the pick stands on the table's prediction)"
)


@dataclass(kw_only=True)
class SearchSettings:
    """How a search runs (everything but what it searches: space, latency, accuracy, budget, model, data)."""

    algorithm: str = option("ga", help=f"search algorithm: {', '.join(ALGORITHMS)}", metavar="NAME")
    population: int = option(32, help="configs per generation")
    generations: int = option(12, help="generations (for the sampling back ends: batches of --population)")
    seed: int = option(0, help="seed of the search")
    workers: int = option(1, help="evaluate accuracies on N local Ray workers")
    ray_address: str | None = option(None, help="evaluate on an existing Ray cluster", flag="--ray", metavar="ADDRESS")
    resume: bool = option(False, help="continue a killed search in --out from its last generation")
    overwrite: bool = option(False, help="discard a previous search in --out")
    refine: bool = option(True, help="end with a greedy neighbourhood search around the best config")
    warm_start: bool = option(
        True,
        help="(ga, nsga2) score each choice of each gene alone first and seed half the first population with the "
        "best configs an additive model of those drops finds within the budget (off: random configs only)",
    )
    finalists: int = option(0, help=FINALISTS_HELP, metavar="N")
    val_samples: int = option(64, help="validation images per accuracy estimate")
    device: str = option("cpu", help="where accuracies are evaluated (cpu, cuda)")
    tie: float | None = option(
        None,
        help="accuracies within this margin count as equal and the faster config wins (None: the accuracy "
        "function's own noise for a difference, see `search`)",
        cli=False,
    )
    flops: bool = option(True, help="count the GFLOPs of the reported configs (needs a model)", cli=False)
    metric: str | None = option(None, help="the accuracy's name in reports (default: accuracy.metric)", cli=False)
    progress: bool | Callable[[dict[str, Any]], None] = option(
        True, help="a progress bar, none, or a function called with each generation's record", cli=False
    )
    on_evaluated: Callable[[int], None] | None = option(
        None, help="called with the number of configs evaluated in each batch", cli=False
    )
    fingerprint: Mapping[str, Any] | None = option(
        None, help="extra settings a resumed search must match (the CLI adds its supernet and data)", cli=False
    )
    meta: Mapping[str, Any] | None = option(None, help="extra fields of best.json and pareto.json", cli=False)
    callbacks: Sequence[SearchCallback] = option(
        (), help="the caller's own callbacks around the search loop (`SearchCallback`)", cli=False
    )
    options: Mapping[str, Any] | None = option(
        None, help="the algorithm's own options (pymoo's algorithm or optuna's sampler keyword arguments)", cli=False
    )

    def __post_init__(self) -> None:
        check_algorithm(self.algorithm)
        if self.population < 2 or self.generations < 1:
            raise SparseSearchError("population must be at least 2 and generations at least 1")
        if self.tie is not None and not self.tie >= 0:
            raise SparseSearchError(f"tie must be a margin >= 0, got {self.tie!r}")
