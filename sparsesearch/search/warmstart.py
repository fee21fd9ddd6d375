"""A warm start for the evolutionary back ends: a one-variable-at-a-time sensitivity scan and an additive surrogate.

A short evolution (the CPU demo runs 12 x 3) starting from random configs spends most of its evaluations far
from the configs that matter, the ones that spend the budget where accuracy costs least. Before the first
generation this module scores every choice of every variable alone (the densest config with that one variable
changed, through the accuracy cache: the scan is part of the search's record and a killed search does not redo
it). The drops add up to a surrogate of any config's accuracy: layers' sensitivities to pruning combine nearly
additively (on the demo supernet the surrogate's drop was within 0.05 mIoU of the real one for the best configs
it proposed). The configs the surrogate rates best within the budget, found among many random ones (predicted
latency is a cheap lookup) and then climbed on the surrogate, seed the first population; the evolution and the
final refinement then work on real accuracies.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..space import SearchSpace
from .neighbours import neighbours
from .scoring import LatencyFn

__all__ = ["scan_genomes", "drop_table", "surrogate_seeds", "warm_start"]

GenomeAccuracy = Callable[[np.ndarray], np.ndarray]


def scan_genomes(space: SearchSpace) -> np.ndarray:
    """(1 + sum of (choices - 1) over the variables, n_var) genomes: the densest config (first row), then each
    variable set to each of its other choices alone, as the space's repair leaves them."""
    base = space.encode(space.densest())
    rows = [base]
    for var, upper in enumerate(space.upper_bounds):
        for value in range(1, int(upper) + 1):
            x = base.copy()
            x[var] = value
            rows.append(space.repair(x))
    return _unique_keep_order(np.stack(rows))


def _unique_keep_order(X: np.ndarray) -> np.ndarray:
    _, first = np.unique(X, axis=0, return_index=True)
    return X[np.sort(first)]


def drop_table(space: SearchSpace, genomes: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """(n_var, max choices) accuracy drop of each variable's choices from the scan's figures.

    genomes (n, n_var), accuracy (n,): the scan (`scan_genomes`) and its accuracies; the densest config must be
    among them. Entry [v, c] is the densest config's accuracy minus that of the config differing from it only in
    variable v, set to c; 0 for the densest choice and for a choice the scan could not isolate (under an ordering
    rule the repair moves another variable too: that variable's own entry carries the drop)."""
    base = space.encode(space.densest())
    at = np.flatnonzero(np.all(genomes == base, axis=1))
    if not len(at):
        raise ValueError("the scan must include the densest config")
    top = float(accuracy[at[0]])
    table = np.zeros((space.n_var, int(space.upper_bounds.max()) + 1))
    for x, a in zip(genomes, accuracy):
        differs = np.flatnonzero(x != base)
        if len(differs) == 1:
            table[differs[0], x[differs[0]]] = top - float(a)
    return table


def surrogate_seeds(
    space: SearchSpace,
    latency_fn: LatencyFn,
    drop: np.ndarray,
    budget_ms: float,
    n: int,
    rng: np.random.Generator,
    samples: int = 20000,
    climb_rounds: int = 30,
) -> np.ndarray:
    """(<= n, n_var) distinct genomes within the budget with the smallest summed drop: the best of `samples`
    random genomes, each then climbed on the surrogate (one variable one step, or two traded) within the budget.
    Empty when no sampled genome meets the budget."""
    cand = np.unique(np.concatenate([space.sample_genes(rng, n=samples), space.encode(space.densest())[None]]), axis=0)
    lat = np.asarray(latency_fn(cand), dtype=np.float64)
    cand = cand[lat <= budget_ms]
    if not len(cand):
        return np.zeros((0, space.n_var), dtype=np.int64)
    cost = _cost(drop, cand)
    start = cand[np.argsort(cost, kind="stable")[: max(1, n)]]
    climbed = np.stack([_climb(space, latency_fn, drop, budget_ms, x, climb_rounds) for x in start])
    climbed = _unique_keep_order(climbed)
    return climbed[np.argsort(_cost(drop, climbed), kind="stable")][:n]


def _cost(drop: np.ndarray, X: np.ndarray) -> np.ndarray:
    """(n,) summed surrogate drop of genomes X (n, n_var)."""
    return drop[np.arange(X.shape[1])[None, :], X].sum(axis=1)


def _climb(
    space: SearchSpace, latency_fn: LatencyFn, drop: np.ndarray, budget_ms: float, x: np.ndarray, rounds: int
) -> np.ndarray:
    best, best_cost = x, float(_cost(drop, x[None])[0])
    for _ in range(rounds):
        moves = np.unique(space.repair(neighbours(best)), axis=0)
        moves = moves[np.asarray(latency_fn(moves), dtype=np.float64) <= budget_ms]
        if not len(moves):
            break
        cost = _cost(drop, moves)
        j = int(np.argmin(cost))
        if cost[j] >= best_cost - 1e-12:
            break
        best, best_cost = moves[j], float(cost[j])
    return best


#: fractions of the budget whose surrogate optimum also seeds the first population (`warm_start`)
LADDER = (0.97, 0.94, 0.91, 0.88)


def warm_start(
    space: SearchSpace,
    latency_fn: LatencyFn,
    accuracy: GenomeAccuracy,
    budget_ms: float,
    n: int,
    seed: int,
    ladder: tuple[float, ...] = LADDER,
) -> np.ndarray:
    """Run the scan through `accuracy` ((n, n_var) genomes -> (n,) accuracies, e.g. `AccuracyCache.evaluate`)
    and return up to `n` seed genomes for the first population: the surrogate's best within the budget
    (`surrogate_seeds`), and its best within each `ladder` fraction of it. A table errs most on the configs a
    search pushes to the budget's edge (on a 2-core VM some ran 7-10% slower than predicted); the ladder's
    configs put the accuracy/latency front just below the budget into the search's record, where the
    finalists (`search.finalists`) find the pick when the edge's configs measure over the budget."""
    genomes = scan_genomes(space)
    drop = drop_table(space, genomes, np.asarray(accuracy(genomes), dtype=np.float64))
    rng = np.random.default_rng(seed)
    steps = [surrogate_seeds(space, latency_fn, drop, budget_ms * f, 1, rng) for f in ladder[: max(0, n - 1)]]
    top = surrogate_seeds(space, latency_fn, drop, budget_ms, n - sum(len(s) for s in steps), rng)
    out = np.concatenate([top, *steps])
    return _unique_keep_order(out)[:n] if len(out) else out
