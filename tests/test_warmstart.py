"""The search's warm start: the one-variable scan, the additive drop table, and the surrogate's seeds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sparsesearch.search.engine import run_search
from sparsesearch.search.warmstart import drop_table, scan_genomes, surrogate_seeds, warm_start
from sparsesearch.testing import toy_accuracy, toy_latency, toy_space


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    return toy_space(tmp_path_factory.mktemp("toy"))


def _acc(space):
    return lambda X: np.array([toy_accuracy(space.decode(x)) for x in np.atleast_2d(X)])


def test_the_scan_is_the_densest_and_each_choice_of_each_variable_alone(space):
    X = scan_genomes(space)
    base = space.encode(space.densest())
    assert np.array_equal(X[0], base)
    changed = [tuple((i, int(x[i])) for i in np.flatnonzero(x != base)) for x in X[1:]]
    expected = [((v, c),) for v, u in enumerate(space.upper_bounds) for c in range(1, int(u) + 1)]
    assert changed == expected and len(X) == len({tuple(x) for x in X})


def test_the_drop_table_holds_each_choices_own_drop(space):
    X = scan_genomes(space)
    acc = _acc(space)(X)
    drop = drop_table(space, X, acc)
    top = toy_accuracy(space.densest())
    for x, a in zip(X[1:], acc[1:]):
        v = int(np.flatnonzero(x != X[0])[0])
        assert drop[v, x[v]] == pytest.approx(top - a)
    assert np.all(drop[:, 0] == 0)
    with pytest.raises(ValueError, match="densest"):
        drop_table(space, X[1:], acc[1:])


def test_surrogate_seeds_are_within_the_budget_and_best_by_the_surrogate(space):
    X = scan_genomes(space)
    drop = drop_table(space, X, _acc(space)(X))
    seeds = surrogate_seeds(space, toy_latency, drop, 6.0, 5, np.random.default_rng(0), samples=2000)
    assert 1 <= len(seeds) <= 5 and np.all(toy_latency(seeds) <= 6.0)
    assert len({tuple(s) for s in seeds}) == len(seeds)
    # the first seed is the surrogate's optimum over the whole space (enumerated: the toy's genes only)
    n_genes = len(space.genes)
    rest = [0] * (space.n_var - n_genes)
    every = np.array([list(g) + rest for g in itertools.product(*(range(len(g.choices)) for g in space.genes))])
    every = every[toy_latency(every) <= 6.0]
    cost = drop[np.arange(space.n_var)[None, :], every].sum(1)
    first = drop[np.arange(space.n_var), seeds[0]].sum()
    assert first == pytest.approx(cost.min())
    assert len(surrogate_seeds(space, toy_latency, drop, 0.5, 5, np.random.default_rng(0), samples=200)) == 0


def test_a_warm_start_reaches_an_accuracy_a_cold_start_of_the_same_size_misses(space):
    """Same evaluations in all (scan + generations): the warm start finds the toy's optimum more often."""

    def best(warm: bool, seed: int) -> float:
        from sparsesearch.search.accuracy import AccuracyCache

        cache = AccuracyCache(space, lambda cs: [toy_accuracy(c) for c in cs])
        run = run_search(
            space, toy_latency, cache, 6.0, population=12, generations=6, seed=seed, warm_start=warm, refine=False
        )
        return float(run.accuracy[run.latency_ms <= 6.0].max())

    warm = [best(True, s) for s in range(4)]
    cold = [best(False, s) for s in range(4)]
    assert np.mean(warm) > np.mean(cold)


def test_warm_start_evaluates_through_the_given_function(space):
    seen: list[int] = []

    def acc(X):
        seen.append(len(X))
        return _acc(space)(X)

    seeds = warm_start(space, toy_latency, acc, 6.0, 4, seed=0)
    assert seen == [len(scan_genomes(space))] and 1 <= len(seeds) <= 4


def test_the_evolve_command_turns_the_warm_start_off():
    from sparsesearch.cli import build_parser
    from sparsesearch.cli._base import options_from_args
    from sparsesearch.search.evolve import EvolveOptions

    base = ["evolve", "--supernet", "s.pt", "--table", "t.json", "--latency", "0.7x", "--out", "o"]
    on = build_parser().parse_args(base)
    off = build_parser().parse_args([*base, "--no-warm-start"])
    assert on.warm_start is True and off.warm_start is False
    assert options_from_args(EvolveOptions, off).warm_start is False


def test_the_seeds_include_the_surrogates_best_below_the_budget_too(space):
    X = scan_genomes(space)
    drop = drop_table(space, X, _acc(space)(X))
    seeds = warm_start(space, toy_latency, _acc(space), 6.0, 6, seed=0)
    lat = toy_latency(seeds)
    assert np.all(lat <= 6.0) and len(seeds) == 6
    for f in (0.97, 0.94, 0.91, 0.88):  # each rung of the ladder holds the surrogate's best within it
        best = surrogate_seeds(space, toy_latency, drop, 6.0 * f, 1, np.random.default_rng(1), samples=4000)[0]
        below = seeds[lat <= 6.0 * f + 1e-9]
        rows = np.arange(space.n_var)
        assert len(below) and drop[rows[:, None], below.T].sum(0).min() <= drop[rows, best].sum() + 1e-9
