"""The search as a Ray Tune experiment: a `Tuner` with the optuna searcher behind a concurrency limit.

Each trial is one config: its latency is predicted in the trial (a table lookup), and only a config within the
budget is evaluated (by an evaluator built once per worker process from `evaluator_factory`); one over the
budget reports accuracy 0 with its latency, which teaches the searcher where the constraint lies. Results are
folded back into the search's AccuracyCache, so outputs look the same as for every other back end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..config import SparsityConfig
from ..errors import SparseSearchError
from ..space import SearchSpace
from .engine import SearchContext
from .problem import LatencyFn

__all__ = ["run_tune"]

_EVALUATORS: dict[int, Callable[[SparsityConfig], float]] = {}


def _trial(
    config: dict[str, Any], space: SearchSpace, latency_fn: LatencyFn, budget_ms: float, factory: Any
) -> dict[str, Any]:
    genes = space.repair(np.array([config[f"x{i}"] for i in range(space.n_var)], dtype=np.int64))
    lat = float(np.asarray(latency_fn(genes[None]))[0])
    result: dict[str, Any] = {"genes": genes.tolist(), "latency_ms": lat, "feasible": lat <= budget_ms}
    if lat > budget_ms:
        result["accuracy"] = 0.0
        return result
    key = id(factory)
    if key not in _EVALUATORS:  # once per worker process: e.g. loading the supernet
        _EVALUATORS[key] = factory()
    result["accuracy"] = float(_EVALUATORS[key](space.decode(genes)))
    return result


def run_tune(
    ctx: SearchContext,
    evaluator_factory: Callable[[], Callable[[SparsityConfig], float]] | None = None,
    workers: int = 2,
    address: str | None = None,
    cpus_per_worker: int = 1,
) -> int:
    """Run population x generations trials, at most `workers` at a time."""
    try:
        import ray  # noqa: PLC0415
        from ray import tune  # noqa: PLC0415
        from ray.tune.search import ConcurrencyLimiter  # noqa: PLC0415
        from ray.tune.search.optuna import OptunaSearch  # noqa: PLC0415
    except ImportError:
        raise SparseSearchError("--algorithm tune needs Ray Tune: pip install 'sparsesearch[ray]'") from None
    space, latency_fn, budget_ms, out = ctx.space, ctx.latency_fn, ctx.budget_ms, ctx.out
    if evaluator_factory is None:
        raise SparseSearchError("--algorithm tune needs an evaluator factory (the supernet and data to evaluate on)")
    if out is None:
        raise SparseSearchError("--algorithm tune needs an output folder for its experiment")
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers * cpus_per_worker, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        trainable = tune.with_resources(
            tune.with_parameters(
                _trial, space=space, latency_fn=latency_fn, budget_ms=budget_ms, factory=evaluator_factory
            ),
            {"cpu": cpus_per_worker},
        )
        exp = (out / "tune").resolve()
        name = f"sparsesearch-{space.name}"
        if ctx.resume:
            if not (exp / name).is_dir():
                raise SparseSearchError(f"--resume: no Ray Tune experiment in {exp} (start without --resume)")
            tuner = tune.Tuner.restore(str(exp / name), trainable=trainable, resume_errored=True)
        else:
            param_space = {f"x{i}": tune.randint(0, int(u) + 1) for i, u in enumerate(space.upper_bounds)}
            searcher = ConcurrencyLimiter(
                OptunaSearch(metric="accuracy", mode="max", seed=ctx.seed), max_concurrent=workers
            )
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    search_alg=searcher, num_samples=ctx.population * ctx.generations, metric="accuracy", mode="max"
                ),
                run_config=tune.RunConfig(name=name, storage_path=str(exp), verbose=0),
            )
        results = tuner.fit()
        feasible = [r.metrics for r in results if r.metrics and r.metrics.get("feasible") and "genes" in r.metrics]
        if feasible:
            ctx.cache.record(
                np.array([m["genes"] for m in feasible], dtype=np.int64), [m["accuracy"] for m in feasible]
            )
        ctx.log({**ctx.record(ctx.generations), "trials": len(results)})
    finally:
        if started:
            ray.shutdown()
    return ctx.generations
