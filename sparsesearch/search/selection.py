"""The one rule that picks "the best config within the budget", used by the search log, the search result,
best.json and the demo's final table alike.

Among the configs whose latency is within the budget, the highest accuracy a* is found; every config within
`tie` of a* counts as equally accurate (`tie` is the evaluation's own noise for a difference between two configs,
e.g. the standard error of their per-image difference over the same validation images: `evaluate.paired_stderr`),
and the fastest of those wins; a remaining tie goes to the earlier one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .records import Measured

__all__ = ["Pick", "pick_best", "PICK_RULE", "nondominated"]

PICK_RULE = "fastest config within the budget whose accuracy is within the tie margin of the most accurate one"


@dataclass(frozen=True)
class Pick:
    """The chosen index, the rule, and what it weighed."""

    index: int
    rule: str
    tie_margin: float
    best_accuracy: float
    tied: tuple[int, ...]
    measured: Measured | None = None  # finalists re-timed on this machine (`search.finalists`)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "tie_margin": self.tie_margin,
            "best_accuracy": self.best_accuracy,
            "tied_with": len(self.tied) - 1,
            **({"measured": self.measured.to_dict()} if self.measured is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Pick:
        """A pick as best.json records it; the indices into the search's record are not stored there (-1)."""
        measured = d.get("measured")
        return cls(
            -1,
            str(d["rule"]),
            float(d["tie_margin"]),
            float(d["best_accuracy"]),
            (-1,) * (int(d.get("tied_with", 0)) + 1),
            Measured.from_dict(measured) if measured is not None else None,
        )


def pick_best(
    latency_ms: Sequence[float] | np.ndarray, accuracy: Sequence[float] | np.ndarray, budget_ms: float, tie: float = 0.0
) -> Pick | None:
    """Index of the best config within `budget_ms` (see the module docstring), or None if none is within it.

    latency_ms, accuracy: (n,) figures of n configs (NaN accuracy = not evaluated, never picked);
    tie: accuracies within this margin of the best count as equal (>= 0).
    """
    lat = np.asarray(latency_ms, dtype=np.float64)
    acc = np.asarray(accuracy, dtype=np.float64)
    if lat.shape != acc.shape:
        raise ValueError(f"latency and accuracy differ in shape: {lat.shape} vs {acc.shape}")
    ok = (lat <= budget_ms) & np.isfinite(acc)
    if not ok.any():
        return None
    best = float(acc[ok].max())
    margin = max(0.0, float(tie))
    tied = np.flatnonzero(ok & (acc >= best - margin - 1e-12))
    order = np.lexsort((tied, lat[tied]))  # fastest first, then the earlier index
    return Pick(int(tied[order[0]]), PICK_RULE, margin, best, tuple(int(i) for i in tied))


def nondominated(latency_ms: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Positions of the (n,) configs that no other beats in both latency and accuracy (the trade-off front),
    fastest first; of configs equally fast and accurate, the earlier."""
    lat = np.asarray(latency_ms, dtype=np.float64)
    acc = np.asarray(accuracy, dtype=np.float64)
    order = np.lexsort((np.arange(len(lat)), -acc, lat))  # fastest first, then the most accurate, then earlier
    front, best = [], -np.inf
    for i in order:
        if acc[i] > best:
            front.append(int(i))
            best = acc[i]
    return np.asarray(front, dtype=np.int64)
