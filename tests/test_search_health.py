"""The search's pieces have one owner each and leave the process alone."""

from __future__ import annotations

import functools
import logging
import sys

import numpy as np
import pytest
import sparsesearch as ss
from sparsesearch.errors import SparseSearchError
from sparsesearch.search import AccuracyCache, SerialEvaluator, backends, run_search
from sparsesearch.search.backends import ALGORITHMS, SearchCallback, get_backend
from sparsesearch.search.report import uniform_sparsity_baseline
from sparsesearch.search.scoring import FeasibleScorer
from sparsesearch.search.settings import SearchSettings
from sparsesearch.testing import quick_settings, toy_accuracy, toy_config_latency, toy_latency, toy_space


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    return toy_space(tmp_path_factory.mktemp("space"))


def _cache(space, calls=None, on_call=None):
    def fn(cfg):
        if calls is not None:
            calls.append(cfg.key())
        if on_call is not None:
            on_call()
        return toy_accuracy(cfg)

    return AccuracyCache(space, SerialEvaluator(fn))


_WITHOUT_THE_ENGINE = """
import importlib, sys
import numpy as np
import sparsesearch.search  # the package as a user loads it; then the modules below run again without the engine
for name in ("warmstart", "neighbours", "scoring", "backends", "random_backend", "pymoo_backend", "problem"):
    sys.modules.pop(f"sparsesearch.search.{name}", None)
sys.modules["sparsesearch.search.engine"] = None  # from here on, importing the engine raises ImportError
from sparsesearch.search.accuracy import AccuracyCache
from sparsesearch.testing import toy_accuracy, toy_latency, toy_space
backends = importlib.import_module("sparsesearch.search.backends")
warmstart = importlib.import_module("sparsesearch.search.warmstart")
space = toy_space(sys.argv[1])
cache = AccuracyCache(space, lambda cs: [toy_accuracy(c) for c in cs])
seeds = warmstart.warm_start(space, toy_latency, cache.evaluate, 7.0, 4, seed=0)
assert 1 <= len(seeds) <= 4
for algorithm in ("random", "ga"):
    ctx = backends.SearchContext(space, toy_latency, cache, 7.0, algorithm, 6, 2, 0, None, False, lambda rec: None)
    backend, scorer = backends.get_backend(algorithm)(ctx), ctx.scorer()
    for _ in range(2):  # ask, score, tell: the engine's loop, written out
        backend.tell(scorer.score(backend.ask()))
print("ok", len(cache))
"""


def test_the_warm_start_and_the_back_ends_run_without_the_engine(tmp_path):
    """No import circle: in a fresh interpreter where the engine cannot be imported, the warm start and the back
    ends (which the engine drives) still import and run."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_THE_ENGINE, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok ")


def test_every_algorithm_has_a_back_end_and_an_unknown_one_is_refused():
    for algorithm in ALGORITHMS:
        if algorithm.startswith("optuna"):
            pytest.importorskip("optuna")
        if algorithm == "tune":
            pytest.importorskip("ray.tune")
        assert callable(get_backend(algorithm))
    with pytest.raises(SparseSearchError, match="unknown algorithm 'sa'"):
        get_backend("sa")
    with pytest.raises(SparseSearchError, match="unknown algorithm 'sa'"):
        SearchSettings(algorithm="sa")  # the same one check


class _CountingRay:
    """A stand-in for the `ray` module that counts `init` calls."""

    def __init__(self):
        self.inits = 0

    def is_initialized(self):
        return self.inits > 0

    def init(self, **kwargs):
        self.inits += 1


def test_ray_is_started_once_and_a_missing_ray_says_how_to_install_it(monkeypatch):
    from sparsesearch.search.parallel import start_ray

    ray = _CountingRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    assert start_ray(None, 2, "--workers") is True  # this call started it: the caller shuts it down
    assert start_ray(None, 2, "--workers") is False  # already running: left alone
    assert ray.inits == 1
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SparseSearchError, match="--workers: Ray is not installed"):
        start_ray(None, 2, "--workers")


def test_the_scorer_evaluates_only_repaired_feasible_genomes(space):
    rng = np.random.default_rng(3)
    X = rng.integers(-1, space.upper_bounds + 2, size=(40, space.n_var))  # out of bounds on purpose
    seen: list[np.ndarray] = []

    def evaluate(G):
        seen.append(G.copy())
        return np.array([toy_accuracy(space.decode(g)) for g in G])

    s = FeasibleScorer(space, toy_latency, evaluate, 9.0).score(X)
    assert 0 < s.feasible.sum() < len(X)
    for x, g, lat, acc, ok in zip(X, s.genes, s.latency_ms, s.accuracy, s.feasible):
        repaired = np.clip(x, 0, space.upper_bounds)  # the toy space has no ordering rule
        assert np.array_equal(g, repaired)
        assert lat == pytest.approx(float(toy_latency(repaired[None])[0]))
        assert ok == (lat <= 9.0)
        assert acc == (pytest.approx(toy_accuracy(space.decode(repaired))) if ok else 0.0)
    assert len(seen) == 1 and np.array_equal(seen[0], s.genes[s.feasible])


@pytest.mark.parametrize("algorithm", ["ga", "nsga2", "random", "optuna-tpe", "optuna-nsga2", "tune"])
def test_unknown_backend_options_are_refused_by_name(space, algorithm):
    if algorithm.startswith("optuna"):
        pytest.importorskip("optuna")
    if algorithm == "tune":
        pytest.importorskip("ray.tune")
    with pytest.raises(SparseSearchError, match=rf"algorithm '{algorithm}' does not take the option\(s\) bogus_knob"):
        run_search(
            space, toy_latency, _cache(space), 7.0, algorithm=algorithm, population=4, generations=1, bogus_knob=1
        )


def test_backend_options_reach_pymoo_and_optuna(space):
    calls: list[str] = []
    run_search(space, toy_latency, _cache(space, calls), 7.0, algorithm="ga", population=8, generations=2, refine=False)
    default_evals = len(calls)
    calls.clear()  # GA's offspring count: fewer offspring, fewer new configs in the second generation
    run_search(
        space,
        toy_latency,
        _cache(space, calls),
        7.0,
        algorithm="ga",
        population=8,
        generations=2,
        refine=False,
        n_offsprings=2,
    )
    assert len(calls) <= 8 + 2 < default_evals
    optuna = pytest.importorskip("optuna")
    seen = {}
    real = optuna.samplers.TPESampler.__init__

    @functools.wraps(real)  # keeps the signature the back end checks options against
    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        real(self, *args, **kwargs)

    optuna.samplers.TPESampler.__init__ = spy
    try:
        run_search(
            space, toy_latency, _cache(space), 7.0, algorithm="optuna-tpe", population=4, generations=1, gamma=None
        )
    finally:
        optuna.samplers.TPESampler.__init__ = real
    assert "gamma" in seen and seen["seed"] == 0


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "ERROR"])
def test_optuna_log_level_is_left_as_the_caller_set_it(space, level):
    optuna = pytest.importorskip("optuna")
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(getattr(optuna.logging, level))
    try:
        run_search(space, toy_latency, _cache(space), 7.0, algorithm="optuna-tpe", population=4, generations=2)
        assert optuna.logging.get_verbosity() == getattr(optuna.logging, level)
    finally:
        optuna.logging.set_verbosity(before)


def test_optuna_trial_lines_are_silent_during_the_search_only(space):
    """The search drops optuna's per-trial INFO records without changing a logger's level: a record optuna logs
    after the search gets through."""
    optuna = pytest.importorskip("optuna")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler, log = Keep(logging.DEBUG), logging.getLogger("optuna")
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    log.addHandler(handler)
    try:
        run_search(space, toy_latency, _cache(space), 7.0, algorithm="optuna-tpe", population=4, generations=2)
        assert not any("Trial" in m for m in seen)
        optuna.create_study().optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
        assert any("Trial 0 finished" in m for m in seen)
    finally:
        log.removeHandler(handler)
        optuna.logging.set_verbosity(before)


def test_uniform_baseline_keeps_exactly_the_first_level_over_budget(space):
    budget = 6.0
    points = uniform_sparsity_baseline(space, toy_latency, _cache(space), budget)
    levels = sorted({c for g in space.genes for c in g.choices})  # independent: one genome per level by hand
    genomes = {tuple(int(np.argmin([abs(c - p) for c in g.choices])) for g in space.genes) for p in levels}
    full = [(*g, *([0] * (space.n_var - len(g)))) for g in genomes]
    lat = {g: float(toy_latency(np.array([g]))[0]) for g in full}
    within = {g for g in full if lat[g] <= budget}
    over = sorted((g for g in full if lat[g] > budget), key=lat.get)
    got = {tuple(space.encode(p.config).tolist()) for p in points}
    assert got == within | set(over[:1])
    assert sum(p.latency_ms > budget for p in points) == (1 if over else 0)
    for p in points:
        assert p.accuracy == pytest.approx(toy_accuracy(p.config))


def test_the_log_counts_seconds_from_the_search_start(space, monkeypatch):
    """A clock that moves one second per evaluation: every record's "seconds" is the evaluations so far."""
    clock = [100.0]
    monkeypatch.setattr(backends, "_clock", lambda: clock[0])
    history: list[dict] = []

    def tick():
        clock[0] += 1.0

    settings = SearchSettings(algorithm="random", population=3, generations=1)
    run_search(space, toy_latency, _cache(space, on_call=tick), 7.0, settings, on_generation=history.append)
    refined = [h for h in history if h.get("refined")]
    assert refined, "the toy search should improve on a 3-config random start"
    assert [h["seconds"] for h in history] == [float(h["evaluated"]) for h in history]


def test_a_resumed_search_takes_dense_and_resize_baselines_from_its_caches(space, tmp_path):
    calls: list[str] = []

    def accuracy(model, cfg):
        calls.append(cfg.key())
        return toy_accuracy(cfg)

    kw = dict(
        latency=toy_config_latency(space),
        accuracy=accuracy,
        budget=15.0,  # the dense model and its resize baseline are within the budget: both evaluated
        out=tmp_path / "run",
        settings=quick_settings(6, 2),
    )
    first = ss.search(space, **kw)
    assert first.uniform_resize and space.densest().key() in calls
    resize_file = tmp_path / "run" / "resize_cache.jsonl"  # resolutions outside the space only: none here
    resize_records = resize_file.read_text() if resize_file.exists() else None
    calls.clear()
    again = ss.search(space, resume=True, **kw)
    assert space.densest().key() not in calls  # neither the dense config nor the dense model resized
    assert calls == [] and again.new_evaluations == 0  # nor anything else: the search had finished
    assert (resize_file.read_text() if resize_file.exists() else None) == resize_records
    assert again.dense.accuracy == first.dense.accuracy
    assert [c.accuracy for c in again.uniform_resize] == [c.accuracy for c in first.uniform_resize]


@pytest.mark.parametrize("algorithm", ["ga", "nsga2"])
def test_resuming_a_finished_search_evaluates_nothing(space, tmp_path, algorithm):
    calls: list[str] = []

    def cache():  # persisted, as a resumed search has it
        return AccuracyCache(space, SerialEvaluator(lambda c: calls.append(c.key()) or toy_accuracy(c)), tmp_path / "a")

    kw = dict(algorithm=algorithm, population=8, generations=3, out_dir=tmp_path, refine=False)
    first = run_search(space, toy_latency, cache(), 7.0, **kw)
    assert calls and first.generations_done == 3
    calls.clear()
    history: list[dict] = []
    again = run_search(space, toy_latency, cache(), 7.0, resume=True, on_generation=history.append, **kw)
    assert history == [] and calls == [] and again.generations_done == 3


class _Spy(SearchCallback):
    """A callback that records which hooks the engine called, in order."""

    def __init__(self):
        self.calls = []

    def before(self, ctx):
        self.calls.append("before")

    def generation(self, ctx, record):
        self.calls.append("refined" if record.get("refined") else "generation")

    def after(self, ctx, run, generations):
        self.calls.append("after")
        return False

    def pick(self, ctx, choice, first):
        self.calls.append("pick")
        return first

    def close(self):
        self.calls.append("close")


@pytest.mark.parametrize("algorithm", ["ga", "random", "tune"])
def test_every_back_end_runs_in_the_one_loop_with_the_callbacks_around_it(space, algorithm, tmp_path):
    if algorithm == "tune":
        pytest.importorskip("ray.tune")
    spy = _Spy()
    run = run_search(
        space,
        toy_latency,
        _cache(space),
        7.0,
        algorithm=algorithm,
        population=4,
        generations=3,
        refine=False,
        warm_start=False,
        callbacks=[spy],
        out_dir=tmp_path,
    )
    assert spy.calls == ["before", "generation", "generation", "generation", "after", "pick", "close"]
    assert run.pick is not None and run.pick.index == run.best_index()  # the pick hook left it alone
    assert (tmp_path / "search_state.pkl").is_file()  # the engine's checkpoint, whatever the back end


def test_a_failing_search_still_closes_its_callbacks(space):
    spy = _Spy()

    def fail(X):
        raise RuntimeError("latency source down")

    with pytest.raises(RuntimeError, match="latency source down"):
        run_search(space, fail, _cache(space), 7.0, algorithm="random", population=4, generations=2, callbacks=[spy])
    assert spy.calls == ["before", "close"]
