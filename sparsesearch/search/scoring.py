"""The one owner of "repair, predict, evaluate only the feasible": every back end scores genomes through it.

A genome is first repaired (the space's bounds and ordering rule: the repaired genome is what is evaluated and
recorded), its latency predicted (cheap, a table lookup), and only a genome within the budget has its accuracy
evaluated (expensive); one over the budget scores 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..space import SearchSpace

__all__ = ["FeasibleScorer", "LatencyFn", "Scored"]

LatencyFn = Callable[[np.ndarray], np.ndarray]
"""(n, n_var) genomes -> (n,) predicted milliseconds."""

GenomeAccuracy = Callable[[np.ndarray], np.ndarray]
"""(n, n_var) genomes -> (n,) accuracies (e.g. `AccuracyCache.evaluate`)."""


@dataclass
class Scored:
    """Figures of n genomes: genes (n, n_var) int64 as repaired, latency_ms (n,), accuracy (n,) (0 where not
    feasible), feasible (n,) bool."""

    genes: np.ndarray
    latency_ms: np.ndarray
    accuracy: np.ndarray
    feasible: np.ndarray


class FeasibleScorer:
    """Repair, predict, and evaluate only the genomes whose predicted latency is within `budget_ms`.

    Args:
        space: the search space (its `repair`).
        latency_fn: (n, n_var) genomes -> (n,) ms.
        evaluate: (n, n_var) feasible genomes -> (n,) accuracies.
        budget_ms: the latency budget.
    """

    def __init__(self, space: SearchSpace, latency_fn: LatencyFn, evaluate: GenomeAccuracy, budget_ms: float) -> None:
        self.space = space
        self.latency_fn = latency_fn
        self.evaluate = evaluate
        self.budget_ms = float(budget_ms)

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, n_var) genomes -> (repaired genomes (n, n_var), predicted latency (n,) ms); nothing evaluated."""
        genes = self.space.repair(np.atleast_2d(np.asarray(X)))
        return genes, np.asarray(self.latency_fn(genes), dtype=np.float64)

    def feasible(self, X: np.ndarray, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The repaired genomes of `X` within the budget (their order kept; the first `limit` of them) and their
        latencies; nothing evaluated."""
        genes, lat = self.predict(X)
        ok = lat <= self.budget_ms
        return genes[ok][:limit], lat[ok][:limit]

    def score(self, X: np.ndarray) -> Scored:
        """Repair and predict every genome of `X` (n, n_var); evaluate the feasible ones; 0 for the others."""
        genes, lat = self.predict(X)
        ok = lat <= self.budget_ms
        acc = np.zeros(len(genes), dtype=np.float64)
        if ok.any():
            acc[ok] = np.asarray(self.evaluate(genes[ok]), dtype=np.float64)
        return Scored(genes, lat, acc, ok)
