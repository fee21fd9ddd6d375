"""pymoo back ends: GA (accuracy under the budget) or NSGA-II (the accuracy/latency front), asked and told a
generation at a time by the engine, which pickles the algorithm after each (so a killed search resumes at its last
generation).

Options (`run_search(..., **options)`): keyword arguments of pymoo's algorithm (e.g. `n_offsprings`,
`selection`, `survival`, `crossover`, `mutation`, `eliminate_duplicates`); the population size, sampling and
seed come from the search's own settings.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import Backend, SearchContext, check_options, keyword_names
from .problem import ChoiceMutation, FeasibleSampling, SpaceRepair, SparsityProblem
from .scoring import Scored

__all__ = ["PymooBackend"]

_OWN = ("pop_size", "sampling", "output", "repair", "seed")  # set from the search's settings


def _algorithm_class(name: str) -> Any:
    if name == "ga":
        from pymoo.algorithms.soo.nonconvex.ga import GA  # noqa: PLC0415

        return GA
    from pymoo.algorithms.moo.nsga2 import NSGA2  # noqa: PLC0415

    return NSGA2


def _allowed_options(cls: Any) -> set[str]:
    from pymoo.algorithms.base.genetic import GeneticAlgorithm  # noqa: PLC0415

    return keyword_names(cls.__init__, _OWN) | keyword_names(GeneticAlgorithm.__init__, _OWN)


def _new_algorithm(ctx: SearchContext, cls: Any) -> Any:
    problem = SparsityProblem(
        ctx.space, ctx.latency_fn, ctx.cache, ctx.budget_ms, n_obj=1 if ctx.algorithm == "ga" else 2
    )
    from pymoo.operators.crossover.ux import UniformCrossover  # noqa: PLC0415

    settings: dict[str, Any] = {
        "crossover": UniformCrossover(repair=SpaceRepair()),
        "mutation": ChoiceMutation(),
        "eliminate_duplicates": True,
        **ctx.options,
        "pop_size": ctx.population,
        "sampling": FeasibleSampling(seeds=ctx.seeds),
        "repair": SpaceRepair(),
        "seed": ctx.seed,
    }
    algo = cls(**settings)
    algo.setup(problem, termination=("n_gen", ctx.generations), verbose=False)
    return algo


class PymooBackend(Backend):
    """GA or NSGA-II (ctx.algorithm), ctx.population a generation: pymoo's own ask and tell, the scores handed to
    pymoo's evaluation through the problem; the state is the algorithm itself (pickled with dill by the engine:
    pymoo's operators hold closures), so a resumed search is the uninterrupted one."""

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        cls = _algorithm_class(ctx.algorithm)
        check_options(ctx.algorithm, ctx.options, _allowed_options(cls), f"pymoo's {cls.__name__}")
        self.algo: Any = None if ctx.resume else _new_algorithm(ctx, cls)
        self._asked: Any = None

    def ask(self) -> np.ndarray:
        self._asked = self.algo.ask()
        return np.asarray(self._asked.get("X"), dtype=np.int64)

    def tell(self, scored: Scored) -> None:
        from pymoo.core.evaluator import Evaluator  # noqa: PLC0415

        problem = self.algo.problem
        problem.told = scored
        try:
            Evaluator().eval(problem, self._asked, algorithm=self.algo)
        finally:
            problem.told = None
        self.algo.tell(infills=self._asked)

    def state(self) -> Any:
        return self.algo

    def restore(self, state: Any) -> None:
        """The pickled algorithm, rebound to this run's latency function, cache and budget."""
        ctx = self.ctx
        state.problem.bind(ctx.latency_fn, ctx.cache)
        state.problem.budget_ms = ctx.budget_ms
        self.algo = state
