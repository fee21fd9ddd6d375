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
