"""Run a latency-constrained search with pymoo (GA, NSGA-II), optuna, Ray Tune or random sampling.

Every back end works on the same pieces: the space's integer genomes, a vectorised latency predictor, and an
AccuracyCache (which persists evaluations, so a resumed search never re-evaluates a config). The back ends live
in their own modules behind `backends.get_backend`; this module runs one, then refines around its best config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SparseSearchError
from ..space import SearchSpace
from .accuracy import AccuracyCache
from .backends import ALGORITHMS, SearchContext, get_backend
from .scoring import FeasibleScorer, LatencyFn
from .selection import nondominated, pick_best

__all__ = ["ALGORITHMS", "SearchContext", "SearchRun", "run_search", "neighbours"]

#: the back ends whose first population takes seeds (`warm_start`)
WARM_STARTED = ("ga", "nsga2")


@dataclass
class SearchRun:
    """What a search evaluated: every feasible genome with its accuracy and predicted latency."""

    genes: np.ndarray  # (n, n_var) int64
    accuracy: np.ndarray  # (n,)
    latency_ms: np.ndarray  # (n,)
    budget_ms: float
    algorithm: str
    generations_done: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    tie: float = 0.0  # accuracies this close count as equal (the evaluation's noise): see selection.pick_best

    def best_index(self) -> int:
        """The best config within the budget by `selection.pick_best` (the one rule every report uses)."""
        pick = pick_best(self.latency_ms, self.accuracy, self.budget_ms, self.tie)
        if pick is None:
            raise SparseSearchError("the search evaluated no config within the budget")
        return pick.index

    def pareto_indices(self) -> np.ndarray:
        """Indices of the non-dominated (accuracy up, latency down) configs within the budget, by latency."""
        ok = np.flatnonzero(self.latency_ms <= self.budget_ms)
        return ok[nondominated(self.latency_ms[ok], self.accuracy[ok])]


def _append_jsonl(path: Path | None, record: dict[str, Any]) -> None:
    if path is None:
        return
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _collect(
    space: SearchSpace, cache: AccuracyCache, latency_fn: LatencyFn, budget_ms: float, algorithm: str, gens: int
) -> SearchRun:
    items = cache.items()
    if not items:
        return SearchRun(np.zeros((0, space.n_var), np.int64), np.zeros(0), np.zeros(0), budget_ms, algorithm, gens)
    genes = np.stack([g for g, _ in items])
    acc = np.array([a for _, a in items])
    lat = np.asarray(latency_fn(genes), dtype=np.float64)
    return SearchRun(genes, acc, lat, budget_ms, algorithm, gens)


def run_search(
    space: SearchSpace,
    latency_fn: LatencyFn,
    accuracy: AccuracyCache,
    budget_ms: float,
    *,
    algorithm: str = "ga",
    population: int = 50,
    generations: int = 20,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    on_generation: Callable[[dict[str, Any]], None] | None = None,
    refine: bool = True,
    seeds: np.ndarray | None = None,
    tie: float = 0.0,
    warm_start: bool = True,
    **backend_options: Any,
) -> SearchRun:
    """Search `space` for the most accurate config whose predicted latency is within `budget_ms`.

    Args:
        latency_fn: (n, n_var) genomes -> (n,) ms (e.g. `LatencyTable.predict_many`).
        accuracy: the cache wrapping the evaluator; its file (if any) makes evaluations survive a kill.
        population, generations: the budget of the search (population x generations evaluations at most for
            the sampling back ends).
        out_dir: where checkpoints (`search_state.pkl`, `optuna.journal`) and `history.jsonl` go; None keeps all in
            memory.
        resume: continue from the checkpoint in out_dir (raises if there is none).
        on_generation: called with each generation's log record (progress bars).
        seeds: genomes the pymoo back ends put in their first population when they meet the budget (evolve
            passes the fastest config of the space, so a budget near the minimum still has a feasible start).
        refine: finish with a greedy +-1 neighbourhood search around the best config (a few dozen evaluations
            at most per round; often recovers the last fraction of a point that a short evolution misses).
        tie: accuracies within this margin count as equal when the best config is picked (logs and result).
        warm_start: for the pymoo back ends, score each choice of each variable alone first and seed half the
            first population with the configs an additive surrogate of those drops rates best within the budget
            (`search.warmstart`; skipped when resuming, and when the scan would cost more evaluations than
            population x generations).
        **backend_options: the algorithm's own options, documented in its back-end module (pymoo's algorithm or
            optuna's sampler keyword arguments; Ray Tune: evaluator_factory, workers, address, cpus_per_worker).
            An option the algorithm does not take raises SparseSearchError.
    Returns:
        every evaluated config (feasible ones carry real accuracies) with latency and accuracy.
    """
    if algorithm not in ALGORITHMS:
        raise SparseSearchError(f"unknown algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
    if population < 2 or generations < 1:
        raise SparseSearchError("--population must be at least 2 and --generations at least 1")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    ctx = SearchContext(
        space,
        latency_fn,
        accuracy,
        budget_ms,
        algorithm,
        population,
        generations,
        seed,
        out,
        resume,
        _logger(out, resume, algorithm, on_generation),
        tie=tie,
        seeds=seeds,
        options=dict(backend_options),
    )
    scanned = _warm_start(ctx) if warm_start and not resume else 0
    gens = get_backend(algorithm)(ctx)
    run = _collect(space, accuracy, latency_fn, budget_ms, algorithm, gens)
    run.tie = tie
    if refine and len(run.genes) and (run.latency_ms <= budget_ms).any():
        if _refine(ctx.scorer(), run.genes[run.best_index()]):
            ctx.log({"generation": gens, "refined": True, **ctx.record(gens)})
            run = _collect(space, accuracy, latency_fn, budget_ms, algorithm, gens)
            run.tie = tie
    run.extra["warm_start_scan"] = scanned
    return run


def _warm_start(ctx: SearchContext) -> int:
    """Seed ctx's first population from a sensitivity scan (pymoo back ends only); the scan's size, 0 if none."""
    from .warmstart import scan_genomes, warm_start  # noqa: PLC0415

    scan = len(scan_genomes(ctx.space))
    if ctx.algorithm not in WARM_STARTED or scan > ctx.population * ctx.generations:
        return 0
    seeds = warm_start(ctx.space, ctx.latency_fn, ctx.cache.evaluate, ctx.budget_ms, ctx.population // 2, ctx.seed)
    ctx.seeds = seeds if ctx.seeds is None else np.concatenate([seeds, ctx.seeds])
    return scan


def _logger(
    out: Path | None, resume: bool, algorithm: str, on_generation: Callable[[dict[str, Any]], None] | None
) -> Callable[[dict[str, Any]], None]:
    """The generation log: appended to out/history.jsonl (started afresh unless resuming) and passed on."""
    history = out / "history.jsonl" if out is not None else None
    if history is not None and not resume and history.exists():
        history.unlink()

    def log(rec: dict[str, Any]) -> None:
        rec["algorithm"] = algorithm
        _append_jsonl(history, rec)
        if on_generation is not None:
            on_generation(rec)

    return log


def _refine(scorer: FeasibleScorer, start: np.ndarray, max_rounds: int = 20, max_candidates: int | None = None) -> bool:
    """Greedy hill-climb from `start` within the budget; True if it improved.

    Moves: one gene one step up or down, or one gene up and another down (a trade that keeps latency near the
    budget). Each round evaluates at most `max_candidates` feasible moves (default 4 * n_var), those whose
    latency is closest to the budget first.
    """
    n_var = scorer.space.n_var
    max_candidates = max_candidates or 4 * n_var
    best = start.copy()
    best_acc = float(scorer.score(best[None]).accuracy[0])
    improved = False
    for _ in range(max_rounds):
        cand, lat = scorer.feasible(np.unique(scorer.space.repair(neighbours(best)), axis=0))
        keep = np.any(cand != best, axis=1)
        cand, lat = cand[keep], lat[keep]
        if not len(cand):
            break
        cand = cand[np.argsort(-lat, kind="stable")[:max_candidates]]  # closest to the budget first
        acc = scorer.score(cand).accuracy
        j = int(np.argmax(acc))
        if acc[j] <= best_acc:
            break
        best, best_acc, improved = cand[j], float(acc[j]), True
    return improved


def neighbours(x: np.ndarray) -> np.ndarray:
    """(m, n_var) neighbours of genome x (n_var,): each gene one step up or down, alone or traded against another
    gene's opposite step (so latency stays near the budget)."""
    moves = []
    for i in range(len(x)):
        for step in (-1, 1):
            y = x.copy()
            y[i] += step
            moves.append(y)
            for j in range(len(x)):
                if j != i:
                    z = y.copy()
                    z[j] -= step
                    moves.append(z)
    return np.stack(moves)
