"""The search back ends' interface and registry.

A back end is a `Backend`: the engine's one loop (`engine.run_search`) asks it for a generation of genomes,
scores them (repair, predict, evaluate the feasible: `scoring.FeasibleScorer`), tells it the scores,
checkpoints its `state()` and logs the generation; pymoo's ask/tell and optuna's ask/tell are the models. The
engine looks one up by algorithm name with `get_backend`; back ends import this module, never the engine.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SparseSearchError
from ..space import SearchSpace
from .accuracy import AccuracyCache
from .scoring import FeasibleScorer, LatencyFn, Scored
from .selection import Pick, pick_best

if TYPE_CHECKING:
    from .engine import Choice, SearchRun

__all__ = [
    "ALGORITHMS",
    "Backend",
    "SearchCallback",
    "SearchContext",
    "check_algorithm",
    "check_options",
    "get_backend",
    "keyword_names",
]

#: algorithm name -> (module of this package, Backend class): imported only when chosen (optuna, Ray are optional)
_REGISTRY: dict[str, tuple[str, str]] = {
    "ga": ("pymoo_backend", "PymooBackend"),
    "nsga2": ("pymoo_backend", "PymooBackend"),
    "optuna-nsga2": ("optuna_backend", "OptunaBackend"),
    "optuna-tpe": ("optuna_backend", "OptunaBackend"),
    "tune": ("tune_backend", "TuneBackend"),
    "random": ("random_backend", "RandomBackend"),
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


class Backend:
    """What the engine's loop drives: `ask` a generation, `tell` its scores, `state` to checkpoint.

    Built from the context (its options checked: one the algorithm does not take is refused by name). A resumed
    search builds it with `ctx.resume` set and hands it the checkpointed state with `restore`; a back end that
    persists itself (optuna's journal) returns None from `state` and reopens its storage when built.
    """

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx

    def ask(self) -> np.ndarray:
        """(n, n_var) genomes of the next generation (the engine repairs them before scoring)."""
        raise NotImplementedError

    def tell(self, scored: Scored) -> None:
        """The scores of the genomes the last `ask` returned, in their order (`Scored.genes` as repaired)."""
        raise NotImplementedError

    def state(self) -> Any:
        """What a resumed search needs (pickled by the engine after every generation); None: nothing."""
        return None

    def restore(self, state: Any) -> None:
        """Continue from a checkpointed `state()`."""


class SearchCallback:
    """A feature around the engine's loop (pymoo's `Callback` is the model); each hook does nothing unless
    overridden, and the engine calls them on every callback in its list, in order:

    - `before` the first generation (it may evaluate configs and seed `ctx.seeds`: the warm start);
    - `generation` with each logged record (a progress bar);
    - `after` the last generation (True when it evaluated configs, so the run's record is collected again: the
      refinement);
    - `pick` on the pick among everything evaluated, which it may replace (the finalists re-time it);
    - `close` at the end, whatever happened.
    """

    def before(self, ctx: SearchContext) -> None:
        """Called once before the back end runs."""

    def generation(self, ctx: SearchContext, record: dict[str, Any]) -> None:
        """Called with each record the search logs (a generation's, or the refinement's)."""

    def after(self, ctx: SearchContext, run: SearchRun, generations: int) -> bool:
        """Called once after the back end; `run` is the engine's SearchRun. True if it evaluated configs."""
        return False

    def pick(self, ctx: SearchContext, choice: Choice, first: Pick) -> Pick:
        """Called once with what the pick weighs (`engine.Choice`) and the pick so far; returns the pick."""
        return first

    def close(self) -> None:
        """Called once at the end of the search, also when it failed."""


def check_algorithm(algorithm: str) -> None:
    """The one check of an algorithm name: SparseSearchError naming the choices for an unknown one."""
    if algorithm not in _REGISTRY:
        raise SparseSearchError(f"unknown algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}")


def get_backend(algorithm: str) -> type[Backend]:
    """The Backend class of `algorithm` (one of ALGORITHMS)."""
    check_algorithm(algorithm)
    module, name = _REGISTRY[algorithm]
    found: type[Backend] = getattr(importlib.import_module(f".{module}", __package__), name)
    return found


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
