"""The best-within-budget rule: feasibility, noise ties go to the faster config, deterministic tie-break."""

from __future__ import annotations

import math

import numpy as np
from sparsesearch.search.selection import pick_best


def _brute(lat, acc, budget, tie):
    feasible = [i for i in range(len(lat)) if lat[i] <= budget and not math.isnan(acc[i])]
    if not feasible:
        return None
    best = max(acc[i] for i in feasible)
    tied = [i for i in feasible if acc[i] >= best - tie]
    return min(tied, key=lambda i: (lat[i], i))


def test_exact_ties_go_to_the_faster_then_the_earlier():
    lat = [20.0, 16.9, 19.3, 16.9, 40.0]
    acc = [94.0, 94.95, 94.95, 94.95, 99.0]
    p = pick_best(lat, acc, budget_ms=20.0)
    assert p.index == 1 and p.tied == (1, 2, 3) and p.best_accuracy == 94.95


def test_within_noise_the_faster_config_wins():
    lat, acc = [19.25, 16.94], [95.00, 94.95]
    assert pick_best(lat, acc, 20.0).index == 0  # no margin: strictly the more accurate
    assert pick_best(lat, acc, 20.0, tie=0.1).index == 1  # 0.05 apart is noise: the faster one


def test_nothing_within_budget_and_nan_accuracy():
    assert pick_best([30.0, 40.0], [1.0, 2.0], 20.0) is None
    assert pick_best([10.0, 12.0], [float("nan"), 1.0], 20.0).index == 1


def test_agrees_with_brute_force_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        lat = rng.integers(5, 30, n).astype(float).tolist()  # integers: plenty of latency ties
        acc = (rng.integers(0, 6, n) / 2).tolist()
        budget, tie = float(rng.integers(5, 30)), float(rng.choice([0.0, 0.5, 1.0]))
        got = pick_best(lat, acc, budget, tie)
        assert (got.index if got else None) == _brute(lat, acc, budget, tie)


# ---- the rule inside a search: logs, result, best.json and baselines agree ------------------------------------------
import json  # noqa: E402

import pytest  # noqa: E402
import sparsesearch as ss  # noqa: E402
from sparsesearch.errors import SparseSearchError  # noqa: E402
from sparsesearch.search.api import Candidate  # noqa: E402
from sparsesearch.testing import quick_settings, toy_accuracy, toy_config_latency, toy_space  # noqa: E402


class _CoarseAccuracy:
    """toy accuracy rounded to 0.05 (many exact ties), with a stated noise of 0.02."""

    metric = "coarse"

    def __call__(self, model, cfg):
        return round(toy_accuracy(cfg) * 20) / 20

    def noise(self, model, cfg):
        return 0.02


def _toy_search(space, acc, **kw):
    """ss.search on the toy problem under a 7 ms budget, seed 0, no progress bar, no refinement."""
    return ss.search(
        space, latency=toy_config_latency(space), accuracy=acc, budget=7.0, progress=False, refine=False, **kw
    )


def _fastest_tied(result, points):
    ok = [p for p in points if p.latency_ms <= result.budget_ms]
    best = max(p.accuracy for p in ok)
    return min(p.latency_ms for p in ok if p.accuracy >= best - result.tie - 1e-12)


@pytest.mark.parametrize("tie", [None, 0.0, 0.1])
def test_search_picks_the_fastest_of_the_tied_everywhere(tmp_path, tie):
    space = toy_space(tmp_path)
    acc = _CoarseAccuracy()
    r = _toy_search(space, acc, population=12, generations=4, out=tmp_path / "run", tie=tie)
    assert r.tie == (0.02 if tie is None else tie)  # None: the accuracy function's own noise
    everything = [
        Candidate(space.decode(g), float(lat), float(a), None, "")
        for g, lat, a in zip(r.run.genes, r.run.latency_ms, r.run.accuracy)
    ]
    everything += [c for c in r.uniform_sparsity + r.uniform_resize if c.config.resolution in space.resolutions]
    assert r.best.latency_ms == pytest.approx(_fastest_tied(r, everything))
    doc = json.loads((tmp_path / "run" / "best.json").read_text())
    assert doc["latency_ms"] == pytest.approx(r.best.latency_ms) and doc["pick"]["tie_margin"] == r.tie
    assert "fastest" in doc["pick"]["rule"]
    last = [h for h in r.history if "best_latency_ms" in h][-1]  # the log names a config the same rule picks
    run_only = everything[: len(r.run.genes)]
    assert last["best_latency_ms"] == pytest.approx(_fastest_tied(r, run_only))
    ub = r.best_uniform_sparsity
    assert ub is not None and ub.latency_ms == pytest.approx(_fastest_tied(r, r.uniform_sparsity))


def test_a_negative_tie_is_refused(tmp_path):
    space = toy_space(tmp_path)
    with pytest.raises(SparseSearchError, match="tie"):
        ss.search(space, latency=lambda c: 1.0, accuracy=_CoarseAccuracy(), budget=7.0, progress=False, tie=-1.0)


def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path):
    import matplotlib

    before = matplotlib.rcParams["backend"]
    matplotlib.rcParams["backend"] = "svg"  # whatever the caller chose
    try:
        space = toy_space(tmp_path)
        settings = quick_settings(6, 1, refine=False)
        r = ss.search(
            space, latency=toy_config_latency(space), accuracy=_CoarseAccuracy(), budget=7.0, settings=settings
        )
        path = r.plot(tmp_path / "p.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.rcParams["backend"] == "svg"
    finally:
        matplotlib.rcParams["backend"] = before


class _PairedAccuracy(_CoarseAccuracy):
    """Also states the noise of a difference between two configs (paired), which the search prefers."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def noise_between(self, model, a, b):
        self.pairs.append((a.key(), b.key()))
        return 0.005


def test_the_default_tie_is_the_paired_noise_between_the_extremes(tmp_path):
    space = toy_space(tmp_path)
    acc = _PairedAccuracy()
    r = _toy_search(space, acc, population=6, generations=1)
    assert r.tie == 0.005  # not noise()'s 0.02: two configs on the same items differ with less noise
    assert acc.pairs == [(space.densest().key(), space.sparsest().key())]
