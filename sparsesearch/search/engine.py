"""Run a latency-constrained search with pymoo (GA, NSGA-II), optuna, Ray Tune or random sampling.

Every back end works on the same pieces: the space's integer genomes, a vectorised latency predictor, and an
AccuracyCache (which persists evaluations, so a resumed search never re-evaluates a config). The back ends live
in their own modules behind `backends.get_backend` and only ask and tell (`backends.Backend`); this module owns the
one loop that drives them (scoring, the atomic checkpoint, the log), the pick at its end (`Choice`), and the
callbacks around both (`SearchCallback`, pymoo's `Callback` is the model):

    hook                            called                                      used by
    before(ctx)                     once, before the first generation           WarmStart: the scan, the seeds
    generation(ctx, record)         after each ask / evaluate / tell, logged    the progress bar of `search`
    after(ctx, run, generations)    once, after the last generation             Refine; `search`'s baselines
    pick(ctx, choice, first)        once, on the pick among all evaluated       Finalists (`search.finalists`)
    close()                         at the end, also when the search failed     the progress bar

Each feature is one object in the list the engine gets (`SearchSettings.callbacks`, after the warm start and the
refinement that `SearchSettings.warm_start` / `refine` add).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dill
import numpy as np

from ..config import SparsityConfig
from ..errors import SparseSearchError
from ..fileio import atomic_write
from ..space import SearchSpace
from .accuracy import AccuracyCache
from .backends import ALGORITHMS, SearchCallback, SearchContext, get_backend
from .neighbours import neighbours
from .scoring import FeasibleScorer, LatencyFn, Scored
from .selection import Pick, nondominated, pick_best
from .settings import SearchSettings
from .warmstart import scan_genomes, warm_start

if TYPE_CHECKING:
    from .records import Candidate
    from .report import Baselines

__all__ = [
    "ALGORITHMS",
    "Choice",
    "Refine",
    "SearchCallback",
    "SearchContext",
    "SearchRun",
    "WarmStart",
    "neighbours",
    "run_search",
]

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
    baselines: Baselines | None = None  # what the pick weighs beside the search's configs (`search`'s baselines)
    pick: Pick | None = None  # the pick at the search's end (`Choice.best`, then the callbacks' `pick` hooks)

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


def _collect(ctx: SearchContext, gens: int) -> SearchRun:
    """Everything the cache holds, with predicted latencies: the run's record."""
    items = ctx.cache.items()
    n_var = ctx.space.n_var
    if not items:
        empty = np.zeros((0, n_var), np.int64), np.zeros(0), np.zeros(0)
        return SearchRun(*empty, ctx.budget_ms, ctx.algorithm, gens, tie=ctx.tie)
    genes = np.stack([g for g, _ in items])
    acc = np.array([a for _, a in items])
    lat = np.asarray(ctx.latency_fn(genes), dtype=np.float64)
    return SearchRun(genes, acc, lat, ctx.budget_ms, ctx.algorithm, gens, tie=ctx.tie)


def run_search(
    space: SearchSpace,
    latency_fn: LatencyFn,
    accuracy: AccuracyCache,
    budget_ms: float,
    settings: SearchSettings | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    on_generation: Callable[[dict[str, Any]], None] | None = None,
    seeds: np.ndarray | None = None,
    **overrides: Any,
) -> SearchRun:
    """Search `space` for the most accurate config whose predicted latency is within `budget_ms`.

    Args:
        latency_fn: (n, n_var) genomes -> (n,) ms (e.g. `LatencyTable.predict_many`).
        accuracy: the cache wrapping the evaluator; its file (if any) makes evaluations survive a kill.
        settings: how the search runs (`SearchSettings`: algorithm, population x generations, seed, resume,
            refine, warm start, tie, the algorithm's own `options`); default `SearchSettings()`.
        out_dir: where checkpoints (`search_state.pkl`, `optuna.journal`) and `history.jsonl` go; None keeps all in
            memory. `settings.resume` continues from the checkpoint there (raises if there is none).
        on_generation: called with each generation's log record (progress bars).
        seeds: genomes the pymoo back ends put in their first population when they meet the budget (evolve
            passes the fastest config of the space, so a budget near the minimum still has a feasible start).
        **overrides: fields of `SearchSettings` (e.g. ``population=12``) replace the settings' values; any other
            keyword is an option of the algorithm, documented in its back-end module (pymoo's algorithm or
            optuna's sampler keyword arguments; Ray Tune: a `searcher`, or OptunaSearch's keyword arguments).
            An option the algorithm does not take raises SparseSearchError.
    Returns:
        every evaluated config (feasible ones carry real accuracies) with latency and accuracy.

    Around the loop run the callbacks (`SearchCallback`, see the module docstring): the warm start
    (`settings.warm_start`: for the pymoo back ends, score each choice of each variable alone first and seed half
    the first population from an additive surrogate, `search.warmstart`; skipped when resuming, and when the scan
    would cost more evaluations than population x generations), the refinement (`settings.refine`: a greedy +-1
    neighbourhood search around the best config), then the caller's own (`settings.callbacks`). The run's `pick`
    is `Choice.best`'s, which the callbacks' `pick` hooks may replace.
    """
    names = {f.name for f in dataclasses.fields(SearchSettings)}
    backend_options = dict((settings.options if settings is not None else None) or {})
    backend_options.update({k: v for k, v in overrides.items() if k not in names})
    s = dataclasses.replace(settings or SearchSettings(), **{k: v for k, v in overrides.items() if k in names})
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    listeners: list[Callable[[dict[str, Any]], None]] = [on_generation] if on_generation is not None else []
    ctx = SearchContext(
        space,
        latency_fn,
        accuracy,
        budget_ms,
        s.algorithm,
        s.population,
        s.generations,
        s.seed,
        out,
        s.resume,
        _logger(out, s.resume, s.algorithm, listeners),
        tie=float(s.tie or 0.0),
        seeds=seeds,
        options=backend_options,
    )
    callbacks: list[SearchCallback] = [WarmStart()] if s.warm_start and not s.resume else []
    callbacks += [Refine()] if s.refine else []
    callbacks += list(s.callbacks)
    listeners += [functools.partial(cb.generation, ctx) for cb in callbacks]
    try:
        return _run(ctx, callbacks)
    finally:
        for cb in callbacks:
            cb.close()


def _run(ctx: SearchContext, callbacks: list[SearchCallback]) -> SearchRun:
    """The callbacks' `before`, the loop, their `after` (the run's record collected again after one that
    evaluated configs, what the earlier ones put on it kept), and the pick."""
    for cb in callbacks:
        cb.before(ctx)
    gens = _drive(ctx)
    run = _collect(ctx, gens)
    for cb in callbacks:
        if cb.after(ctx, run, gens):
            run = dataclasses.replace(_collect(ctx, gens), baselines=run.baselines, extra=run.extra)
    choice = Choice.of(ctx.space, run, run.baselines)
    run.pick = choice.best()
    for cb in callbacks:
        if run.pick is not None:  # nothing within the budget: nothing to pick among
            run.pick = cb.pick(ctx, choice, run.pick)
    return run


def _drive(ctx: SearchContext) -> int:
    """The one search loop: ask the back end for a generation, score it (repair, predict, evaluate the feasible
    through the cache), tell it, checkpoint its state atomically, log; from the checkpoint when resuming. Returns
    the generations done."""
    path = ctx.out / "search_state.pkl" if ctx.out is not None else None
    backend = get_backend(ctx.algorithm)(ctx)
    generation = 0
    if ctx.resume:
        generation, state = _load_state(ctx, path)
        backend.restore(state)
    scorer = ctx.scorer()
    while generation < ctx.generations:
        X = backend.ask()
        backend.tell(scorer.score(X) if len(X) else _nothing(ctx))
        generation += 1
        if path is not None:  # checkpoint before logging: a logged generation is always a saved one
            _save_state(ctx, path, generation, backend.state())
        ctx.log(ctx.record(generation))
    return generation


@dataclass
class Choice:
    """What the pick weighs: the run's configs, then the baselines that are configs of the space (a resize
    baseline at a resolution the space does not offer stays a reference row: the supernet was not adapted for it
    and the exported model is not built for it). Entry i < len(run.genes) is the run's, the others `extra`'s."""

    space: SearchSpace
    run: SearchRun
    extra: list[Candidate]
    baselines: Baselines | None = None

    @classmethod
    def of(cls, space: SearchSpace, run: SearchRun, baselines: Baselines | None = None) -> Choice:
        """The run's configs and those of `baselines` (uniform sparsity, then resize) that are configs of `space`."""
        points = baselines.uniform_sparsity + baselines.uniform_resize if baselines is not None else []
        return cls(space, run, [p for p in points if _in_space(space, p)], baselines)

    @property
    def latency_ms(self) -> np.ndarray:
        """(n,) predicted milliseconds of every entry."""
        return np.concatenate([self.run.latency_ms, [p.latency_ms for p in self.extra]])

    @property
    def accuracy(self) -> np.ndarray:
        """(n,) accuracy of every entry."""
        return np.concatenate([self.run.accuracy, [p.accuracy for p in self.extra]])

    def config(self, i: int) -> SparsityConfig:
        """The config of entry i."""
        n = len(self.run.genes)
        return self.space.decode(self.run.genes[i]) if i < n else self.extra[i - n].config

    def label(self, i: int) -> str:
        """ "searched" for the run's entries, the baseline's own label for the others."""
        n = len(self.run.genes)
        return "searched" if i < n else self.extra[i - n].label

    def best(self) -> Pick | None:
        """The pick by `selection.pick_best` (the run's budget and tie margin); None when nothing is within the
        budget."""
        return pick_best(self.latency_ms, self.accuracy, self.run.budget_ms, self.run.tie)

    def baselines_near(self, limit_ms: float) -> list[int]:
        """Entries of the baselines a comparison at the budget is made with: per kind (uniform sparsity, uniform
        resize), the two slowest predicted within `limit_ms` (e.g. the budget plus the finalists' slack)."""
        if self.baselines is None:
            return []
        out: list[int] = []
        for kind in (self.baselines.uniform_sparsity, self.baselines.uniform_resize):
            mine = [j for j, p in enumerate(self.extra) if any(p is q for q in kind) and p.latency_ms <= limit_ms]
            out += [len(self.run.genes) + j for j in sorted(mine, key=lambda j: -self.extra[j].latency_ms)[:2]]
        return out


def _in_space(space: SearchSpace, p: Candidate) -> bool:
    """Whether `p`'s config is one of `space`'s."""
    try:
        space.encode(p.config)
    except SparseSearchError:
        return False
    return True


def _save_state(ctx: SearchContext, path: Path, generation: int, state: Any) -> None:
    """Checkpoint atomically (a kill mid-write leaves the last checkpoint), with dill: pymoo's operators hold
    closures that plain pickle cannot."""
    saved = {"algorithm": ctx.algorithm, "space": ctx.space.name, "generation": generation, "state": state}
    atomic_write(path, lambda f: dill.dump(saved, f))


def _nothing(ctx: SearchContext) -> Scored:
    """The scores of an empty generation."""
    n = ctx.space.n_var
    return Scored(np.zeros((0, n), np.int64), np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool))


def _load_state(ctx: SearchContext, path: Path | None) -> tuple[int, Any]:
    """(generations done, the back end's state) from the checkpoint in `path`; SparseSearchError when there is
    none, it cannot be read, or it is another search's."""
    if path is None or not path.is_file():
        raise SparseSearchError(f"--resume: no search checkpoint in {ctx.out} (start without --resume)")
    try:
        with open(path, "rb") as f:
            saved = dill.load(f)
    except Exception as e:  # a foreign or damaged file
        raise SparseSearchError(f"--resume: cannot read {path} ({type(e).__name__}); remove it to start over") from None
    if not isinstance(saved, dict) or saved.get("algorithm") != ctx.algorithm or saved.get("space") != ctx.space.name:
        found = saved if isinstance(saved, dict) else {}
        raise SparseSearchError(
            f"--resume: {path} is a {found.get('algorithm')} search of space {found.get('space')}, "
            f"not {ctx.algorithm} of {ctx.space.name}"
        )
    state = saved.get("state")
    return int(saved.get("generation", int(getattr(state, "n_iter", 1) or 1) - 1)), state


class WarmStart(SearchCallback):
    """Seed the first population from a sensitivity scan (pymoo back ends only; `search.warmstart`); the run's
    `extra["warm_start_scan"]` counts the configs the scan evaluated."""

    def __init__(self) -> None:
        self.scanned = 0

    def before(self, ctx: SearchContext) -> None:
        scan = len(scan_genomes(ctx.space))
        if ctx.algorithm not in WARM_STARTED or scan > ctx.population * ctx.generations:
            return
        seeds = warm_start(ctx.space, ctx.latency_fn, ctx.cache.evaluate, ctx.budget_ms, ctx.population // 2, ctx.seed)
        ctx.seeds = seeds if ctx.seeds is None else np.concatenate([seeds, ctx.seeds])
        self.scanned = scan

    def after(self, ctx: SearchContext, run: SearchRun, generations: int) -> bool:
        run.extra["warm_start_scan"] = self.scanned  # the configs the scan evaluated (0: skipped)
        return False


class Refine(SearchCallback):
    """A greedy neighbourhood search around the best config within the budget, logged as a "refined" record."""

    def after(self, ctx: SearchContext, run: SearchRun, generations: int) -> bool:
        if not len(run.genes) or not (run.latency_ms <= ctx.budget_ms).any():
            return False
        if not _refine(ctx.scorer(), run.genes[run.best_index()]):
            return False
        ctx.log({"generation": generations, "refined": True, **ctx.record(generations)})
        return True


def _logger(
    out: Path | None, resume: bool, algorithm: str, listeners: list[Callable[[dict[str, Any]], None]]
) -> Callable[[dict[str, Any]], None]:
    """The generation log: appended to out/history.jsonl (started afresh unless resuming) and passed on to the
    listeners (the caller's on_generation, the callbacks' `generation`)."""
    history = out / "history.jsonl" if out is not None else None
    if history is not None and not resume and history.exists():
        history.unlink()

    def log(rec: dict[str, Any]) -> None:
        rec["algorithm"] = algorithm
        _append_jsonl(history, rec)
        for listen in listeners:
            listen(rec)

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
