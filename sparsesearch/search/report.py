"""Search outputs: baselines at the same budget, pareto.json, best.json, pareto.png."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SparsityConfig
from ..errors import SparseSearchError
from ..fileio import atomic_write
from ..space import SearchSpace
from .accuracy import AccuracyCache
from .engine import Choice, SearchRun
from .problem import LatencyFn
from .records import BestRecord, Candidate, ParetoRecord
from .selection import Pick, pick_best

__all__ = [
    "Baselines",
    "best_and_front",
    "choose_best",
    "uniform_sparsity_baseline",
    "uniform_resize_baseline",
    "write_outputs",
]


@dataclass
class Baselines:
    """SparseViT's comparison at the same budget: uniform sparsity, and the dense model at a lower resolution."""

    uniform_sparsity: list[Candidate] = field(default_factory=list)  # every uniform level evaluated
    uniform_resize: list[Candidate] = field(default_factory=list)  # every resolution evaluated
    budget_ms: float = 0.0
    tie: float = 0.0  # accuracies this close count as equal (see selection.pick_best)

    def best(self, points: list[Candidate]) -> Candidate | None:
        """The best of `points` within the budget, by the rule every report uses."""
        pick = pick_best([p.latency_ms for p in points], [p.accuracy for p in points], self.budget_ms, self.tie)
        return points[pick.index] if pick is not None else None


def choose_best(
    space: SearchSpace, run: SearchRun, baselines: Baselines, point: Callable[[int, str], Candidate]
) -> tuple[Candidate, Pick]:
    """The config to deploy and its pick: the run's own (`run.pick`, made at the search's end by `engine.Choice`:
    the best within the budget among everything evaluated, the baselines that are configs of `space` included,
    re-timed on this machine when the search had the finalists' callback), or, for baselines that are not the
    run's own, that rule applied to them.

    `point(i, label)` builds the Candidate of run entry i. Raises SparseSearchError when nothing is within budget.
    """
    choice = Choice.of(space, run, baselines)
    pick = run.pick if run.baselines is baselines else choice.best()
    if pick is None:
        raise SparseSearchError("the search evaluated no config within the budget")
    n = len(run.genes)
    if pick.index < n:
        return point(pick.index, "searched"), pick
    chosen = choice.extra[pick.index - n]
    return Candidate(
        chosen.config, chosen.latency_ms, chosen.accuracy, chosen.gflops, f"searched ({chosen.label})"
    ), pick


def _nearest_choice_genes(space: SearchSpace, p: float) -> np.ndarray:
    """The genome closest to uniform sparsity p: each gene takes its choice nearest to p."""
    x = space.encode(space.densest())
    for gi, g in enumerate(space.genes):
        x[gi] = int(np.argmin([abs(c - p) for c in g.choices]))
    return space.repair(x)


def uniform_sparsity_baseline(
    space: SearchSpace,
    latency_fn: LatencyFn,
    cache: AccuracyCache,
    budget_ms: float,
    levels: Sequence[float] | None = None,
) -> list[Candidate]:
    """Uniform sparsity at each level (default: every gene choice): accuracy evaluated for the levels within the
    budget and for the first level over it, the over-budget one with the lowest latency (so the plot shows where
    uniform pruning crosses the budget; the pick rule never chooses it, being over the budget).

    Returns the evaluated levels, as Candidates ordered by genome (densest first)."""
    levels = sorted(set(levels or [c for g in space.genes for c in g.choices]))
    X = np.unique(np.stack([_nearest_choice_genes(space, p) for p in levels]), axis=0)
    lat = np.asarray(latency_fn(X), dtype=np.float64)
    keep = lat <= budget_ms
    over = np.flatnonzero(~keep)
    if len(over):
        keep[over[np.argmin(lat[over])]] = True
    X, lat = X[keep], lat[keep]
    acc = cache.evaluate(X) if len(X) else np.zeros(0)
    return [
        Candidate(space.decode(x), float(ms), float(a), label=f"uniform {space.decode(x).mean_sparsity():.2f}")
        for x, ms, a in zip(X, lat, acc)
    ]


def uniform_resize_baseline(
    resolutions: Sequence[tuple[int, int]],
    dense_latency: Callable[[tuple[int, int]], float],
    accuracy_at: Callable[[tuple[int, int]], float],
    dense_config: SparsityConfig,
    budget_ms: float,
) -> list[Candidate]:
    """The dense model at each profiled resolution within the budget, and at the fastest one over it (as
    `uniform_sparsity_baseline` keeps the first level over: where resizing crosses the budget, and a candidate
    when the table's prediction puts it just over); inputs resized, predictions scored at the label size. The
    pick rule never chooses the one over the budget."""
    sizes = sorted({(int(r[0]), int(r[1])) for r in resolutions}, reverse=True)
    lats = [float(dense_latency(r)) for r in sizes]
    over = [lat for lat in lats if lat > budget_ms]
    points = []
    for r, lat in zip(sizes, lats):
        if lat > budget_ms and lat != min(over):
            continue
        cfg = SparsityConfig(dense_config.sparsity, dense_config.window_size, r)
        points.append(Candidate(cfg, lat, float(accuracy_at(r)), label=f"dense {r[0]}x{r[1]}"))
    return points


def best_and_front(
    space: SearchSpace,
    run: SearchRun,
    baselines: Baselines,
    flops_fn: Callable[[SparsityConfig], float] | None = None,
) -> tuple[Candidate, list[Candidate], Pick]:
    """The best point (`choose_best`), the accuracy/latency front within the budget, and the pick; the GFLOPs of
    every point and baseline counted with `flops_fn` when given."""

    def point(i: int, label: str = "") -> Candidate:
        cfg = space.decode(run.genes[i])
        gflops = flops_fn(cfg) / 1e9 if flops_fn else None
        return Candidate(cfg, float(run.latency_ms[i]), float(run.accuracy[i]), gflops, label)

    baselines.tie = run.tie
    best, pick = choose_best(space, run, baselines, point)
    for b in baselines.uniform_sparsity + baselines.uniform_resize:
        if flops_fn is not None and b.gflops is None:
            b.gflops = flops_fn(b.config) / 1e9
    return best, [point(int(i)) for i in run.pareto_indices()], pick


def write_outputs(
    out: str | os.PathLike,
    space: SearchSpace,
    run: SearchRun,
    baselines: Baselines,
    *,
    metric: str = "accuracy",
    flops_fn: Callable[[SparsityConfig], float] | None = None,
    meta: dict[str, Any] | None = None,
) -> tuple[Candidate, list[Candidate]]:
    """Write pareto.json, best.json (a loadable SparsityConfig file plus figures) and pareto.png into `out`.

    The best is `choose_best`'s (re-timed on this machine when the search had the finalists' callback). Returns
    the best point and the front.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    best, front, pick = best_and_front(space, run, baselines, flops_fn)
    header: dict[str, Any] = {
        "metric": metric,
        "budget_ms": run.budget_ms,
        "algorithm": run.algorithm,
        "space": space.name,
        "evaluated": int(len(run.genes)),
    }
    extra = dict(meta or {})
    ParetoRecord(
        **header,
        front=front,
        uniform_sparsity=baselines.uniform_sparsity,
        uniform_resize=baselines.uniform_resize,
        meta=extra,
    ).save(out / "pareto.json")
    ub, rb = baselines.best(baselines.uniform_sparsity), baselines.best(baselines.uniform_resize)
    BestRecord(best, **header, pick=pick, uniform_sparsity=ub, uniform_resize=rb, meta=extra).save(out / "best.json")
    _plot(out / "pareto.png", run, front, best, baselines, metric, space.name)
    return best, front


def _plot(
    path: Path, run: SearchRun, front: list[Candidate], best: Candidate, baselines: Baselines, metric: str, title: str
) -> None:
    from matplotlib.figure import Figure  # noqa: PLC0415  (no pyplot: the caller's backend stays as it is)

    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    ok = run.latency_ms <= run.budget_ms
    ax.scatter(run.latency_ms[ok], run.accuracy[ok], s=8, c="0.75", label=f"evaluated ({int(ok.sum())})")
    ax.plot([p.latency_ms for p in front], [p.accuracy for p in front], "-o", ms=3, c="C0", label="searched front")
    if baselines.uniform_sparsity:
        pts = sorted(baselines.uniform_sparsity, key=lambda p: p.latency_ms)
        ax.plot([p.latency_ms for p in pts], [p.accuracy for p in pts], "--s", ms=4, c="C1", label="uniform sparsity")
    if baselines.uniform_resize:
        pts = sorted(baselines.uniform_resize, key=lambda p: p.latency_ms)
        ax.plot(
            [p.latency_ms for p in pts], [p.accuracy for p in pts], ":^", ms=5, c="C2", label="uniform resize (dense)"
        )
    ax.scatter([best.latency_ms], [best.accuracy], marker="*", s=180, c="C3", zorder=5, label="best within budget")
    ax.axvline(run.budget_ms, c="C3", lw=1, ls="--")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel(metric)
    ax.set_title(f"{title}: {metric} vs latency, budget {run.budget_ms:.2f} ms")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")  # "lower right" hid the resize baseline under the box
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
