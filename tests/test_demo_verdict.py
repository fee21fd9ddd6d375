"""The demo's verdict: fed rows where each claim holds or fails, its outcome says which, and why."""

from __future__ import annotations

import pytest
from sparsesearch.config import SparsityConfig
from sparsesearch.search.records import BestRecord, Candidate, Measured, MeasuredRow, ParetoRecord
from sparsesearch.search.selection import Pick
from sparsesearch.verdict import RESIZE_MARGIN, DemoRow, baseline_note, settle_baselines, verdict


def _row(
    role: str, measured_x: float, accuracy: float, predicted_x: float | None = None, name: str | None = None
) -> DemoRow:
    return DemoRow(
        name=name or role,
        config={},
        predicted_ms=10.0 * (predicted_x if predicted_x is not None else measured_x),
        measured_ms=12.0 * measured_x,
        accuracy=accuracy,
        gflops=1.0,
        role=role,
        predicted_x=predicted_x if predicted_x is not None else measured_x,
        measured_x=measured_x,
    )


def _table(searched_x: float = 0.65, searched: float = 95.0, uniform: float = 94.5, resize: float = 92.0) -> list:
    return [
        _row("dense", 1.0, 96.0),
        _row("unadapted", 0.55, 90.0),
        _row("uniform_sparsity", 0.62, uniform),
        _row("uniform_resize", 0.60, resize),
        _row("searched", searched_x, searched, predicted_x=0.69),
    ]


def test_every_claim_holds() -> None:
    v = verdict(_table(), budget_x=0.7)
    assert v.speed_held and v.accuracy_held
    assert (v.measured_x, v.predicted_x, v.budget_x, v.accuracy) == (0.65, 0.69, 0.7, 95.0)
    uni, rsz = v.comparison("uniform_sparsity"), v.comparison("uniform_resize")
    assert (uni.label, uni.measured_x, uni.accuracy, uni.needed, uni.held) == ("uniform_sparsity", 0.62, 94.5, 0, True)
    assert uni.gain == pytest.approx(0.5) and not uni.over_budget and uni.paired_se is None
    assert (rsz.measured_x, rsz.accuracy, rsz.needed, rsz.held) == (0.60, 92.0, RESIZE_MARGIN, True)
    assert rsz.gain == pytest.approx(3.0)


def test_the_printed_lines_are_made_from_the_outcome() -> None:
    held, failed = verdict(_table(), budget_x=0.7), verdict(_table(searched_x=0.74, uniform=95.2), budget_x=0.7)
    for v in (held, failed):
        speed, accuracy = v.lines()  # no training-free row: two lines
        assert speed.startswith(f"speed: {'held' if v.speed_held else 'did not hold'}.")
        assert accuracy.startswith(f"accuracy: {'held' if v.accuracy_held else 'did not hold'}.")
        assert f"{v.measured_x:.2f}x" in speed and all(f"{c.gain:+.2f}" in accuracy for c in v.comparisons)


def test_over_budget_as_measured_does_not_hold() -> None:
    v = verdict(_table(searched_x=0.74), budget_x=0.7)
    assert not v.speed_held and v.accuracy_held  # the claims are judged apart


def test_exactly_at_budget_and_at_the_uniform_baseline_holds() -> None:
    v = verdict(_table(searched_x=0.7, searched=94.5, uniform=94.5, resize=94.5 - RESIZE_MARGIN), 0.7)
    assert v.speed_held and v.accuracy_held


@pytest.mark.parametrize(
    "uniform, resize, failing, gain",
    [
        (95.2, 90.0, "uniform_sparsity", -0.2),  # below uniform sparsity
        (94.0, 93.5, "uniform_resize", 1.5),  # above resize, but by less than the margin
    ],
)
def test_the_accuracy_claim_fails_on_the_baseline_it_misses(uniform, resize, failing, gain) -> None:
    v = verdict(_table(uniform=uniform, resize=resize), budget_x=0.7)
    assert v.speed_held and not v.accuracy_held
    assert [c.kind for c in v.comparisons if not c.held] == [failing]
    assert v.comparison(failing).gain == pytest.approx(gain)


def test_missing_baselines_do_not_hold() -> None:
    rows = [r for r in _table() if r.role not in ("uniform_sparsity", "uniform_resize")]
    v = verdict(rows, budget_x=0.7)
    assert not v.accuracy_held and [c.present for c in v.comparisons] == [False, False]
    none = verdict(rows[:1], 0.7)
    assert not none.searched and not none.speed_held and not none.accuracy_held


def _candidates(pick_x: float, sparser_x: float, denser_x: float) -> list[DemoRow]:
    """The search's uniform pick (94.5) between a denser (94.8) and a sparser (94.1) candidate, as measured."""
    return [
        _row("dense", 1.0, 96.0),
        _row("uniform_sparsity_candidate", denser_x, 94.8, name="uniform sparsity (uniform 0.40)"),
        _row("uniform_sparsity", pick_x, 94.5, name="uniform sparsity (uniform 0.50)"),
        _row("uniform_sparsity_candidate", sparser_x, 94.1, name="uniform sparsity (uniform 0.60)"),
        _row("uniform_resize", 0.60, 92.0),
        _row("searched", 0.68, 94.3, predicted_x=0.69),
    ]


@pytest.mark.parametrize(
    "xs, compared, held, over",
    [
        ((0.71, 0.65, 0.78), "0.60", True, False),  # the pick ran over: the sparser candidate within it is compared
        ((0.66, 0.62, 0.69), "0.40", False, False),  # a denser candidate fits: it is the one compared (harder)
        ((0.72, 0.71, 0.8), "0.50", False, True),  # none fits: the pick stays, flagged as over the budget
    ],
)
def test_the_baseline_compared_is_the_best_within_the_budget_as_measured(xs, compared, held, over) -> None:
    pick_x, sparser_x, denser_x = xs
    rows = settle_baselines(_candidates(pick_x=pick_x, sparser_x=sparser_x, denser_x=denser_x), budget_x=0.7)
    assert [r.name for r in rows if r.role == "uniform_sparsity"] == [f"uniform sparsity (uniform {compared})"]
    uni = verdict(rows, 0.7).comparison("uniform_sparsity")
    assert uni.label == f"uniform {compared}" and uni.held is held and uni.over_budget is over


def test_the_gains_carry_their_paired_standard_error_when_the_rows_kept_their_items() -> None:
    rows = _table()
    # four test items: the searched row gains 0.4, 0.6, 0.5, 0.5 over uniform on the leave-one-out values
    rows[2].left_out = (94.0, 94.0, 94.0, 94.0)
    rows[4].left_out = (94.4, 94.6, 94.5, 94.5)
    v = verdict(rows, budget_x=0.7)
    d = [0.4, 0.6, 0.5, 0.5]
    mean = sum(d) / 4
    se = (3 / 4 * sum((x - mean) ** 2 for x in d)) ** 0.5  # jackknife over the items: 0.12
    assert v.comparison("uniform_sparsity").paired_se == pytest.approx(se)
    assert v.comparison("uniform_resize").paired_se is None  # the resize row kept no items: no paired figure


def test_a_baseline_predicted_just_over_the_budget_is_still_timed(tmp_path) -> None:
    """The table may over-predict: with no resize predicted within the budget, the fastest one predicted within
    the budget + 10% becomes the resize row (and `settle_baselines` flags it if it runs over)."""
    from pathlib import Path

    import sparsesearch as ss
    from sparsesearch.pipeline import DemoOptions, _Demo

    space = ss.SearchSpace.load(Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml")
    demo = _Demo(DemoOptions(out=str(tmp_path / "run")), lambda m: None, False)
    dense = space.densest().to_dict()
    at = {r: {**dense, "resolution": [r, r]} for r in (224, 192)}
    uni = {"latency_ms": 6.5, "accuracy": 90.0, "label": "uniform 0.50", "config": space.uniform(0.5).to_dict()}
    best = _best_record(space.uniform(0.6), budget_ms=7.0, tie=0.05)
    for lat192, expect in ((7.5, ["dense 192x192"]), (7.9, [])):  # within 7.7 (budget + 10%) / not
        resize = [
            {"latency_ms": 9.0, "accuracy": 92.0, "label": "dense 224x224", "config": at[224]},
            {"latency_ms": lat192, "accuracy": 91.0, "label": "dense 192x192", "config": at[192]},
        ]
        pareto = ParetoRecord.from_dict(
            {**_HEADER, "front": [], "baselines": {"uniform_sparsity": [uni], "uniform_resize": resize}}
        )
        rows = demo.picks(space, best, pareto)
        assert [n.split("(")[1][:-1] for n, role, _ in rows if role.startswith("uniform_resize")] == expect
        assert [role for _, role, _ in rows if role.startswith("uniform_resize")] == ["uniform_resize"] * len(expect)


def _cfg(p: float) -> dict:
    return SparsityConfig.uniform(p, [2, 2], 4).to_dict()


_HEADER = {"metric": "mIoU", "budget_ms": 7.0, "algorithm": "ga", "space": "demo", "evaluated": 10}


def _best_record(config: SparsityConfig, budget_ms: float = 7.0, tie: float = 0.0, measured=None) -> BestRecord:
    pick = Pick(0, "rule", tie, 95.0, (0,), measured)
    return BestRecord(Candidate(config, 6.9, 95.0, label="searched"), "mIoU", budget_ms, "ga", "demo", 10, pick)


def _best_with_timings(timed: dict[float, tuple[float, float]], guard: float = 1.5) -> BestRecord:
    """A search record whose finalists timed uniform p at (x dense, SE), admitted by the guard against 0.7x."""
    rows = [
        MeasuredRow(
            label=f"uniform {p}",
            config=SparsityConfig.from_dict(_cfg(p)),
            accuracy=90.0,
            predicted_ms=6.9,
            measured_ms=x * 12.0,
            measured_x_dense=x,
            measured_x_dense_se=se,
            measured_on_table_ms=x * 10.0,
            within_budget=(x + guard * se) * 10.0 <= 7.0,
        )
        for p, (x, se) in timed.items()
    ]
    measured = Measured(len(rows), 0, 12.0, 10.0, guard, rows)
    record = _best_record(SparsityConfig.from_dict(_cfg(0.3)), measured=measured)
    assert BestRecord.from_dict(record.to_dict()).to_dict() == record.to_dict()  # as best.json holds it
    return record


def test_a_baseline_the_search_timed_is_admitted_by_the_searchs_rule_not_by_one_timing_here() -> None:
    # uniform 0.50 runs at 0.69x here, within 0.70x, and is the more accurate; but the search timed it at 0.69x
    # +- 0.014 beside its pick, and its rule (+1.5 SE: 0.711x) left it out as it left out configs of its own at
    # that edge: the verdict compares with uniform 0.60, which the search admitted (0.62x +- 0.01)
    rows = _candidates(pick_x=0.69, sparser_x=0.63, denser_x=0.75)
    for r, p in zip(rows[1:4], (0.4, 0.5, 0.6)):
        r.config = _cfg(p)
    rows[-1].config = _cfg(0.3)  # the searched config, timed by the search at 0.664x +- 0.02: admitted
    best = _best_with_timings({0.4: (0.74, 0.01), 0.5: (0.69, 0.014), 0.6: (0.62, 0.01), 0.3: (0.664, 0.02)})
    assert [best.within_budget(_cfg(p)) for p in (0.4, 0.5, 0.6, 0.3, 0.7)] == [False, False, True, True, None]
    settled = settle_baselines(rows, 0.7, best)
    assert [r.name for r in settled if r.role == "uniform_sparsity"] == ["uniform sparsity (uniform 0.60)"]
    note = baseline_note(settled, best).splitlines()
    assert note == [
        "searched: timed by the search at 0.664x +- 0.020 dense, within its 0.70x budget by its rule (+1.5 SE)",
        "uniform 0.40: timed by the search at 0.740x +- 0.010 dense, over its 0.70x budget by the rule its pick "
        "passed (+1.5 SE): not compared",
        "uniform 0.50: timed by the search at 0.690x +- 0.014 dense, over its 0.70x budget by the rule its pick "
        "passed (+1.5 SE): not compared",
    ]
    # without the search's timings the same rows compare with uniform 0.50, as measured here
    rows = _candidates(pick_x=0.69, sparser_x=0.63, denser_x=0.75)
    assert [r.name for r in settle_baselines(rows, 0.7) if r.role == "uniform_sparsity"] == [
        "uniform sparsity (uniform 0.50)"
    ]


def test_a_baseline_kind_with_nothing_admitted_is_compared_all_the_same_and_says_so() -> None:
    rows = _candidates(pick_x=0.69, sparser_x=0.66, denser_x=0.75)
    for r, p in zip(rows[1:4], (0.4, 0.5, 0.6)):
        r.config = _cfg(p)
    best = _best_with_timings({0.4: (0.74, 0.01), 0.5: (0.69, 0.014), 0.6: (0.69, 0.02)})
    settled = settle_baselines(rows, 0.7, best)
    assert [r.name for r in settled if r.role == "uniform_sparsity"] == ["uniform sparsity (uniform 0.50)"]
    assert "uniform 0.50: timed by the search at 0.690x +- 0.014 dense" in baseline_note(settled, best)
    assert "compared all the same, as none of its kind was within it" in baseline_note(settled, best)


def _with_training_free(tf_accuracy: float, admitted: tuple[bool, bool, bool]) -> list[DemoRow]:
    """A table with a training-free searched row (87.0 at 0.66x) and uniform rows scored on both weights: the
    unadapted 0.7 (80.0), the uniform pick (adapted 94.5, pretrained 82.0), a denser candidate (94.8 / 84.0)."""
    rows = _table()
    rows[1].name = "unadapted @0.7 (dense weights, no adaptation)"
    unadapted, uniform = rows[1], rows[2]
    unadapted.accuracy = unadapted.pretrained_accuracy = 80.0
    uniform.pretrained_accuracy = 82.0
    denser = _row("uniform_sparsity_candidate", 0.69, 94.8, name="uniform sparsity (uniform 0.40)")
    denser.pretrained_accuracy = 84.0
    free = _row("training_free", 0.66, tf_accuracy, name="training-free searched")
    free.pretrained_accuracy = tf_accuracy
    for r, ok in zip((unadapted, uniform, denser), admitted):
        r.admitted = ok
    return [*rows[:3], denser, *rows[3:-1], free, rows[-1]]


@pytest.mark.parametrize(
    "admitted, label, base",
    [
        ((True, True, True), "uniform 0.40", 84.0),  # the most accurate pretrained uniform
        ((True, True, False), "uniform_sparsity", 82.0),  # the denser one ran over the budget: not compared
        ((True, False, False), "unadapted @0.7", 80.0),  # the unadapted row is a uniform sparsity of the same weights
    ],
)
def test_the_training_free_search_is_compared_with_the_best_uniform_sparsity_of_the_same_weights(
    admitted, label, base
) -> None:
    v = verdict(_with_training_free(87.0, admitted), budget_x=0.7)
    tf = v.training_free
    assert tf is not None and tf.label == label and tf.accuracy == base and tf.gain == pytest.approx(87.0 - base)
    assert (v.training_free_accuracy, v.training_free_x) == (87.0, 0.66)
    # the adapted claims still read the adapted accuracies: uniform 0.40 (94.8) was not settled as the pick here
    assert v.comparison("uniform_sparsity").accuracy == 94.5
    assert v.accuracy_held and v.speed_held  # the training-free figure is no claim of its own


def test_the_third_line_gives_the_search_gain_with_and_without_training() -> None:
    v = verdict(_with_training_free(81.0, (True, True, True)), budget_x=0.7)
    lines = v.lines()
    assert len(lines) == 3 and lines[2].startswith("search gain over uniform sparsity: +0.50 after adaptation")
    assert f"{v.training_free.gain:+.2f} over the best uniform sparsity of the same weights" in lines[2]
    assert v.training_free.gain == pytest.approx(-3.0)  # a loss is reported as one, not hidden


def test_settle_baselines_marks_the_rows_within_the_budget() -> None:
    rows = settle_baselines(_candidates(pick_x=0.71, sparser_x=0.65, denser_x=0.78), budget_x=0.7)
    assert [r.admitted for r in rows] == [r.measured_x <= 0.7 for r in rows]


def test_a_baseline_admitted_by_the_searchs_timing_but_over_in_this_one_says_so() -> None:
    rows = _table()
    rows[2].measured_x = 0.705  # the uniform pick: within the budget by the search's rule, over it in this timing
    uni = verdict(settle_baselines(rows, 0.7), 0.7).comparison("uniform_sparsity")
    assert uni.over_budget and not uni.admitted  # admitted by this timing's figure alone (no search record here)
    assert "none of its candidates ran within it" in uni.phrase()
    rows[2].admitted = True  # as when the search's finalists admitted it
    uni = verdict(rows, 0.7).comparison("uniform_sparsity")
    assert uni.over_budget and uni.admitted and "(within the budget by the search's timing)" in uni.phrase()
    assert "none of its candidates" not in uni.phrase()
