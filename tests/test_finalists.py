"""Re-timing the pick's finalists: the pick moves to the config that *measures* fastest within the budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sparsesearch as ss
from sparsesearch.config import SparsityConfig
from sparsesearch.errors import SparseSearchError
from sparsesearch.latency.profile import Profiler, ProfileSettings
from sparsesearch.search.finalists import MEASURED_RULE, Finalists
from sparsesearch.search.records import BestRecord
from sparsesearch.search.selection import Pick, pick_best
from sparsesearch.testing import quick_settings

from .test_latency import DEMO, FAST

DENSE = SparsityConfig.uniform(0.0, [2, 2], 4)
CONFIGS = [SparsityConfig.uniform(p, [2, 2], 4) for p in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]
#           predicted ms, accuracy: 0-3 tied (tie 0.1), 4 over the budget + slack, 5 less accurate
LAT = np.array([6.0, 6.5, 6.9, 7.5, 8.0, 5.0])
ACC = np.array([90.0, 90.05, 90.0, 90.0, 90.0, 80.0])
BUDGET, TIE = 7.0, 0.1


def _measure(ms_by_index: dict[int, float], dense_ms: float, seen: list):
    """A fake `measure`: the dense config and CONFIGS[i] take the given milliseconds."""

    def measure(configs):
        seen.append([c.key() for c in configs])
        out = []
        for c in configs:
            out.append(dense_ms if c.key() == DENSE.key() else ms_by_index[[k.key() for k in CONFIGS].index(c.key())])
        return out

    return measure


def _first():
    first = pick_best(LAT, ACC, BUDGET, TIE)
    assert first is not None and first.index == 0  # the fastest predicted of the tied
    return first


def test_candidates_are_the_tied_fastest_first_then_the_front_most_accurate_first():
    f = Finalists(lambda cs: [1.0] * len(cs), DENSE, 10.0, n=8, slack=0.1)
    # within 7.7 (budget + slack): 0-3 tied (fastest predicted first), then 5 (80.0); 4 (8.0 ms) is out
    assert list(f.candidates(LAT, ACC, BUDGET, _first())) == [0, 1, 2, 3, 5]
    f.n = 2  # at most half tied: the fastest tied, then the front (5: 80.0 at 5.0 ms)
    assert list(f.candidates(LAT, ACC, BUDGET, _first())) == [0, 5]
    f.n = 3
    assert list(f.candidates(LAT, ACC, BUDGET, _first())) == [0, 1, 5]
    # a tight margin: 2 is the best within the budget (89.8); 1 and 0, predicted over it but within the slack,
    # are at least as accurate: the tied, fastest predicted first; then the front (no config both faster and
    # more accurate), the most accurate first: 3, 4; then 5, which 2 beats in both
    lat = np.array([7.6, 7.4, 6.8, 6.65, 6.0, 6.9])
    acc = np.array([91.0, 90.0, 89.8, 89.0, 88.0, 89.5])
    tight = pick_best(lat, acc, BUDGET, 0.01)
    assert tight is not None and tight.tied == (2,)
    f.n = 6
    assert list(f.candidates(lat, acc, BUDGET, tight)) == [2, 1, 0, 3, 4, 5]
    lat[5] = 6.3  # 5 (89.5) now on the front, and 3 off it (5 is faster and more accurate): after 4 (88.0)
    assert list(f.candidates(lat, acc, BUDGET, tight)) == [2, 1, 0, 5, 4, 3]


def test_when_the_tied_measure_over_the_budget_the_next_most_accurate_is_picked():
    # tight margin: only config 1 is tied with the best; it measures over the budget (0.8x of dense = 8 ms on
    # the table's scale), so the pick goes to the most accurate finalist that measures within it
    acc = np.array([89.0, 90.05, 89.5, 88.0, 90.0, 80.0])
    first = pick_best(LAT, acc, BUDGET, 0.01)
    assert first is not None and first.index == 1
    ms = {0: 12.0, 1: 16.0, 2: 13.0, 3: 12.0, 5: 10.0}
    f = Finalists(_measure(ms, 20.0, []), DENSE, 10.0, n=4)
    assert list(f.candidates(LAT, acc, BUDGET, first)) == [1, 0, 5, 2]  # 2 last: off the predicted front
    pick = f.choose(lambda i: CONFIGS[i], LAT, acc, BUDGET, first)
    assert pick.index == 2 and pick.rule == MEASURED_RULE  # 89.5 at 6.5 ms on the table's scale: the best within


def test_the_pick_moves_to_the_fastest_measured_within_budget():
    # the machine runs 2x slower than the table (dense 20 ms measured vs 10 predicted): ratios put it on the
    # table's scale. Config 0 (predicted fastest) measures 0.75x dense = 7.5 ms: over; config 2 measures 0.62x
    seen: list = []
    ms = {0: 15.0, 1: 13.0, 2: 12.4, 3: 13.6, 5: 10.0}  # 5: fastest, but far less accurate (not tied)
    f = Finalists(_measure(ms, 20.0, seen), DENSE, 10.0, n=8)
    pick = f.choose(lambda i: CONFIGS[i], LAT, ACC, BUDGET, _first(), lambda i: f"c{i}")
    assert pick.index == 2 and pick.rule == MEASURED_RULE
    assert seen == [[DENSE.key()] + [CONFIGS[i].key() for i in (0, 1, 2, 3, 5)]]  # one run, dense first
    rec = pick.measured
    assert rec is not None and rec.finalists == 5 and rec.outcome == "moved from the prediction's pick"
    assert rec.measured_x_dense == pytest.approx(0.62)
    row0 = rec.rows[0]
    assert row0.label == "c0" and row0.measured_on_table_ms == pytest.approx(7.5)
    assert row0.predicted_ms == 6.0 and row0.measured_ms == 15.0
    assert json.loads(json.dumps(pick.to_dict()))["measured"]["rows"][2]["measured_x_dense"] == pytest.approx(0.62)
    # the record reads back as it was written
    again = Pick.from_dict(json.loads(json.dumps(pick.to_dict())))
    assert again.measured == rec and again.tie_margin == pick.tie_margin and len(again.tied) == len(pick.tied)
    assert rec.row(CONFIGS[2]) == rec.rows[2] and rec.row(CONFIGS[4]) is None


def test_no_finalist_within_budget_keeps_the_predicted_pick():
    f = Finalists(_measure({0: 16.0, 1: 16.0, 2: 16.0, 3: 16.0, 5: 16.0}, 20.0, []), DENSE, 10.0)
    first = _first()
    pick = f.choose(lambda i: CONFIGS[i], LAT, ACC, BUDGET, first)
    assert pick.index == first.index and pick.rule == first.rule
    assert pick.measured is not None and "stands on the prediction" in pick.measured.outcome


def test_a_bad_measurement_is_refused():
    f = Finalists(lambda cs: [1.0], DENSE, 10.0)
    with pytest.raises(ValueError, match="measure returned"):
        f.choose(lambda i: CONFIGS[i], LAT, ACC, BUDGET, _first())


def test_search_times_finalists_on_the_tables_model(tmp_path):
    """End to end on a real (tiny) table: the finalists are timed on its model and recorded in best.json."""
    table = Profiler(ss.SearchSpace.load(DEMO), ProfileSettings(**FAST, resolutions=((32, 32),))).run(
        tmp_path / "t.json"
    )
    space = table.space  # the demo space at the table's 32x32
    r = ss.search(
        space,
        latency=table,
        accuracy=lambda model, cfg: 1.0,  # every config tied: the pick is the latency's alone
        budget=float(table.max_latency()),  # every config admitted: a 1-sample table is noise
        out=tmp_path / "run",
        settings=quick_settings(6, 1, refine=False, finalists=3),
    )
    doc = json.loads((tmp_path / "run" / "best.json").read_text())
    record = BestRecord.load(tmp_path / "run" / "best.json")
    assert record.to_dict() == doc and record.best == r.best  # written and read by the same code
    rec = doc["pick"]["measured"]
    assert all(record.within_budget(row["config"]) == row["within_budget"] for row in rec["rows"])
    # the 3 finalists, then the baselines near the budget (two of each kind at most) timed with them
    n_base = rec["baselines_timed"]
    assert rec["finalists"] == 3 and 1 <= n_base <= 4 and len(rec["rows"]) == 3 + n_base
    assert rec["dense_measured_ms"] > 0
    assert all(not row["label"].startswith("searched") for row in rec["rows"][3:])
    assert {row["label"] for row in rec["rows"][3:]} <= {p["label"] for p in _baseline_points(tmp_path / "run")}
    assert all(row["measured_ms"] > 0 and row["predicted_ms"] <= r.budget_ms * 1.1 + 1e-9 for row in rec["rows"])
    assert rec["guard"] == 1.5 and all(row["measured_x_dense_se"] > 0 for row in rec["rows"])  # 8 rounds timed

    def guarded(row):  # the ratio plus the guard's standard errors (the rounds' and a sitting's), on the table's scale
        se = np.hypot(row["measured_x_dense_se"], rec["sitting_se"])
        return (row["measured_x_dense"] + rec["guard"] * se) * rec["dense_predicted_ms"]

    assert all(row["within_budget"] == (guarded(row) <= r.budget_ms) for row in rec["rows"])

    if doc["pick"]["rule"] == MEASURED_RULE:
        chosen = min((row for row in rec["rows"] if guarded(row) <= r.budget_ms), key=guarded)
        assert chosen["config"] == doc["config"]


def _baseline_points(run_dir):
    base = json.loads((run_dir / "pareto.json").read_text())["baselines"]
    return base["uniform_sparsity"] + base["uniform_resize"]


def test_baselines_are_timed_beside_the_finalists_and_weighed_by_the_same_rule():
    # n = 1 finalist (config 0, the prediction's pick); config 5 (80.0, predicted 5.0 ms) is named a baseline:
    # timed beyond n, recorded with whether the guard admits it, and the pick may fall on it
    seen: list = []
    f = Finalists(_measure({0: 15.0, 5: 10.0}, 20.0, seen), DENSE, 10.0, n=1)
    pick = f.choose(lambda i: CONFIGS[i], LAT, ACC, BUDGET, _first(), lambda i: f"c{i}", baselines=[5, 0])
    assert seen == [[DENSE.key(), CONFIGS[0].key(), CONFIGS[5].key()]]  # 0 already a finalist: timed once
    rec = pick.measured
    assert rec is not None and rec.finalists == 1 and rec.baselines_timed == 1
    assert [(r.label, r.within_budget) for r in rec.rows] == [("c0", False), ("c5", True)]  # 7.5 / 5 ms
    assert pick.index == 5  # the only one within the budget as measured


def test_finalists_are_a_callback_of_the_search_that_replaces_its_pick(tmp_path):
    """Given to `run_search` as a callback, the finalists time the configs its pick weighs and the run's pick is
    theirs (with the timing recorded)."""
    from sparsesearch.search import AccuracyCache, SerialEvaluator, run_search
    from sparsesearch.testing import toy_accuracy, toy_latency, toy_space

    space = toy_space(tmp_path)
    seen: list = []

    def measure(configs):  # the dense config 20 ms, every other its predicted latency twice over
        seen.append(len(configs))
        return [
            20.0 if c.key() == space.densest().key() else 2 * toy_latency(space.encode(c)[None])[0] for c in configs
        ]

    final = Finalists(measure, space.densest(), 10.0, n=3)
    cache = AccuracyCache(space, SerialEvaluator(toy_accuracy))
    run = run_search(space, toy_latency, cache, 7.0, algorithm="random", population=8, generations=2, callbacks=[final])
    assert seen == [4]  # one timing: dense and the 3 finalists (no baselines in a bare run_search)
    assert run.pick is not None and run.pick.measured is not None and run.pick.measured.finalists == 3


def test_finalists_need_a_table(tmp_path):
    space = ss.SearchSpace.load(DEMO)
    with pytest.raises(SparseSearchError, match="needs a latency table"):
        ss.search(space, latency=lambda c: 1.0, accuracy=lambda m, c: 1.0, budget=2.0, progress=False, finalists=2)


class _Timed:
    """A Stat-like measurement: the figure and each round's."""

    def __init__(self, rounds):
        self.rounds = tuple(rounds)
        self.ms = sum(rounds) / len(rounds)


def test_the_guard_keeps_a_pick_clear_of_the_budget_by_its_timing_noise():
    # config 0 (90.0) measures 0.68x dense on average but scatters over the rounds (0.60 .. 0.76: SE 0.033),
    # config 1 (89.0) measures 0.66x steadily; the budget is 0.70x (7 ms of a 10 ms dense). 0 is the more
    # accurate and within the budget on its mean, but not by 1.5 standard errors: the pick is 1
    dense = _Timed([20.0] * 4)
    noisy = _Timed([12.0, 15.2, 13.6, 13.6])  # ratios 0.60, 0.76, 0.68, 0.68
    steady = _Timed([13.2, 13.2, 13.2, 13.2])  # 0.66
    lat, acc = np.array([6.5, 6.6]), np.array([90.0, 89.0])
    first = pick_best(lat, acc, BUDGET, 0.1)
    f = Finalists(lambda cs: [dense, noisy, steady], DENSE, 10.0, n=2)
    pick = f.choose(lambda i: CONFIGS[i], lat, acc, BUDGET, first)
    se = np.std([0.60, 0.76, 0.68, 0.68], ddof=1) / 2
    assert pick.index == 1 and pick.measured is not None
    assert pick.measured.rows[0].measured_x_dense_se == pytest.approx(se)
    assert pick.measured.rows[1].measured_x_dense_se == pytest.approx(0.0)
    f.guard = 0.0  # no guard: the more accurate, noisy one is within the budget on its mean
    assert f.choose(lambda i: CONFIGS[i], lat, acc, BUDGET, first).index == 0


def test_the_guard_allows_for_another_sitting_which_one_sittings_rounds_do_not_see():
    # two steady configs (no spread over the rounds): 0 (90.0) at 0.69x dense, 1 (89.0) at 0.67x; budget 0.70x.
    # Another sitting moves a ratio by about 0.01 on a 2-core VM: 0.69 + 1.5 x 0.01 is over the budget, 0.67 is not
    dense = _Timed([20.0] * 4)
    edge, clear = _Timed([13.8] * 4), _Timed([13.4] * 4)
    lat, acc = np.array([6.5, 6.6]), np.array([90.0, 89.0])
    first = pick_best(lat, acc, BUDGET, 0.1)
    f = Finalists(lambda cs: [dense, edge, clear], DENSE, 10.0, n=2)
    pick = f.choose(lambda i: CONFIGS[i], lat, acc, BUDGET, first)
    assert f.sitting_se == 0.01 and pick.index == 1 and pick.measured is not None
    assert pick.measured.sitting_se == 0.01 and [r.within_budget for r in pick.measured.rows] == [False, True]
    f.sitting_se = 0.0  # the rounds' noise alone: the config at the budget's edge is admitted
    assert f.choose(lambda i: CONFIGS[i], lat, acc, BUDGET, first).index == 0
