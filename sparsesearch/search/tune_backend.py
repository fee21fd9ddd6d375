"""Ray Tune back end: a Ray Tune searcher (optuna's TPE behind Tune's `OptunaSearch` by default), asked and told a
generation at a time by the engine like every other back end.

Each generation asks the searcher for `population` trials (`Searcher.suggest`), the engine scores them (repair,
predict, evaluate the ones within the budget through the search's AccuracyCache) and tells the searcher each
trial's result (`Searcher.on_trial_complete`: accuracy, 0 over the budget, which teaches the searcher where the
constraint lies, and the predicted latency). The searcher is the back end's state, checkpointed by the engine after
every generation (so a killed search resumes at its last generation, as the others do).

Parallel trials on a Ray cluster come from the engine's evaluation, not from Tune's trial runner: with
`workers` / `ray_address` (`SearchSettings`) a generation's configs are evaluated on Ray actors
(`parallel.RayEvaluator`, each building the model once), the same for every back end. Tune's runner would add
asynchronous scheduling and its schedulers (ASHA, PBT), which act on a trial's intermediate results; a trial here
is one config's single accuracy figure, so they have nothing to act on, and its experiment folder would be a
second checkpoint beside the engine's.

Options (`run_search(..., **options)`): `searcher`, a Ray Tune `Searcher` of the caller's own (it is given the
space's genes as its search space, metric "accuracy", mode "max"), or keyword arguments of `OptunaSearch` (e.g.
`sampler`, `points_to_evaluate`); the search space, metric, mode and seed come from the search's own settings.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SparseSearchError
from .backends import Backend, SearchContext, check_options, keyword_names
from .optuna_backend import quiet_optuna
from .scoring import Scored

__all__ = ["TuneBackend"]

_OWN = ("space", "metric", "mode", "seed")  # set from the search's settings


def _param_space(ctx: SearchContext) -> dict[str, Any]:
    """The space's genes as Tune's search space: x{i} an integer in 0 .. upper bound i."""
    from ray import tune  # noqa: PLC0415

    return {f"x{i}": tune.randint(0, int(u) + 1) for i, u in enumerate(ctx.space.upper_bounds)}


def _searcher(ctx: SearchContext) -> Any:
    """The caller's searcher (options["searcher"]) set to the space's genes, or a new OptunaSearch."""
    from ray.tune.search.optuna import OptunaSearch  # noqa: PLC0415

    options = dict(ctx.options)
    given = options.pop("searcher", None)
    if given is not None:
        check_options(ctx.algorithm, options, (), "the Ray Tune back end beside a searcher")
        if not given.set_search_properties("accuracy", "max", _param_space(ctx)):
            raise SparseSearchError(f"--algorithm tune: the searcher {type(given).__name__} already has a space")
        return given
    allowed = keyword_names(OptunaSearch.__init__, _OWN) | {"searcher"}
    check_options(ctx.algorithm, options, allowed, "Ray Tune's OptunaSearch")
    return OptunaSearch(space=_param_space(ctx), metric="accuracy", mode="max", seed=ctx.seed, **options)


class TuneBackend(Backend):
    """ctx.population trials of the Ray Tune searcher a generation; the state is the searcher (pickled by the
    engine), so a resumed search is the uninterrupted one."""

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        with quiet_optuna():
            self.searcher: Any = _searcher(ctx)
        self.trials = 0  # trials asked so far: each trial's id
        self._asked: list[str] = []

    def ask(self) -> np.ndarray:
        n_var = self.ctx.space.n_var
        self._asked = [f"trial_{self.trials + i:06d}" for i in range(self.ctx.population)]
        with quiet_optuna():
            configs = [self.searcher.suggest(t) for t in self._asked]
        if any(not isinstance(c, dict) for c in configs):
            raise SparseSearchError(f"--algorithm tune: the searcher suggested no config ({configs!r})")
        self.trials += len(self._asked)
        return np.array([[int(c[f"x{i}"]) for i in range(n_var)] for c in configs], dtype=np.int64)

    def tell(self, scored: Scored) -> None:
        with quiet_optuna():
            for t, a, lat, ok in zip(self._asked, scored.accuracy, scored.latency_ms, scored.feasible):
                result = {"accuracy": float(a), "latency_ms": float(lat), "feasible": bool(ok)}
                self.searcher.on_trial_complete(t, result)
        self._asked = []

    def state(self) -> Any:
        return {"searcher": self.searcher, "trials": self.trials}

    def restore(self, state: Any) -> None:
        self.searcher, self.trials = state["searcher"], int(state["trials"])
