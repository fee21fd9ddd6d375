"""The demo's two-line verdict: fed rows where each claim holds or fails, it says so in words."""

from __future__ import annotations

import pytest
from sparsesearch.pipeline import RESIZE_MARGIN, DemoRow, verdict


def _row(role: str, measured_x: float, accuracy: float, predicted_x: float | None = None) -> DemoRow:
    return DemoRow(
        name=role,
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
    speed, accuracy = verdict(_table(), budget_x=0.7)
    assert speed.startswith("speed: held.") and "0.65x dense as measured (predicted 0.69x)" in speed
    assert "within its budget of 0.70x" in speed
    assert accuracy.startswith("accuracy: held.")
    assert "+0.50 over the best uniform sparsity (94.50" in accuracy and "+3.00 over uniform resize (92.00" in accuracy


def test_over_budget_as_measured_does_not_hold() -> None:
    speed, accuracy = verdict(_table(searched_x=0.74), budget_x=0.7)
    assert speed.startswith("speed: did not hold.") and "over its budget of 0.70x" in speed
    assert accuracy.startswith("accuracy: held.")  # the claims are judged apart


def test_exactly_at_budget_and_at_the_uniform_baseline_holds() -> None:
    speed, accuracy = verdict(_table(searched_x=0.7, searched=94.5, uniform=94.5, resize=94.5 - RESIZE_MARGIN), 0.7)
    assert speed.startswith("speed: held.") and accuracy.startswith("accuracy: held.")


@pytest.mark.parametrize(
    "uniform, resize, says",
    [
        (95.2, 90.0, "-0.20 over the best uniform sparsity"),  # below uniform sparsity
        (94.0, 93.5, "+1.50 over uniform resize (93.50; at least +2 needed)"),  # too close to resizing
    ],
)
def test_accuracy_claim_fails_in_words(uniform: float, resize: float, says: str) -> None:
    speed, accuracy = verdict(_table(uniform=uniform, resize=resize), budget_x=0.7)
    assert speed.startswith("speed: held.")
    assert accuracy.startswith("accuracy: did not hold.") and says in accuracy


def test_missing_baselines_do_not_hold() -> None:
    rows = [r for r in _table() if r.role not in ("uniform_sparsity", "uniform_resize")]
    _, accuracy = verdict(rows, budget_x=0.7)
    assert accuracy.startswith("accuracy: did not hold.")
    assert "no uniform sparsity within the budget" in accuracy and "no uniform resize within the budget" in accuracy
    assert verdict(rows[:1], 0.7)[0] == "speed: no searched config in the table."
