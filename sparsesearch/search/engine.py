"""Run a latency-constrained search with pymoo (GA, NSGA-II), optuna, Ray Tune or random sampling.

Every back end works on the same pieces: the space's integer genomes, a vectorised latency predictor, and an
AccuracyCache (which persists evaluations, so a resumed search never re-evaluates a config). pymoo runs in
ask-and-tell form so that each generation can be checkpointed (pickled algorithm, written atomically) and
logged; optuna keeps its study in SQLite next to the outputs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dill
import numpy as np

from ..errors import SparseSearchError
from ..fileio import atomic_write
from ..space import SearchSpace
from .accuracy import AccuracyCache
from .problem import ChoiceMutation, FeasibleSampling, LatencyFn, SpaceRepair, SparsityProblem
from .selection import pick_best

__all__ = ["ALGORITHMS", "SearchRun", "run_search"]

ALGORITHMS = ("ga", "nsga2", "optuna-nsga2", "optuna-tpe", "tune", "random")


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
        order = ok[np.lexsort((-self.accuracy[ok], self.latency_ms[ok]))]
        front, best = [], -np.inf
        for i in order:
            if self.accuracy[i] > best:
                front.append(i)
                best = self.accuracy[i]
        return np.asarray(front, dtype=np.int64)


@dataclass
class SearchContext:
    """What every back end works with: the problem, the run's settings, and where to log."""

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
    t0: float = field(default_factory=time.time)
    tie: float = 0.0

    def record(self, generation: int) -> dict[str, Any]:
        """The log record of a finished generation (best feasible config so far)."""
        return _generation_record(generation, self.cache, self.latency_fn, self.budget_ms, self.t0, self.tie)


def _atomic_pickle(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: dill.dump(obj, f))  # pymoo's operators hold closures: plain pickle cannot


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


def _generation_record(
    gen: int, cache: AccuracyCache, latency_fn: LatencyFn, budget_ms: float, t0: float, tie: float = 0.0
) -> dict[str, Any]:
    rec: dict[str, Any] = {"generation": gen, "evaluated": len(cache), "seconds": round(time.time() - t0, 3)}
    items = cache.items()
    if items:
        genes = np.stack([g for g, _ in items])
        acc = np.array([a for _, a in items])
        lat = np.asarray(latency_fn(genes))
        pick = pick_best(lat, acc, budget_ms, tie)
        if pick is not None:
            i = pick.index
            rec.update(best_accuracy=float(acc[i]), best_latency_ms=float(lat[i]), best_genes=genes[i].tolist())
    return rec


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
    history = out / "history.jsonl" if out is not None else None
    if history is not None and not resume and history.exists():
        history.unlink()

    def log(rec: dict[str, Any]) -> None:
        rec["algorithm"] = algorithm
        _append_jsonl(history, rec)
        if on_generation is not None:
            on_generation(rec)

    ctx = SearchContext(
        space, latency_fn, accuracy, budget_ms, algorithm, population, generations, seed, out, resume, log, tie=tie
    )
    if algorithm in ("ga", "nsga2"):
        gens = _run_pymoo(ctx, seeds)
    elif algorithm == "random":
        gens = _run_random(ctx)
    elif algorithm.startswith("optuna"):
        from .optuna_backend import run_optuna  # noqa: PLC0415

        gens = run_optuna(ctx)
    else:
        from .tune_backend import run_tune  # noqa: PLC0415

        gens = run_tune(ctx, **backend_options)
    run = _collect(space, accuracy, latency_fn, budget_ms, algorithm, gens)
    run.tie = tie
    if refine and len(run.genes) and (run.latency_ms <= budget_ms).any():
        start = run.genes[run.best_index()]
        if _refine(space, latency_fn, accuracy, budget_ms, start):
            log({"generation": gens, "refined": True, **ctx.record(gens)})
            run = _collect(space, accuracy, latency_fn, budget_ms, algorithm, gens)
            run.tie = tie
    return run


def _refine(
    space: SearchSpace,
    latency_fn: LatencyFn,
    cache: AccuracyCache,
    budget_ms: float,
    start: np.ndarray,
    max_rounds: int = 20,
    max_candidates: int | None = None,
) -> bool:
    """Greedy hill-climb from `start` within the budget; True if it improved.

    Moves: one gene one step up or down, or one gene up and another down (a trade that keeps latency near the
    budget). Each round evaluates at most `max_candidates` feasible moves (default 4 * n_var), those whose
    latency is closest to the budget first.
    """
    max_candidates = max_candidates or 4 * space.n_var
    best = start.copy()
    best_acc = float(cache.evaluate(best[None])[0])
    improved = False
    for _ in range(max_rounds):
        moves = []
        for i in range(space.n_var):
            for step in (-1, 1):
                x = best.copy()
                x[i] += step
                moves.append(x)
                for j in range(space.n_var):  # trade one gene against another: stays near the budget
                    if j != i:
                        y = x.copy()
                        y[j] -= step
                        moves.append(y)
        cand = np.unique(space.repair(np.stack(moves)), axis=0)
        cand = cand[np.any(cand != best, axis=1)]
        lat = np.asarray(latency_fn(cand))
        cand, lat = cand[lat <= budget_ms], lat[lat <= budget_ms]
        if not len(cand):
            break
        cand = cand[np.argsort(-lat, kind="stable")[: max_candidates or len(cand)]]  # closest to the budget first
        acc = cache.evaluate(cand)
        j = int(np.argmax(acc))
        if acc[j] <= best_acc:
            break
        best, best_acc, improved = cand[j], float(acc[j]), True
    return improved


def _run_pymoo(ctx: SearchContext, seeds: np.ndarray | None = None) -> int:
    """GA (one objective under the budget) or NSGA-II (accuracy/latency front), asked and told a generation at
    a time, the algorithm pickled after each."""
    space, latency_fn, cache, budget_ms, algorithm = ctx.space, ctx.latency_fn, ctx.cache, ctx.budget_ms, ctx.algorithm
    population, generations, seed, out = ctx.population, ctx.generations, ctx.seed, ctx.out
    from pymoo.core.evaluator import Evaluator  # noqa: PLC0415
    from pymoo.operators.crossover.ux import UniformCrossover  # noqa: PLC0415

    state = out / "search_state.pkl" if out is not None else None
    if ctx.resume:
        if state is None or not state.is_file():
            raise SparseSearchError(f"--resume: no search checkpoint in {out} (start without --resume)")
        try:
            with open(state, "rb") as f:
                saved = dill.load(f)
        except Exception as e:  # a foreign or damaged file
            raise SparseSearchError(
                f"--resume: cannot read {state} ({type(e).__name__}); remove it to start over"
            ) from None
        if saved.get("algorithm") != algorithm or saved.get("space") != space.name:
            raise SparseSearchError(
                f"--resume: {state} is a {saved.get('algorithm')} search of space {saved.get('space')}, not {algorithm} of {space.name}"
            )
        algo = saved["state"]
        algo.problem.bind(latency_fn, cache)
        algo.problem.budget_ms = budget_ms
    else:
        problem = SparsityProblem(space, latency_fn, cache, budget_ms, n_obj=1 if algorithm == "ga" else 2)
        common = dict(
            pop_size=population,
            sampling=FeasibleSampling(seeds=seeds),
            crossover=UniformCrossover(repair=SpaceRepair()),
            mutation=ChoiceMutation(),
            repair=SpaceRepair(),
            eliminate_duplicates=True,
            seed=seed,
        )
        if algorithm == "ga":
            from pymoo.algorithms.soo.nonconvex.ga import GA  # noqa: PLC0415

            algo = GA(**common)
        else:
            from pymoo.algorithms.moo.nsga2 import NSGA2  # noqa: PLC0415

            algo = NSGA2(**common)
        algo.setup(problem, termination=("n_gen", generations), verbose=False)
    algo.termination = _termination(generations)
    evaluator = Evaluator()
    while algo.has_next():
        pop = algo.ask()
        evaluator.eval(algo.problem, pop, algorithm=algo)
        algo.tell(infills=pop)
        if state is not None:  # checkpoint before logging: a logged generation is always a saved one
            _atomic_pickle({"algorithm": algorithm, "space": space.name, "state": algo}, state)
        ctx.log(ctx.record(int(algo.n_iter) - 1))
    return int(algo.n_iter) - 1


def _termination(generations: int):
    from pymoo.termination import get_termination  # noqa: PLC0415

    return get_termination("n_gen", generations)


def _run_random(ctx: SearchContext) -> int:
    """Random search: each "generation" evaluates `population` fresh feasible random configs.

    Deterministic per (seed, generation), so a resumed run re-draws the same batches and the cache skips
    those already evaluated.
    """
    space = ctx.space
    for gen in range(1, ctx.generations + 1):
        rng = np.random.default_rng([ctx.seed, gen])
        cand = np.unique(space.sample_genes(rng, n=ctx.population * 50), axis=0)
        rng.shuffle(cand)
        feasible = cand[np.asarray(ctx.latency_fn(cand)) <= ctx.budget_ms][: ctx.population]
        if len(feasible):
            ctx.cache.evaluate(feasible)
        ctx.log(ctx.record(gen))
    return ctx.generations
