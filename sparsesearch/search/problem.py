"""The search as a pymoo problem over the space's integer genes, with operators that respect the space's rules."""

from __future__ import annotations

from typing import Any

import numpy as np
from pymoo.core.mutation import Mutation
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling

from ..space import SearchSpace
from .accuracy import AccuracyCache
from .scoring import FeasibleScorer, LatencyFn, Scored

__all__ = ["SparsityProblem", "SpaceRepair", "FeasibleSampling", "ChoiceMutation", "LatencyFn"]


class SparsityProblem(Problem):
    """Maximise accuracy subject to predicted latency <= budget.

    n_obj=1: F = -accuracy. n_obj=2: F = (-accuracy, latency), for NSGA-II's trade-off front.
    G = latency - budget (<= 0 is feasible). Accuracy is only evaluated for feasible genomes: an infeasible one
    gets F = 0 for the accuracy objective, and pymoo ranks it by its violation anyway.

    The latency and accuracy functions are not pickled (a checkpointed algorithm stays small); reattach them
    with `bind` after loading.
    """

    def __init__(
        self,
        space: SearchSpace,
        latency_fn: LatencyFn,
        accuracy: AccuracyCache,
        budget_ms: float,
        n_obj: int = 1,
    ) -> None:
        super().__init__(
            n_var=space.n_var, n_obj=n_obj, n_ieq_constr=1, xl=np.zeros(space.n_var), xu=space.upper_bounds, vtype=int
        )
        self.space = space
        self.budget_ms = float(budget_ms)
        self.told: Scored | None = None  # the scores of the genomes being evaluated, when the engine scored them
        self.bind(latency_fn, accuracy)

    def bind(self, latency_fn: LatencyFn, accuracy: AccuracyCache) -> None:
        self.latency_fn = latency_fn
        self.accuracy = accuracy
        self.canon = accuracy.canon  # genomes of one model -> one genome (pymoo then drops the duplicates)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["latency_fn"] = None
        state["accuracy"] = None
        state["told"] = None
        return state

    def _evaluate(self, X: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        s = getattr(
            self, "told", None
        )  # scored by the engine (the same repair, prediction and evaluation): used as it is
        if s is None or s.genes.shape != np.shape(X) or not np.array_equal(s.genes, np.asarray(X, dtype=np.int64)):
            s = FeasibleScorer(self.space, self.latency_fn, self.accuracy.evaluate, self.budget_ms).score(X)
        out["F"] = np.column_stack([-s.accuracy] if self.n_obj == 1 else [-s.accuracy, s.latency_ms])
        out["G"] = (s.latency_ms - self.budget_ms)[:, None]


class SpaceRepair(Repair):
    """Round, clip, apply the space's ordering rule, and map genomes of one model to one (pymoo repair)."""

    def _do(self, problem: SparsityProblem, X: np.ndarray, **kwargs: Any) -> np.ndarray:
        canon = getattr(problem, "canon", None)
        return problem.space.repair(X) if canon is None else canon(problem.space.repair(X))


class FeasibleSampling(Sampling):
    """Initial population: the `seeds` that meet the budget first (e.g. a warm start's, or the fastest config,
    so a tight budget still starts with a feasible one), then configs drawn from the space and filtered by
    predicted latency (cheap), so the first generation spends its accuracy evaluations on configs that meet the
    budget; topped up with the fastest random ones when too few do."""

    def __init__(self, oversample: int = 200, seeds: np.ndarray | None = None) -> None:
        super().__init__()
        self.oversample = oversample
        self.seeds = None if seeds is None else np.atleast_2d(np.asarray(seeds, dtype=np.int64))

    def _do(
        self, problem: SparsityProblem, n_samples: int, *args: Any, random_state: Any = None, **kwargs: Any
    ) -> np.ndarray:
        space = problem.space
        first = np.zeros((0, space.n_var), dtype=np.int64)
        if self.seeds is not None and len(self.seeds):
            seeds = space.repair(self.seeds)
            _, at = np.unique(seeds, axis=0, return_index=True)
            seeds = seeds[np.sort(at)]
            first = seeds[np.asarray(problem.latency_fn(seeds)) <= problem.budget_ms][:n_samples]
        cand = np.unique(space.sample_genes(random_state, n=n_samples * self.oversample), axis=0)
        if len(first):
            cand = cand[~(cand[:, None, :] == first[None, :, :]).all(-1).any(1)]
        random_state.shuffle(cand)
        need = n_samples - len(first)
        lat = np.asarray(problem.latency_fn(cand))
        feasible = cand[lat <= problem.budget_ms]
        if len(feasible) >= need:
            return np.concatenate([first, feasible[:need]])
        rest = cand[lat > problem.budget_ms]
        rest = rest[np.argsort(lat[lat > problem.budget_ms])]
        return np.concatenate([first, feasible, rest[: need - len(feasible)]])


class ChoiceMutation(Mutation):
    """Mutate each gene with probability `prob_var` (default 1/n_var): half of the time one step up or down its
    ordered choices (fine-tuning near the budget), otherwise a uniform draw from all its choices (exploration).
    """

    def _do(
        self, problem: SparsityProblem, X: np.ndarray, *args: Any, random_state: Any = None, **kwargs: Any
    ) -> np.ndarray:
        X = np.array(X, dtype=np.int64, copy=True)
        p = self.get_prob_var(problem, size=len(X))
        p = np.asarray(p, dtype=float).reshape(-1, 1) if np.ndim(p) else np.full((len(X), 1), float(p))
        mask = random_state.random(X.shape) < p
        local = random_state.random(X.shape) < 0.5
        step = np.where(random_state.random(X.shape) < 0.5, -1, 1)
        xu = problem.xu.astype(np.int64)
        fresh = random_state.integers(0, xu + 1, size=X.shape)
        moved = np.clip(X + step, 0, xu)
        X[mask & local] = moved[mask & local]
        X[mask & ~local] = fresh[mask & ~local]
        return problem.space.repair(X)
