"""The search as a Ray Tune experiment: a `Tuner` with the optuna searcher behind a concurrency limit.

Each trial is one config: its latency is predicted in the trial (a table lookup), and only a config within the
budget is evaluated, by an evaluator that each trial actor builds once from `evaluator_factory` (actors are
reused across trials, so e.g. the supernet is loaded once per worker); one over the budget reports accuracy 0
with its latency, which teaches the searcher where the constraint lies. Results are folded back into the
search's AccuracyCache, so outputs look the same as for every other back end.

Options (`run_search(..., **options)`): evaluator_factory (required), workers, address, cpus_per_worker.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SparsityConfig
from ..errors import SparseSearchError
from ..space import SearchSpace
from .backends import SearchContext, check_options
from .parallel import start_ray
from .scoring import FeasibleScorer, LatencyFn

__all__ = ["run_tune"]

_OPTIONS = ("evaluator_factory", "workers", "address", "cpus_per_worker")


def _trial_class(tune: Any) -> type:
    """A Tune class trainable (defined once Ray is imported) that scores one config per trial."""

    class ConfigTrial(tune.Trainable):
        def setup(
            self,
            config: dict[str, Any],
            space: SearchSpace,
            latency_fn: LatencyFn,
            budget_ms: float,
            factory: Callable[[], Callable[[SparsityConfig], float]],
        ) -> None:
            self.space = space
            evaluate = factory()  # once per actor: e.g. loading the supernet

            def accuracy(X: np.ndarray) -> np.ndarray:
                return np.array([float(evaluate(space.decode(x))) for x in X], dtype=np.float64)

            self.scorer = FeasibleScorer(space, latency_fn, accuracy, budget_ms)

        def step(self) -> dict[str, Any]:
            genes = np.array([[self.config[f"x{i}"] for i in range(self.space.n_var)]], dtype=np.int64)
            s = self.scorer.score(genes)
            return {
                "genes": s.genes[0].tolist(),
                "latency_ms": float(s.latency_ms[0]),
                "feasible": bool(s.feasible[0]),
                "accuracy": float(s.accuracy[0]),
                "done": True,
            }

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            return True  # the next trial's config is in self.config; the evaluator is kept

    return ConfigTrial


def _tuner(ctx: SearchContext, trainable: Any, exp: Path, workers: int) -> Any:
    """A new Tuner over the space's genes, or the one of a killed experiment in `exp` (resume)."""
    from ray import tune  # noqa: PLC0415
    from ray.tune.search import ConcurrencyLimiter  # noqa: PLC0415
    from ray.tune.search.optuna import OptunaSearch  # noqa: PLC0415

    name = f"sparsesearch-{ctx.space.name}"
    if ctx.resume:
        if not (exp / name).is_dir():
            raise SparseSearchError(f"--resume: no Ray Tune experiment in {exp} (start without --resume)")
        return tune.Tuner.restore(str(exp / name), trainable=trainable, resume_errored=True)
    param_space = {f"x{i}": tune.randint(0, int(u) + 1) for i, u in enumerate(ctx.space.upper_bounds)}
    searcher = ConcurrencyLimiter(OptunaSearch(metric="accuracy", mode="max", seed=ctx.seed), max_concurrent=workers)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=ctx.population * ctx.generations,
            metric="accuracy",
            mode="max",
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(exp), verbose=0),
    )


def run_tune(ctx: SearchContext) -> int:
    """Run population x generations trials, at most `workers` at a time."""
    check_options(ctx.algorithm, ctx.options, _OPTIONS, "the Ray Tune back end")
    factory = ctx.options.get("evaluator_factory")
    workers, cpus = int(ctx.options.get("workers", 2)), int(ctx.options.get("cpus_per_worker", 1))
    if factory is None:
        raise SparseSearchError("--algorithm tune needs an evaluator factory (the supernet and data to evaluate on)")
    if ctx.out is None:
        raise SparseSearchError("--algorithm tune needs an output folder for its experiment")
    started = start_ray(ctx.options.get("address"), workers * cpus, "--algorithm tune")
    import ray  # noqa: PLC0415
    from ray import tune  # noqa: PLC0415

    try:
        trainable = tune.with_resources(
            tune.with_parameters(
                _trial_class(tune), space=ctx.space, latency_fn=ctx.latency_fn, budget_ms=ctx.budget_ms, factory=factory
            ),
            {"cpu": cpus},
        )
        results = _tuner(ctx, trainable, (ctx.out / "tune").resolve(), workers).fit()
        metrics = [results[i].metrics for i in range(len(results))]
        feasible = [m for m in metrics if m and m.get("feasible") and "genes" in m]
        if feasible:
            ctx.cache.record(
                np.array([m["genes"] for m in feasible], dtype=np.int64), [m["accuracy"] for m in feasible]
            )
        ctx.log({**ctx.record(ctx.generations), "trials": len(results)})
    finally:
        if started:
            ray.shutdown()
    return ctx.generations
