"""The search engine on a toy problem whose optimum is known by enumeration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sparsesearch.errors import BudgetError, SparseSearchError
from sparsesearch.search import AccuracyCache, SerialEvaluator, parse_budget, run_search
from sparsesearch.testing import exhaustive_best, toy_accuracy, toy_latency, toy_space


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    return toy_space(tmp_path_factory.mktemp("space"))


@pytest.mark.parametrize(
    "text, ms, rel",
    [
        ("30ms", 30.0, False),
        ("30 ms", 30.0, False),
        ("0.03s", 30.0, False),
        ("30000us", 30.0, False),
        ("0.6x", 0.6, True),
        (" 12.5ms ", 12.5, False),
        ("1e1ms", 10.0, False),
    ],
)
def test_budget_parsing(text, ms, rel):
    b = parse_budget(text)
    assert b.relative is rel and b.value == pytest.approx(ms)


@pytest.mark.parametrize("text", ["30", "fast", "-3ms", "30 sec", "ms", "0ms", "30x"])
def test_bad_budgets_are_refused(text):
    with pytest.raises(BudgetError):
        parse_budget(text)


def test_budget_resolution_and_achievable_range():
    assert parse_budget("0.5x").resolve(dense_ms=40.0, min_ms=10.0, max_ms=40.0) == 20.0
    with pytest.raises(
        BudgetError, match=r"below the fastest config of the space \(10.00 ms\); achievable range 10.00-40.00 ms"
    ):
        parse_budget("5ms").resolve(dense_ms=40.0, min_ms=10.0, max_ms=40.0)


def _cache(space, path=None, calls=None):
    def fn(cfg):
        if calls is not None:
            calls.append(cfg.key())
        return toy_accuracy(cfg)

    return AccuracyCache(space, SerialEvaluator(fn), path)


@pytest.mark.parametrize("budget", [5.0, 7.0, 9.5])
def test_ga_finds_the_exhaustive_optimum(space, budget):
    genes, best = exhaustive_best(space, budget)
    run = run_search(space, toy_latency, _cache(space), budget, algorithm="ga", population=30, generations=30, seed=1)
    i = run.best_index()
    assert run.accuracy[i] == pytest.approx(best, abs=1e-12)
    assert run.latency_ms[i] <= budget
    assert len(run.genes) < 0.02 * space.size  # it did not enumerate its way there


@pytest.mark.parametrize("algorithm", ["nsga2", "optuna-nsga2", "optuna-tpe", "random"])
def test_other_back_ends_respect_the_budget_and_get_close(space, algorithm, tmp_path):
    budget = 7.0
    _, best = exhaustive_best(space, budget)
    run = run_search(
        space,
        toy_latency,
        _cache(space),
        budget,
        algorithm=algorithm,
        population=16,
        generations=6,
        seed=0,
        out_dir=tmp_path,
    )
    i = run.best_index()
    assert run.latency_ms[i] <= budget
    assert run.accuracy[i] >= best - (0.1 if algorithm == "random" else 0.05)  # random search is the weak baseline
    assert (tmp_path / "history.jsonl").read_text().count("\n") >= 6


def test_pareto_front_is_non_dominated_and_within_budget(space):
    budget = 8.0
    run = run_search(
        space, toy_latency, _cache(space), budget, algorithm="nsga2", population=24, generations=10, seed=0
    )
    front = run.pareto_indices()
    assert len(front) >= 5
    assert np.all(run.latency_ms[front] <= budget)
    for i in front:  # nothing evaluated within budget dominates a front member
        ok = run.latency_ms <= budget
        dominated = (
            ok
            & (run.accuracy >= run.accuracy[i])
            & (run.latency_ms <= run.latency_ms[i])
            & ((run.accuracy > run.accuracy[i]) | (run.latency_ms < run.latency_ms[i]))
        )
        assert not dominated.any()
    assert run.best_index() == front[-1]  # the most accurate front member is the best config


@pytest.mark.parametrize("warm_start", [False, True])
def test_only_feasible_configs_are_evaluated(space, warm_start):
    """Beyond the warm start's scan (each choice of each variable alone, mostly over the budget), the search
    evaluates only configs within the budget, each once."""
    from sparsesearch import SparsityConfig
    from sparsesearch.search.warmstart import scan_genomes

    calls: list[str] = []
    run = run_search(
        space,
        toy_latency,
        _cache(space, calls=calls),
        6.0,
        algorithm="ga",
        population=20,
        generations=5,
        seed=0,
        warm_start=warm_start,
    )
    assert calls and len(calls) == len(set(calls))  # each config evaluated once
    genomes = [space.encode(SparsityConfig.from_dict(json.loads(k))) for k in calls]
    scan = {tuple(x) for x in scan_genomes(space)}
    over = {tuple(x) for x in genomes if toy_latency(x[None])[0] > 6.0}
    assert over <= scan if warm_start else not over
    assert run.extra.get("warm_start_scan", 0) == (len(scan) if warm_start else 0)


@pytest.mark.parametrize("algorithm", ["ga", "optuna-tpe", "random", "tune"])
def test_kill_and_resume_continues_the_search(space, tmp_path, algorithm):
    if algorithm == "tune":
        pytest.importorskip("ray.tune")
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"

    def search(out_dir, calls=None, **kw):
        cache = _cache(space, out_dir / "acc.jsonl", calls)
        settings = {"algorithm": algorithm, "population": 12, "generations": 6, "seed": 3, "refine": False}
        return run_search(space, toy_latency, cache, 7.0, out_dir=out_dir, **settings, **kw)

    full = search(full_dir)

    class Killed(Exception):
        pass

    def kill_after_3(rec):
        if rec["generation"] == 3:
            raise Killed

    with pytest.raises(Killed):
        search(part_dir, on_generation=kill_after_3)
    calls: list[str] = []
    resumed = search(part_dir, calls, resume=True)
    gens = [json.loads(line)["generation"] for line in (part_dir / "history.jsonl").read_text().splitlines()]
    assert gens == list(range(1, 7))  # generations 1-3, then 4-6 after the resume: none repeated
    assert len(calls) < len(full.genes)  # the persisted accuracies were reused
    if algorithm != "optuna-tpe":  # pymoo's algorithm and Tune's searcher are pickled whole, random's batches come
        # from (seed, generation): the resumed run is the uninterrupted run
        assert {tuple(g) for g in resumed.genes} == {tuple(g) for g in full.genes}
        assert resumed.accuracy.max() == full.accuracy.max()


def test_resume_without_checkpoint_is_refused(space, tmp_path):
    with pytest.raises(SparseSearchError, match="no search checkpoint"):
        run_search(
            space,
            toy_latency,
            _cache(space),
            7.0,
            algorithm="ga",
            population=8,
            generations=2,
            out_dir=tmp_path,
            resume=True,
        )


def test_accuracy_cache_survives_a_torn_line(space, tmp_path):
    path = tmp_path / "acc.jsonl"
    cache = _cache(space, path)
    X = space.sample_genes(0, n=5)
    first = cache.evaluate(X)
    with open(path, "a") as f:
        f.write('{"genes": "1,2')  # a write cut short by a kill
    calls: list[str] = []
    again = _cache(space, path, calls)
    assert np.array_equal(again.evaluate(X), first) and not calls
    again.evaluate(space.sample_genes(1, n=2))
    assert len(_cache(space, path)) == len({tuple(x) for x in X}) + 2


def test_ray_workers_match_serial(space):
    pytest.importorskip("ray")
    from sparsesearch.search.parallel import RayEvaluator

    X = np.unique(space.sample_genes(0, n=12), axis=0)
    serial = _cache(space).evaluate(X)
    with RayEvaluator(lambda: toy_accuracy, workers=2) as ev:
        parallel = AccuracyCache(space, ev).evaluate(X)
        run_a = run_search(
            space, toy_latency, AccuracyCache(space, ev), 7.0, algorithm="ga", population=12, generations=3, seed=0
        )
    run_b = run_search(space, toy_latency, _cache(space), 7.0, algorithm="ga", population=12, generations=3, seed=0)
    assert np.array_equal(serial, parallel)
    assert {tuple(g) for g in run_a.genes} == {tuple(g) for g in run_b.genes}


def test_ray_tune_back_end(space, tmp_path):
    pytest.importorskip("ray.tune")
    budget = 7.0
    run = run_search(
        space,
        toy_latency,
        _cache(space),
        budget,
        algorithm="tune",
        population=6,
        generations=2,
        seed=0,
        out_dir=tmp_path,
        refine=False,
    )
    assert len(run.genes) >= 1 and np.all(run.latency_ms[run.pareto_indices()] <= budget)
    for g, a in zip(run.genes, run.accuracy):  # what the trials reported is the true accuracy of each config
        assert a == pytest.approx(toy_accuracy(space.decode(g)))
    assert (tmp_path / "search_state.pkl").is_file()  # the engine checkpoints Tune's searcher like any back end


def test_outputs_are_written_and_meet_the_budget(space, tmp_path):
    import sparsesearch as ss
    from sparsesearch.search.report import Baselines, uniform_resize_baseline, uniform_sparsity_baseline, write_outputs

    budget = 7.0
    cache = _cache(space)
    run = run_search(space, toy_latency, cache, budget, algorithm="nsga2", population=16, generations=5, seed=0)
    base = Baselines(uniform_sparsity_baseline(space, toy_latency, cache, budget), budget_ms=budget)
    base.uniform_resize = uniform_resize_baseline(
        [(64, 64), (48, 48), (32, 32)], lambda r: r[0] / 8.0, lambda r: r[0] / 100.0, space.densest(), budget
    )
    # 64 -> 8 ms is over the budget: kept as the fastest over it (where resizing crosses the budget), never picked
    assert [p.label for p in base.uniform_resize] == ["dense 64x64", "dense 48x48", "dense 32x32"]
    two_over = uniform_resize_baseline(
        [(64, 64), (56, 56), (48, 48)], lambda r: r[0] / 8.0, lambda r: r[0] / 100.0, space.densest(), 6.5
    )
    assert [p.label for p in two_over] == ["dense 56x56", "dense 48x48"]  # only the fastest of those over
    best, front = write_outputs(tmp_path, space, run, base, metric="toy")
    doc = json.loads((tmp_path / "best.json").read_text())
    cfg = ss.SparsityConfig.load(tmp_path / "best.json")  # best.json is a loadable config file
    assert cfg == best.config and doc["latency_ms"] <= budget
    assert doc["accuracy"] >= doc["baselines"]["uniform_sparsity"]["accuracy"]
    pareto = json.loads((tmp_path / "pareto.json").read_text())
    lats = [p["latency_ms"] for p in pareto["front"]]
    accs = [p["accuracy"] for p in pareto["front"]]
    assert all(lat <= budget for lat in lats) and lats == sorted(lats) and accs == sorted(accs)
    assert (tmp_path / "pareto.png").stat().st_size > 10_000
