"""optuna back ends: NSGA-II (accuracy up, latency down) or TPE (accuracy up), latency <= budget as a constraint.

Trials are asked in batches of `population` and told after the batch is evaluated, so evaluation can run in
parallel (Ray) and a generation maps onto a batch. The study lives in `out/optuna.journal` (optuna's journal storage), so a killed
search resumes with every finished trial.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import SparseSearchError
from .engine import SearchContext

__all__ = ["run_optuna"]


def run_optuna(ctx: SearchContext) -> int:
    """optuna-nsga2 or optuna-tpe (ctx.algorithm), ctx.population trials per generation."""
    import optuna  # noqa: PLC0415

    space, latency_fn, cache, budget_ms, population, out = (
        ctx.space,
        ctx.latency_fn,
        ctx.cache,
        ctx.budget_ms,
        ctx.population,
        ctx.out,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    multi = ctx.algorithm == "optuna-nsga2"
    if multi:
        sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=ctx.seed)
        directions = ["maximize", "minimize"]
    else:
        sampler = optuna.samplers.TPESampler(seed=ctx.seed, n_startup_trials=min(population, 20))
        directions = ["maximize"]
    storage = None
    if out is not None:  # an append-only journal file: far cheaper per trial than SQLite, and crash-safe
        journal = out / "optuna.journal"
        if ctx.resume and not journal.is_file():
            raise SparseSearchError(f"--resume: no optuna study in {out} (start without --resume)")
        if not ctx.resume and journal.exists():
            journal.unlink()
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(
        study_name=f"sparsesearch-{space.name}-{ctx.algorithm}",
        storage=storage,
        sampler=sampler,
        directions=directions,
        load_if_exists=ctx.resume,
    )
    ub = space.upper_bounds
    done = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    for gen in range(done // population + 1, ctx.generations + 1):
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
        ctx.log(ctx.record(gen))
    return ctx.generations
