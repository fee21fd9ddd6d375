"""The demo's final comparison as data: its rows (`DemoRow`), which baseline each claim is compared with
(`settle_baselines`), and whether the claims held (`verdict` -> `Verdict`, printed in three lines).

The claims: the searched config runs within its budget *as measured*; it scores at or above the best uniform
sparsity and at least `RESIZE_MARGIN` above uniform resizing within that budget. Beside them the verdict says what
the search gains over uniform sparsity without training: the pretrained weights searched as they are
("training_free" row) against the best uniform sparsity of the same weights within the same budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .search.records import BestRecord, MeasuredRow

__all__ = [
    "ROLES",
    "BASELINES",
    "RESIZE_MARGIN",
    "DemoRow",
    "Comparison",
    "Verdict",
    "verdict",
    "settle_baselines",
    "baseline_note",
    "row_of",
]

#: mIoU points the searched config must gain over uniform resizing at the same budget (the demo's claim).
RESIZE_MARGIN = 2.0
#: what a row of the final table is (the verdict reads these, not the display names); a "_candidate" row is a
#: baseline timed beside the one compared with (see `settle_baselines`). "unadapted" and "training_free" rows run
#: the pretrained weights; the others the adapted supernet.
ROLES = ("dense", "unadapted", "uniform_sparsity", "uniform_resize", "training_free", "searched")
BASELINES = ("uniform_sparsity", "uniform_resize")
#: the rows whose config is a uniform sparsity, scored on the pretrained weights too (the training-free baseline)
UNIFORM_SPARSITY_ROLES = ("unadapted", "uniform_sparsity", "uniform_sparsity_candidate")
_NAMES = {
    "uniform_sparsity": "the best uniform sparsity",
    "uniform_resize": "uniform resize",
    "training_free": "the best uniform sparsity of the same weights",
}


@dataclass
class DemoRow:
    """One line of the final comparison: latencies (ms and x dense, predicted by the table and measured),
    accuracy on the held-out split (with its standard error over the images) and GFLOPs."""

    name: str
    config: dict[str, Any]
    predicted_ms: float
    measured_ms: float
    accuracy: float
    gflops: float
    role: str = "searched"
    predicted_x: float = float("nan")
    measured_x: float = float("nan")
    stderr: float = float("nan")
    left_out: tuple[float, ...] = ()  # the accuracy with each test item left out (for paired comparisons)
    # the same config on the pretrained weights, not adapted (uniform-sparsity rows; "unadapted" and
    # "training_free" rows run those weights already): the training-free comparison reads these
    pretrained_accuracy: float = float("nan")
    pretrained_left_out: tuple[float, ...] = ()
    admitted: bool = True  # within the budget by the rule `settle_baselines` applies


def row_of(rows: Sequence[DemoRow], role: str) -> DemoRow | None:
    """The first row of `role`, if any."""
    return next((r for r in rows if r.role == role), None)


def _label(row: DemoRow) -> str:
    """The config a row names: "uniform 0.60" of "uniform sparsity (uniform 0.60)", "unadapted @0.7" of
    "unadapted @0.7 (dense weights, no adaptation)"; else the whole name."""
    if not row.name.endswith(")"):
        return row.name
    if row.role == "unadapted":
        return row.name[: row.name.find(" (")]
    return row.name[row.name.find("(") + 1 : -1]


def _paired_se(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The standard error of a gain over the same test items (leave-one-out values of both sides), when both kept
    them."""
    if not a or len(a) != len(b):
        return None
    from .evaluate import jackknife_stderr  # noqa: PLC0415

    return float(jackknife_stderr([x - y for x, y in zip(a, b)]))


@dataclass
class Comparison:
    """A searched config against one baseline kind (the row `settle_baselines` chose), or its absence."""

    kind: str  # "uniform_sparsity", "uniform_resize" or "training_free"
    needed: float  # the gain the claim needs (0: at or above; the resize margin)
    label: str = ""  # the baseline's config ("uniform 0.60"); "" when the table has none within the budget
    accuracy: float = float("nan")
    measured_x: float = float("nan")
    gain: float = float("nan")  # searched minus baseline accuracy
    paired_se: float | None = None
    over_budget: bool = False  # the baseline row ran over the budget in the final table's timing
    admitted: bool = True  # within the budget by `settle_baselines`' rule (False: none of its kind was)

    @property
    def present(self) -> bool:
        return bool(self.label)

    @property
    def held(self) -> bool:
        return self.present and self.gain >= self.needed

    def phrase(self, need: bool = True) -> str:
        """The gain and the baseline in words; `need`: say what the claim needs."""
        if not self.present:
            return f"no {self.kind.replace('_', ' ')} within the budget to compare with"
        se = f" (+-{self.paired_se:.2f} paired)" if self.paired_se is not None else ""
        over = ""
        if not self.admitted:
            over = ", over the budget: none of its candidates ran within it"
        elif self.over_budget:
            over = " (within the budget by the search's timing)"
        needs = ("; at or above needed" if self.needed == 0 else f"; at least +{self.needed:g} needed") if need else ""
        return (
            f"{self.gain:+.2f}{se} over {_NAMES[self.kind]} ({self.label} at {self.measured_x:.2f}x as measured"
            f"{over}: {self.accuracy:.2f}{needs})"
        )


@dataclass
class Verdict:
    """Whether the demo's claims held, as data; `lines()` says it in three lines.

    speed: the searched config *measured* at or under its budget (as a multiple of dense). accuracy: its accuracy
    at or above the best uniform sparsity and at least the margin above uniform resizing within the same budget.
    training_free (no claim, a figure): the search on the pretrained weights against the best uniform sparsity of
    those weights within the budget.
    """

    budget_x: float
    metric: str
    searched: bool  # the table has a searched row
    measured_x: float = float("nan")
    predicted_x: float = float("nan")
    accuracy: float = float("nan")
    comparisons: list[Comparison] = field(default_factory=list)
    training_free: Comparison | None = None  # None: the table has no training-free searched row
    training_free_accuracy: float = float("nan")
    training_free_x: float = float("nan")  # measured x dense

    @property
    def speed_held(self) -> bool:
        return self.searched and self.measured_x <= self.budget_x

    @property
    def accuracy_held(self) -> bool:
        return self.searched and all(c.held for c in self.comparisons)

    def comparison(self, kind: str) -> Comparison:
        return next(c for c in self.comparisons if c.kind == kind)

    def lines(self) -> list[str]:
        if not self.searched:
            return ["speed: no searched config in the table.", "accuracy: no searched config in the table."]
        fast = self.speed_held
        speed = (
            f"speed: {'held' if fast else 'did not hold'}. The searched config ran at {self.measured_x:.2f}x dense "
            f"as measured (predicted {self.predicted_x:.2f}x), {'within' if fast else 'over'} its budget of "
            f"{self.budget_x:.2f}x."
        )
        accuracy = (
            f"accuracy: {'held' if self.accuracy_held else 'did not hold'}. The searched config scores "
            f"{self.accuracy:.2f} {self.metric}: " + " and ".join(c.phrase() for c in self.comparisons) + "."
        )
        return [speed, accuracy, *self._gain_line()]

    def _gain_line(self) -> list[str]:
        """What the search gains over uniform sparsity with and without training (none without the row)."""
        tf = self.training_free
        if tf is None:
            return []
        adapted = self.comparison("uniform_sparsity")
        after = f"{adapted.gain:+.2f}" if adapted.present else "no uniform sparsity to compare with"
        return [
            f"search gain over uniform sparsity: {after} after adaptation; without training, the pretrained weights "
            f"searched score {self.training_free_accuracy:.2f} {self.metric} at {self.training_free_x:.2f}x as "
            f"measured: {tf.phrase(need=False)}."
        ]


def _compare(kind: str, needed: float, best: DemoRow, base: DemoRow, budget_x: float) -> Comparison:
    """`best` (a searched row) against `base`, on the accuracy of the weights `kind` compares."""
    if kind == "training_free":
        accuracy, left_out = base.pretrained_accuracy, base.pretrained_left_out
    else:
        accuracy, left_out = base.accuracy, base.left_out
    return Comparison(
        kind,
        needed,
        _label(base),
        accuracy,
        base.measured_x,
        best.accuracy - accuracy,
        _paired_se(best.left_out, left_out),
        base.measured_x > budget_x,
        base.admitted,
    )


def _training_free_baseline(rows: Sequence[DemoRow]) -> DemoRow | None:
    """The most accurate uniform sparsity of the pretrained weights among the rows within the budget."""
    pool = [
        r for r in rows if r.role in UNIFORM_SPARSITY_ROLES and r.admitted and not math.isnan(r.pretrained_accuracy)
    ]
    return max(pool, key=lambda r: (r.pretrained_accuracy, -r.measured_x)) if pool else None


def verdict(rows: Sequence[DemoRow], budget_x: float, metric: str = "mIoU", margin: float = RESIZE_MARGIN) -> Verdict:
    """Whether the demo's claims held, from the final table's rows (see `Verdict`): the baselines compared are the
    rows `settle_baselines` chose. A claim whose baseline row is missing does not hold."""
    best = row_of(rows, "searched")
    if best is None:
        return Verdict(budget_x, metric, searched=False)
    out = Verdict(budget_x, metric, True, best.measured_x, best.predicted_x, best.accuracy)
    for kind, needed in zip(BASELINES, (0.0, margin)):
        base = row_of(rows, kind)
        out.comparisons.append(
            Comparison(kind, needed) if base is None else _compare(kind, needed, best, base, budget_x)
        )
    tf = row_of(rows, "training_free")
    if tf is not None:
        base = _training_free_baseline(rows)
        out.training_free = (
            Comparison("training_free", 0.0) if base is None else _compare("training_free", 0.0, tf, base, budget_x)
        )
        out.training_free_accuracy, out.training_free_x = tf.accuracy, tf.measured_x
    return out


def settle_baselines(rows: list[DemoRow], budget_x: float, search: BestRecord | None = None) -> list[DemoRow]:
    """Per baseline kind, the row the verdict compares with: the most accurate of the search's pick and its
    timed neighbours that are within the budget (by the search's own measured rule, `BestRecord.within_budget`,
    where its finalists timed them, as the searched config had to be; else as measured here); the pick by
    prediction when none is. The others stay in the table as "<role>_candidate" rows. Every row's `admitted` says
    whether it is within the budget by that rule."""

    def admitted(r: DemoRow) -> bool:
        by_search = search.within_budget(r.config) if search is not None and r.config else None
        return by_search if by_search is not None else r.measured_x <= budget_x

    for r in rows:
        r.admitted = admitted(r)
    for role in BASELINES:
        group = [r for r in rows if r.role in (role, f"{role}_candidate")]
        fits = [r for r in group if r.admitted]
        if fits:
            chosen = max(fits, key=lambda r: (r.accuracy, -r.measured_x))
            for r in group:
                r.role = role if r is chosen else f"{role}_candidate"
    return rows


def baseline_note(rows: Sequence[DemoRow], search: BestRecord) -> str:
    """A line per baseline row the search timed and its rule left out (measured x dense plus `guard` standard
    errors over the budget): why the verdict compares with another row, or, where no row of that kind was
    admitted, that it compares with this one anyway (a baseline given more time than the budget)."""
    measured = search.measured
    if measured is None:
        return ""
    guard = measured.guard
    budget_x = search.budget_ms / measured.dense_predicted_ms
    sitting = f" with {measured.sitting_se:g} between sittings" if measured.sitting_se else ""

    def line(label: str, hit: MeasuredRow, tail: str) -> str:
        x, se = hit.measured_x_dense, hit.measured_x_dense_se
        return f"{label}: timed by the search at {x:.3f}x +- {se:.3f} dense, {tail} (+{guard:g} SE{sitting})"

    head: list[str] = []
    lines: list[str] = []
    for r in rows:
        hit = measured.row(r.config) if r.config else None
        if hit is None:
            continue
        if r.role == "searched" and hit.within_budget:
            head.append(line("searched", hit, f"within its {budget_x:.2f}x budget by its rule"))
        elif r.role.split("_candidate")[0] in BASELINES and not hit.within_budget:
            then = (
                "not compared"
                if r.role.endswith("_candidate")
                else "compared all the same, as none of its kind was within it (a baseline given more time)"
            )
            over = f"over its {budget_x:.2f}x budget by the rule its pick passed"
            lines.append(line(_label(r), hit, over) + f": {then}")
    return "\n".join(head + lines)
