"""optuna back ends: NSGA-II (accuracy up, latency down) or TPE (accuracy up), latency <= budget as a constraint.

Trials are asked in batches of `population` and told after the engine evaluated the batch, so evaluation can run
in parallel (Ray) and a generation maps onto a batch. The study lives in `out/optuna.journal` (optuna's journal
storage), so a killed search resumes with every finished trial.

Options (`run_search(..., **options)`): keyword arguments of the sampler (`optuna.samplers.NSGAIISampler` or
`TPESampler`, e.g. `mutation_prob`, `multivariate`, `n_startup_trials`); the seed (and NSGA-II's population size)
come from the search's own settings. optuna's log level is raised to WARNING while the back end asks and tells,
and put back after each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from ..errors import SparseSearchError
from ..scoped import quiet_logger
from .backends import Backend, SearchContext, check_options, keyword_names
from .scoring import Scored

__all__ = ["OptunaBackend", "quiet_optuna"]

_DIRECTIONS: tuple[Literal["maximize"], Literal["minimize"]] = ("maximize", "minimize")  # accuracy, latency


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """optuna's per-trial INFO lines off on this thread while the search runs; no logger's level changes (another
    thread's optuna study logs as before)."""
    import optuna  # noqa: PLC0415,F401  (optuna adds its log handler when imported: import it first)

    with quiet_logger("optuna"):
        yield


def _sampler(ctx: SearchContext) -> Any:
    import optuna  # noqa: PLC0415

    if ctx.algorithm == "optuna-nsga2":
        cls: Any = optuna.samplers.NSGAIISampler
        own: dict[str, Any] = {"population_size": ctx.population, "seed": ctx.seed}
        defaults: dict[str, Any] = {}
    else:
        cls = optuna.samplers.TPESampler
        own = {"seed": ctx.seed}
        defaults = {"n_startup_trials": min(ctx.population, 20)}
    check_options(ctx.algorithm, ctx.options, keyword_names(cls.__init__, own), f"optuna's {cls.__name__}")
    return cls(**{**defaults, **ctx.options, **own})


def _study(ctx: SearchContext) -> Any:
    import optuna  # noqa: PLC0415
    from optuna.storages.journal import JournalFileBackend  # noqa: PLC0415

    storage = None
    if ctx.out is not None:  # an append-only journal file: far cheaper per trial than SQLite, and crash-safe
        journal = ctx.out / "optuna.journal"
        if ctx.resume and not journal.is_file():
            raise SparseSearchError(f"--resume: no optuna study in {ctx.out} (start without --resume)")
        if not ctx.resume and journal.exists():
            journal.unlink()
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    multi = ctx.algorithm == "optuna-nsga2"
    return optuna.create_study(
        study_name=f"sparsesearch-{ctx.space.name}-{ctx.algorithm}",
        storage=storage,
        sampler=_sampler(ctx),
        directions=list(_DIRECTIONS[: 2 if multi else 1]),
        load_if_exists=ctx.resume,
    )


class OptunaBackend(Backend):
    """optuna-nsga2 or optuna-tpe (ctx.algorithm): ctx.population trials asked a generation, told once the engine
    scored them. The study persists itself (the journal in ctx.out), so `state` is None."""

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        with quiet_optuna():
            self.study = _study(ctx)
        self.multi = ctx.algorithm == "optuna-nsga2"
        self._trials: list[Any] = []

    def ask(self) -> np.ndarray:
        ctx, ub = self.ctx, self.ctx.space.upper_bounds
        with quiet_optuna():
            self._trials = [self.study.ask() for _ in range(ctx.population)]
            return np.array(
                [[t.suggest_int(f"x{i}", 0, int(ub[i])) for i in range(ctx.space.n_var)] for t in self._trials],
                dtype=np.int64,
            )

    def tell(self, scored: Scored) -> None:
        budget = self.ctx.budget_ms
        with quiet_optuna():
            for t, x, a, lat in zip(self._trials, scored.genes, scored.accuracy, scored.latency_ms):
                t.set_user_attr("genes", [int(v) for v in x])
                t.set_user_attr("latency_ms", float(lat))
                t.set_constraint("latency", float(lat - budget))  # feasible when <= 0
                self.study.tell(t, [float(a), float(lat)] if self.multi else float(a))
        self._trials = []
