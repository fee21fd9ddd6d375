"""The search back ends' interface and registry.

A back end is a function `run(ctx: SearchContext) -> generations done` that evaluates configs through
`ctx.cache` (directly or through `ctx.scorer()`), logs each generation with `ctx.log(ctx.record(gen))`, and
checkpoints under `ctx.out`. The engine looks one up by algorithm name with `get_backend`; back ends import
this module, never the engine.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SparseSearchError
from ..space import SearchSpace
from .accuracy import AccuracyCache
from .scoring import FeasibleScorer, LatencyFn
from .selection import pick_best

__all__ = ["ALGORITHMS", "Backend", "SearchContext", "check_algorithm", "check_options", "get_backend", "keyword_names"]

#: algorithm name -> (module of this package, function): imported only when chosen (optuna, Ray are optional)
_REGISTRY: dict[str, tuple[str, str]] = {
    "ga": ("pymoo_backend", "run_pymoo"),
    "nsga2": ("pymoo_backend", "run_pymoo"),
    "optuna-nsga2": ("optuna_backend", "run_optuna"),
    "optuna-tpe": ("optuna_backend", "run_optuna"),
    "tune": ("tune_backend", "run_tune"),
    "random": ("random_backend", "run_random"),
}
ALGORITHMS = tuple(_REGISTRY)


def _clock() -> float:
    """Seconds of the wall clock: what the generation log's "seconds" count from the search's start."""
    return time.time()


@dataclass
class SearchContext:
    """What every back end works with: the problem, the run's settings, where to log, and its own options
    (`options`: the algorithm's keyword arguments given to `run_search`, checked by the back end)."""

    space: SearchSpace
    latency_fn: LatencyFn
    cache: AccuracyCache
    budget_ms: float
    algorithm: str
    population: int
    generations: int
    seed: int
    out: Path | None
    resume: bool
    log: Callable[[dict[str, Any]], None]
    t0: float = field(default_factory=lambda: _clock())
    tie: float = 0.0
    seeds: np.ndarray | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def scorer(self) -> FeasibleScorer:
        """Repair, predict, and evaluate (through the cache) only the configs within the budget."""
        return FeasibleScorer(self.space, self.latency_fn, self.cache.evaluate, self.budget_ms)

    def record(self, generation: int) -> dict[str, Any]:
        """The log record of a finished generation: evaluations so far, seconds since the search started, and
        the best config within the budget so far (by `selection.pick_best`)."""
        rec: dict[str, Any] = {
            "generation": generation,
            "evaluated": len(self.cache),
            "seconds": round(_clock() - self.t0, 3),
        }
        items = self.cache.items()
        if items:
            genes = np.stack([g for g, _ in items])
            acc = np.array([a for _, a in items])
            lat = np.asarray(self.latency_fn(genes), dtype=np.float64)
            pick = pick_best(lat, acc, self.budget_ms, self.tie)
            if pick is not None:
                i = pick.index
                rec.update(best_accuracy=float(acc[i]), best_latency_ms=float(lat[i]), best_genes=genes[i].tolist())
        return rec


Backend = Callable[[SearchContext], int]


def check_algorithm(algorithm: str) -> None:
    """The one check of an algorithm name: SparseSearchError naming the choices for an unknown one."""
    if algorithm not in _REGISTRY:
        raise SparseSearchError(f"unknown algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}")


def get_backend(algorithm: str) -> Backend:
    """The back end of `algorithm` (one of ALGORITHMS)."""
    check_algorithm(algorithm)
    module, name = _REGISTRY[algorithm]
    fn: Backend = getattr(importlib.import_module(f".{module}", __package__), name)
    return fn


def keyword_names(fn: Callable[..., Any], exclude: Collection[str] = ()) -> set[str]:
    """The keyword parameters of `fn` (e.g. a sampler's or algorithm's constructor), less `exclude`."""
    params = inspect.signature(fn).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in params if p.kind in kinds and p.name != "self"} - set(exclude)


def check_options(algorithm: str, options: Mapping[str, Any], allowed: Collection[str], passed_to: str) -> None:
    """Refuse options the back end does not take (a silently ignored option is a wrong experiment)."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"it takes {', '.join(sorted(allowed))}" if allowed else "it takes none"
        raise SparseSearchError(
            f"algorithm {algorithm!r} does not take the option(s) {', '.join(unknown)} ({takes}; passed to {passed_to})"
        )
