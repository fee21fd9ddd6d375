"""`ss.search` in one call with the caller's own accuracy function, and `sparsesearch evolve --accuracy`."""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import pytest
import sparsesearch as ss
import torch
from sparsesearch.cli import main
from sparsesearch.latency import ProfileSettings, profile
from sparsesearch.testing import (
    exhaustive_best,
    quick_settings,
    tiny_supernet,
    toy_accuracy,
    toy_config_latency,
    toy_latency,
    toy_space,
    toy_space_yaml,
)

TINY = """
name: tiny_api
architecture: swin_nano
model_kwargs: {embed_dim: 16, num_heads: [1, 1, 2, 2], window_size: 4, seg_dim: 16}
resolutions: [[64, 64]]
sparsity_choices: [0.0, 0.25, 0.5, 0.75]
genes:
  - {name: a, blocks: ["0.0", "0.1"]}
  - {name: b, blocks: ["1.0", "1.1"]}
  - {name: c, blocks: ["2.0", "2.1", "3.0", "3.1"], choices: [0.0]}
window_sizes: [[4], [4], [4], [4]]
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_space(tmp_path_factory.mktemp("toy"))


def _toy_acc(model, cfg):
    assert model is None  # no model given: the function gets None
    return toy_accuracy(cfg)


@pytest.mark.parametrize("budget", [7.0, "7ms", "0.5x"])
def test_search_finds_the_exhaustive_optimum(toy, budget, tmp_path):
    ms = 7.0 if budget != "0.5x" else 0.5 * float(toy_latency(toy.encode(toy.densest())[None])[0])
    _, best = exhaustive_best(toy, ms)
    r = ss.search(
        toy, latency=toy_config_latency(toy), accuracy=_toy_acc, budget=budget, settings=quick_settings(30, 30, seed=1)
    )
    assert r.budget_ms == pytest.approx(ms)
    assert r.best.accuracy == pytest.approx(best, abs=1e-12) and r.best.latency_ms <= ms
    assert isinstance(r.best.config, ss.SparsityConfig) and r.best.accuracy == toy_accuracy(r.best.config)
    assert r.evaluated < 0.02 * toy.size  # it did not enumerate its way there
    lats = [c.latency_ms for c in r.pareto]
    assert lats == sorted(lats) and all(lat <= ms for lat in lats) and r.pareto[-1].accuracy == r.best.accuracy
    ub = r.best_uniform_sparsity
    assert ub is not None and ub.latency_ms <= ms and r.best.accuracy >= ub.accuracy
    assert len({tuple(np.round(c.config.flat(), 6)) for c in r.uniform_sparsity}) == len(r.uniform_sparsity)
    assert all(len(set(c.config.flat())) == 1 for c in r.uniform_sparsity)  # uniform: one level everywhere
    assert [h["generation"] for h in r.history if not h.get("refined")] == list(range(1, 31))
    assert r.dense.accuracy == toy_accuracy(toy.densest()) and r.dense.latency_ms > ms
    assert r.plot(tmp_path / "p.png").stat().st_size > 10_000


def test_each_config_is_evaluated_once_the_resize_baseline_included(tmp_path):
    """A space of two resolutions: the dense model at each is both a genome of the search and a uniform-resize
    baseline; the accuracy function sees every config once, as the README promises."""
    (tmp_path / "two.yaml").write_text(toy_space_yaml().replace("[[64, 64]]", "[[64, 64], [48, 48]]"))
    space = ss.SearchSpace.load(tmp_path / "two.yaml")
    calls: list[str] = []

    def acc(model, cfg):
        calls.append(cfg.key())
        return toy_accuracy(cfg) - (0.1 if cfg.resolution == (48, 48) else 0.0)

    def ms(cfg):
        scale = 0.6 if cfg.resolution == (48, 48) else 1.0
        return scale * float(toy_latency(space.encode(cfg)[None])[0])

    r = ss.search(space, latency=ms, accuracy=acc, budget="0.7x", population=6, generations=2, progress=False)
    assert len(calls) == len(set(calls)) == r.evaluated
    assert {c.label for c in r.uniform_resize} >= {"dense 48x48"}  # the resize baseline was scored


def test_settings_come_as_an_object_or_by_name_and_an_unknown_name_is_refused(toy):
    kw = dict(latency=toy_config_latency(toy), accuracy=_toy_acc, budget=7.0)
    with pytest.raises(ss.SparseSearchError, match=r"unknown setting\(s\) populaton; known: .*population"):
        ss.search(toy, **kw, populaton=4)
    with pytest.raises(ss.SparseSearchError, match="unknown algorithm 'sa'"):
        ss.search(toy, **kw, algorithm="sa")
    by_name = ss.search(toy, **kw, population=6, generations=2, progress=False)
    settings = ss.SearchSettings(population=6, generations=2, progress=False)
    as_object = ss.search(toy, **kw, settings=settings)
    assert by_name.best == as_object.best and by_name.evaluated == as_object.evaluated
    assert ss.search(toy, **kw, settings=settings, generations=1).history[-1]["generation"] <= 1  # names override


def _fidelity_setup(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    space = ss.SearchSpace.load(tmp_path / "tiny.yaml")
    torch.manual_seed(0)
    model = space.create_model(head="seg", num_classes=3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model.eval()(x)

    def fidelity(m, cfg):
        """Higher is better: minus the mean distance of the pruned model's logits from the dense ones."""
        assert m is model and m.config == cfg and not m.training  # the config is applied for the call
        with torch.no_grad():
            return -float((m(x) - ref).abs().mean())

    def ms(cfg):
        kept = [1.0 - p for p in cfg.flat()]
        return 1.0 + 0.5 * sum(kept[:2]) + 0.3 * sum(kept[2:4])  # stages 2-3 are one window each at 64x64

    return space, model, fidelity, ms


def test_search_applies_configs_to_the_model_and_matches_enumeration(tmp_path):
    space, model, fidelity, ms = _fidelity_setup(tmp_path)
    budget = 2.2
    truth = []
    for genes in itertools.product(*(range(len(g.choices)) for g in space.genes)):
        cfg = space.decode(np.array([*genes, 0, 0, 0, 0, 0]))  # + window and resolution indices
        if ms(cfg) <= budget:
            model.set_config(cfg)
            truth.append(fidelity(model, cfg))
    model.set_config(None)
    r = ss.search(
        space,
        latency=ms,
        accuracy=fidelity,
        budget=budget,
        model=model,
        out=tmp_path / "s",
        settings=quick_settings(8, 4),
    )
    assert r.best.accuracy == pytest.approx(max(truth), abs=1e-9) and r.best.latency_ms <= budget
    assert r.best.accuracy < 0 and r.dense.accuracy == 0.0  # a real trade-off: the dense model is over budget
    assert model.config is None  # restored after every evaluation
    doc = json.loads((tmp_path / "s" / "best.json").read_text())
    assert ss.SparsityConfig.load(tmp_path / "s" / "best.json") == r.best.config and doc["accuracy"] == r.best.accuracy
    cached = (tmp_path / "s" / "accuracy_cache.jsonl").read_text().splitlines()
    assert len(cached) == len({json.loads(line)["genes"] for line in cached})  # each config evaluated once
    with pytest.raises(ss.SparseSearchError, match="already holds a search"):
        ss.search(space, latency=ms, accuracy=fidelity, budget=budget, model=model, out=tmp_path / "s", progress=False)


def test_an_error_keeps_what_was_evaluated_and_resume_goes_on(toy, tmp_path):
    calls: list[str] = []
    fail_at = [5]

    def acc(model, cfg):
        calls.append(cfg.key())
        if len(calls) == fail_at[0]:
            raise ValueError("metric server down")
        return toy_accuracy(cfg)

    kw = dict(
        latency=toy_config_latency(toy), accuracy=acc, budget=7.0, out=tmp_path, settings=quick_settings(10, 4, seed=2)
    )
    with pytest.raises(ss.AccuracyFunctionError, match="raised ValueError: metric server down") as err:
        ss.search(toy, **kw)
    assert isinstance(err.value.__cause__, ValueError)
    failed = calls[4]
    assert json.dumps(ss.SparsityConfig.from_dict(json.loads(failed)).to_dict()) in str(err.value)  # the culprit
    cached = [json.loads(line) for line in (tmp_path / "accuracy_cache.jsonl").read_text().splitlines()]
    assert len(cached) == 4
    before = set(calls[:4])
    calls.clear()
    fail_at[0] = -1
    resumed = ss.search(toy, **kw, resume=True)
    assert not before & set(calls) and calls[0] == failed  # none of the 4 again; the 5th is next
    calls.clear()
    fresh = ss.search(toy, **{**kw, "out": tmp_path / "fresh"})  # the uninterrupted search
    assert {tuple(g) for g in resumed.run.genes} == {tuple(g) for g in fresh.run.genes}
    assert resumed.best.config == fresh.best.config and resumed.new_evaluations == fresh.new_evaluations - 4


@pytest.mark.parametrize("value", ["0.9", None, float("nan"), True, [0.5]])
def test_a_non_number_is_refused_with_the_config(toy, value):
    with pytest.raises(ss.AccuracyFunctionError, match="must return a finite number"):
        ss.search(
            toy, latency=toy_config_latency(toy), accuracy=lambda m, c: value, budget=7.0, settings=quick_settings(4, 1)
        )


def test_numpy_and_tensor_scores_are_numbers(toy):
    tensor = lambda m, c: torch.tensor(toy_accuracy(c))  # noqa: E731
    r = ss.search(
        toy, latency=toy_config_latency(toy), accuracy=tensor, budget=7.0, settings=quick_settings(6, 2, refine=False)
    )
    assert r.best.accuracy == pytest.approx(toy_accuracy(r.best.config), abs=1e-6)


def test_resume_without_a_search_and_bad_budgets(toy, tmp_path):
    kw = dict(latency=toy_config_latency(toy), accuracy=_toy_acc, settings=quick_settings(4, 1))
    with pytest.raises(ss.SparseSearchError, match="holds no search"):
        ss.search(toy, budget=7.0, out=tmp_path, resume=True, **kw)
    with pytest.raises(ss.BudgetError, match="below the fastest config"):
        ss.search(toy, budget=1.0, **kw)
    with pytest.raises(ss.BudgetError):
        ss.search(toy, budget="fast", **kw)


# ---- the CLI ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def supernet(tmp_path_factory):
    d = tmp_path_factory.mktemp("sn")
    space, _ = tiny_supernet(d, TINY)
    profile(
        space,
        ProfileSettings(
            head="seg",
            num_classes=3,
            threads=1,
            warmup=0,
            repeats=1,
            rounds=1,
            calibration=0,
            in_model=False,
            flush_mb=0,
        ),
        d / "table.json",
    )
    return d


MODULE = '''
import json

CALLS = []
NOT_A_FUNCTION = 3


def acc(model, config):
    """A score only the config decides (the measured table is noisy: any budget that fits all is used)."""
    assert model.config == config
    return config.mean_sparsity()


def words(model, config):
    return "high"
'''


def _evolve(d, out, *extra):
    return [
        "evolve",
        "--supernet",
        str(d / "supernet.pt"),
        "--table",
        str(d / "table.json"),
        "--latency",
        "1000ms",
        "--out",
        str(out),
        "--population",
        "4",
        "--generations",
        "2",
        *extra,
    ]


def test_cli_accuracy_from_a_module_in_the_working_directory(supernet, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_metric_a.py").write_text(MODULE)
    import sparsesearch.supernet as sn

    loads, real_load = [], sn.load_supernet
    monkeypatch.setattr(sn, "load_supernet", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    assert main(_evolve(supernet, tmp_path / "s", "--accuracy", "my_metric_a:acc")) == 0
    assert len(loads) == 1  # evolve loads the supernet once
    assert "scored by my_metric_a:acc" in capsys.readouterr().out
    best = json.loads((tmp_path / "s" / "best.json").read_text())
    cfg = ss.SparsityConfig.from_dict(best["config"])
    assert best["accuracy_function"] == "my_metric_a:acc" and best["latency_ms"] <= best["budget_ms"]
    space = ss.SearchSpace.load(supernet / "space.yaml")
    assert cfg == space.sparsest() and best["accuracy"] == pytest.approx(space.sparsest().mean_sparsity())


@pytest.mark.parametrize(
    "ref, message",
    [
        ("no_such_module_xyz:acc", "no module named 'no_such_module_xyz'"),
        ("my_metric_b:missing", "has no attribute 'missing'"),
        ("my_metric_b:NOT_A_FUNCTION", "is a int, not a function"),
        ("my_metric_b", "write it as package.module:function"),
        ("my_metric_b:words", "returned 'high' (str)"),
    ],
)
def test_cli_bad_accuracy_reference_is_one_line(supernet, tmp_path, monkeypatch, capsys, ref, message):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_metric_b.py").write_text(MODULE)
    assert main(_evolve(supernet, tmp_path / "s", "--accuracy", ref)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_ray_workers_give_the_serial_search(toy):
    pytest.importorskip("ray")
    kw = dict(
        latency=toy_config_latency(toy),
        accuracy=lambda m, c: toy_accuracy(c),
        budget=7.0,
        settings=quick_settings(8, 2, refine=False),
    )
    parallel = ss.search(toy, workers=2, **kw)  # the function travels to the workers pickled
    serial = ss.search(toy, **kw)
    assert {tuple(g) for g in parallel.run.genes} == {tuple(g) for g in serial.run.genes}
    assert np.array_equal(
        parallel.run.accuracy[np.lexsort(parallel.run.genes.T)], serial.run.accuracy[np.lexsort(serial.run.genes.T)]
    )


def test_supernet_accuracy_states_the_paired_noise_of_two_configs(supernet):
    """The built-in accuracy's noise for a difference: the jackknife of the two configs' per-image difference."""
    from sparsesearch.evaluate import evaluate, paired_stderr
    from sparsesearch.search.evolve import SupernetAccuracy
    from sparsesearch.supernet import build_eval_dataset, load_supernet

    model, space, meta = load_supernet(supernet / "supernet.pt")
    acc = SupernetAccuracy(meta, None, 8, 4, "cpu")
    a, b = space.densest(), space.sparsest()
    ds = build_eval_dataset(meta, None)
    ra, rb = evaluate(model, a, ds, 8, batch=4), evaluate(model, b, ds, 8, batch=4)  # an independent evaluation
    assert acc(model, a) == pytest.approx(ra.value) and acc(model, b) == pytest.approx(rb.value)
    assert acc.noise_between(model, a, b) == pytest.approx(paired_stderr(ra, rb))
    assert acc.noise_between(model, a, a) == 0.0
    assert acc.noise(model, a) == pytest.approx(ra.stderr)
