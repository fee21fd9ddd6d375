"""pymoo back ends: GA (accuracy under the budget) or NSGA-II (the accuracy/latency front), asked and told a
generation at a time, the algorithm pickled after each (so a killed search resumes at its last generation).

Options (`run_search(..., **options)`): keyword arguments of pymoo's algorithm (e.g. `n_offsprings`,
`selection`, `survival`, `crossover`, `mutation`, `eliminate_duplicates`); the population size, sampling and
seed come from the search's own settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dill

from ..errors import SparseSearchError
from ..fileio import atomic_write
from .backends import SearchContext, check_options, keyword_names
from .problem import ChoiceMutation, FeasibleSampling, SpaceRepair, SparsityProblem

__all__ = ["run_pymoo"]

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


def _atomic_pickle(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: dill.dump(obj, f))  # pymoo's operators hold closures: plain pickle cannot


def _load_state(ctx: SearchContext, state: Path | None) -> Any:
    """The algorithm pickled in `state`, rebound to this run's latency function, cache and budget."""
    if state is None or not state.is_file():
        raise SparseSearchError(f"--resume: no search checkpoint in {ctx.out} (start without --resume)")
    try:
        with open(state, "rb") as f:
            saved = dill.load(f)
    except Exception as e:  # a foreign or damaged file
        raise SparseSearchError(
            f"--resume: cannot read {state} ({type(e).__name__}); remove it to start over"
        ) from None
    if saved.get("algorithm") != ctx.algorithm or saved.get("space") != ctx.space.name:
        raise SparseSearchError(
            f"--resume: {state} is a {saved.get('algorithm')} search of space {saved.get('space')}, "
            f"not {ctx.algorithm} of {ctx.space.name}"
        )
    algo = saved["state"]
    algo.problem.bind(ctx.latency_fn, ctx.cache)
    algo.problem.budget_ms = ctx.budget_ms
    return algo


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


def run_pymoo(ctx: SearchContext) -> int:
    """GA or NSGA-II (ctx.algorithm) for ctx.generations generations of ctx.population; returns generations done."""
    from pymoo.core.evaluator import Evaluator  # noqa: PLC0415
    from pymoo.termination import get_termination  # noqa: PLC0415

    cls = _algorithm_class(ctx.algorithm)
    check_options(ctx.algorithm, ctx.options, _allowed_options(cls), f"pymoo's {cls.__name__}")
    state = ctx.out / "search_state.pkl" if ctx.out is not None else None
    algo = _load_state(ctx, state) if ctx.resume else _new_algorithm(ctx, cls)
    algo.termination = get_termination("n_gen", ctx.generations)
    if ctx.resume:  # a fresh termination knows no progress yet: without this a finished search runs one more
        algo.termination.update(algo)
    evaluator = Evaluator()
    while algo.has_next():
        pop = algo.ask()
        evaluator.eval(algo.problem, pop, algorithm=algo)
        algo.tell(infills=pop)
        if state is not None:  # checkpoint before logging: a logged generation is always a saved one
            _atomic_pickle({"algorithm": ctx.algorithm, "space": ctx.space.name, "state": algo}, state)
        ctx.log(ctx.record(int(algo.n_iter) - 1))
    return int(algo.n_iter) - 1
