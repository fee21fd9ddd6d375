"""optuna back ends: NSGA-II (accuracy up, latency down) or TPE (accuracy up), latency <= budget as a constraint.

Trials are asked in batches of `population` and told after the batch is evaluated, so evaluation can run in
parallel (Ray) and a generation maps onto a batch. The study lives in `out/optuna.journal` (optuna's journal storage), so a killed
search resumes with every finished trial.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import SparseSearchError
from ..space import SearchSpace
from .accuracy import AccuracyCache
from .problem import LatencyFn

__all__ = ["run_optuna"]


def run_optuna(
    space: SearchSpace,
    latency_fn: LatencyFn,
    cache: AccuracyCache,
    budget_ms: float,
    algorithm: str,
    population: int,
    generations: int,
    seed: int,
    out: Path | None,
    resume: bool,
    log: Callable[[dict[str, Any]], None],
) -> int:
    import optuna  # noqa: PLC0415

    from .engine import _generation_record  # noqa: PLC0415

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    multi = algorithm == "optuna-nsga2"
    if multi:
        sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
        directions = ["maximize", "minimize"]
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(population, 20))
        directions = ["maximize"]
    storage = None
    if out is not None:  # an append-only journal file: far cheaper per trial than SQLite, and crash-safe
        journal = out / "optuna.journal"
        if resume and not journal.is_file():
            raise SparseSearchError(f"--resume: no optuna study in {out} (start without --resume)")
        if not resume and journal.exists():
            journal.unlink()
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(
        study_name=f"sparsesearch-{space.name}-{algorithm}",
        storage=storage,
        sampler=sampler,
        directions=directions,
        load_if_exists=resume,
    )
    ub = space.upper_bounds
    t0 = time.time()
    done = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    for gen in range(done // population + 1, generations + 1):
        trials = [study.ask() for _ in range(population)]
        X = np.array([[t.suggest_int(f"x{i}", 0, int(ub[i])) for i in range(space.n_var)] for t in trials])
        X = space.repair(X)  # the ordering rule: the repaired genome is what is evaluated and recorded
        lat = np.asarray(latency_fn(X), dtype=np.float64)
        feasible = lat <= budget_ms
        acc = np.zeros(len(X))
        if feasible.any():
            acc[feasible] = cache.evaluate(X[feasible])
        for t, x, a, l in zip(trials, X, acc, lat):
            t.set_user_attr("genes", [int(v) for v in x])
            t.set_user_attr("latency_ms", float(l))
            t.set_constraint("latency", float(l - budget_ms))  # feasible when <= 0
            study.tell(t, [float(a), float(l)] if multi else float(a))
        log(_generation_record(gen, cache, latency_fn, budget_ms, t0))
    return generations
