"""Re-time the configs the pick weighs, on this machine, before choosing.

A search scored by a latency table picks, among many configs tied in accuracy, the fastest *predicted* one, and so
the one the table under-predicts most (the winner's curse: on the 2-core CPU demo a pick predicted at 0.64x dense
ran at 0.70x, over its 0.70x budget). `Finalists` takes the configs the pick rule weighs (accuracy within the tie
margin of the best, predicted within the budget plus a slack), the fastest-predicted of them first, then the rest
of the accuracy-latency front, the most accurate first, `n` in all, times them interleaved with the dense config in
one run, puts the measured ratios to dense on the table's scale (measured x dense times the predicted dense
latency, so a machine that is uniformly faster or slower than the table moves nothing) and applies the same pick
rule to those figures. The baselines near the budget (`choose(baselines=...)`: uniform sparsity and resize) are
timed in the same run: the pick weighs them by that rule like any config, and the record says which of them it
admits, so a comparison with them (the demo's verdict) holds them to the test the pick had to pass.

`Finalists` is a callback of the search's engine (`SearchCallback`): its `pick` hook, called once the search, its
refinement and its baselines are done, replaces the prediction's pick by the measured one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import SparsityConfig
from .backends import SearchCallback, SearchContext
from .records import Measured, MeasuredRow
from .selection import Pick, nondominated, pick_best

if TYPE_CHECKING:
    from .engine import Choice

__all__ = ["Finalists", "MEASURED_RULE"]


MEASURED_RULE = (
    "fastest as measured on this machine (finalists timed interleaved with dense, on the table's scale) among "
    "the configs within the budget as measured (ratio to dense plus `guard` standard errors: the timing's rounds' "
    "and a sitting's) whose accuracy is within the tie margin of the most accurate one"
)

MeasureFn = Callable[[Sequence[SparsityConfig]], Sequence[Any]]
"""configs -> per config its milliseconds, or a Stat-like object with `ms` and `rounds` (each round's figure)."""


def _figures(measured: Sequence[Any], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n,) milliseconds of what `measure` returned (dense first), the (n - 1,) ratios of the others to dense
    and each ratio's standard error over the rounds (the per-round ratios' spread / sqrt(rounds); 0 without
    rounds). Raises ValueError on a malformed measurement."""
    ms = np.asarray([float(getattr(m, "ms", m)) for m in measured], dtype=np.float64)
    if ms.shape != (n,) or not np.all(np.isfinite(ms) & (ms > 0)):
        raise ValueError(f"measure returned {ms!r} for {n} configs")
    ratio = ms[1:] / ms[0]
    dense = np.asarray(getattr(measured[0], "rounds", ()), dtype=np.float64)
    se = np.zeros(n - 1)
    for j, m in enumerate(measured[1:]):
        r = np.asarray(getattr(m, "rounds", ()), dtype=np.float64)
        if len(r) >= 2 and len(r) == len(dense):
            per_round = r / dense
            se[j] = float(per_round.std(ddof=1) / np.sqrt(len(per_round)))
    return ms, ratio, se


@dataclass
class Finalists(SearchCallback):
    """How finalists are re-timed: a callback of the search (`pick`), or called directly (`choose`).

    Attributes:
        measure: configs -> milliseconds per forward of each, timed together in one run on this machine.
        dense: the config the measured figures are put on the table's scale with (the space's densest).
        dense_ms: its predicted latency.
        n: at most this many finalists (the fastest predicted first).
        slack: finalists may be predicted up to this fraction over the budget (the table may over-predict them).
        guard: a finalist counts as within the budget when its measured ratio to dense plus `guard` standard
            errors of that ratio (over the timing's rounds, when `measure` returns Stats with rounds) is: the pick
            is the most accurate that passes, and one that scrapes the budget in this timing would be over it in
            the next about half of the time (on a 2-core VM one config's ratio moved by 0.01-0.03 between runs).
            The next timing differs from this one by about sqrt(2) standard errors, so 1.5 keeps it within the
            budget ~86% of the time at the guard's edge; 2 cost the demo its most accurate configs when the
            machine was noisy (standard errors of 0.03 over five rounds).
        sitting_se: the standard error of a ratio to dense between sittings, which the rounds of one sitting do
            not see; the guard's standard error is that of the rounds and this one combined (root of the sum of
            squares). The same config of the demo space timed in several sittings on a 2-core VM (the
            finalists' way and the demo's final table's way, in fresh processes and in one) gave ratios to dense
            of 0.674-0.700 (standard deviation 0.009) where each sitting's rounds gave standard errors of
            0.002-0.006: with the rounds' alone, a pick at the budget's edge measured over it in the next sitting.
    """

    measure: MeasureFn
    dense: SparsityConfig
    dense_ms: float
    n: int = 8
    slack: float = 0.1
    guard: float = 1.5
    sitting_se: float = 0.01

    def pick(self, ctx: SearchContext, choice: Choice, first: Pick) -> Pick:
        """The search's pick re-timed: `choose` over everything the pick weighs, with the baselines near the
        budget (per kind, the two slowest predicted within the budget plus the slack) timed beside them."""
        near = choice.baselines_near(ctx.budget_ms * (1.0 + self.slack))
        return self.choose(choice.config, choice.latency_ms, choice.accuracy, ctx.budget_ms, first, choice.label, near)

    def candidates(self, lat: np.ndarray, acc: np.ndarray, budget_ms: float, first: Pick) -> np.ndarray:
        """Indices of the finalists among the configs predicted within the budget plus the slack, `n` in all:
        those within the tie margin of `first.best_accuracy`, the fastest predicted first, at most half of the
        `n` (rounded up); then the rest of the trade-off front (no config both faster and more accurate), the
        most accurate first; then the other tied ones; then the others, the most accurate first (ties: the
        earlier index). The front is there for when the tied ones measure over the budget: a table errs most on
        the configs a search pushed to the budget's edge (on the 2-core demo eight tied finalists all measured
        over it), and the front's next configs are the pick's next best."""
        ok = np.isfinite(acc) & (lat <= budget_ms * (1.0 + self.slack))
        idx = np.flatnonzero(ok)
        tied = acc[idx] >= first.best_accuracy - first.tie_margin - 1e-12
        front = np.isin(np.arange(len(idx)), nondominated(lat[idx], acc[idx])) & ~tied
        at = np.flatnonzero(tied)
        at = at[np.lexsort((idx[at], lat[idx][at]))]  # the tied ones, fastest predicted first
        first_tied = np.zeros(len(idx), dtype=bool)
        first_tied[at[: (max(1, self.n) + 1) // 2]] = True
        group = np.where(first_tied, 0, np.where(front, 1, np.where(tied, 2, 3)))
        within = np.where(tied, lat[idx], -acc[idx])
        order = np.lexsort((idx, within, group))  # last key first: the group, then its own order
        return idx[order[: max(1, self.n)]]

    def choose(
        self,
        configs: Callable[[int], SparsityConfig],
        lat: np.ndarray,
        acc: np.ndarray,
        budget_ms: float,
        first: Pick,
        labels: Callable[[int], str] = lambda i: "",
        baselines: Sequence[int] = (),
    ) -> Pick:
        """The pick among the finalists by their measured figures, or `first` (the prediction's pick) when no
        finalist measures within the budget; either way with the measurements in `Pick.measured`.

        configs(i), labels(i): the config and label of entry i of `lat` / `acc` ((n,) predicted ms, accuracy).
        baselines: entries (e.g. uniform sparsity near the budget) timed with the finalists whatever the
            prediction says of them, beyond the `n`: the pick weighs them by the same measured rule, and each
            row's `within_budget` (`records.MeasuredRow`) tells which of them that rule admits (what a
            comparison with them may use).
        """
        idx = self.candidates(lat, acc, budget_ms, first)
        have = set(idx.tolist())
        extra = [i for i in dict.fromkeys(int(b) for b in baselines) if i not in have]  # in order, once each
        idx = np.concatenate([idx, np.asarray(extra, dtype=idx.dtype)])
        ms, ratio, se = _figures(self.measure([self.dense] + [configs(int(i)) for i in idx]), len(idx) + 1)
        scaled = ratio * self.dense_ms
        guarded = (ratio + self.guard * np.hypot(se, self.sitting_se)) * self.dense_ms
        picked = pick_best(guarded, acc[idx], budget_ms, first.tie_margin)
        record = Measured(
            finalists=len(idx) - len(extra),
            baselines_timed=len(extra),
            dense_measured_ms=float(ms[0]),
            dense_predicted_ms=float(self.dense_ms),
            guard=self.guard,
            sitting_se=self.sitting_se,
            rows=[
                MeasuredRow(
                    label=labels(int(i)),
                    config=configs(int(i)),
                    accuracy=float(acc[i]),
                    predicted_ms=float(lat[i]),
                    measured_ms=float(m),
                    measured_x_dense=float(r),
                    measured_x_dense_se=float(e),
                    measured_on_table_ms=float(s),
                    within_budget=bool(g <= budget_ms),
                )
                for i, m, r, e, s, g in zip(idx, ms[1:], ratio, se, scaled, guarded)
            ],
        )
        if picked is None:
            record.outcome = "no finalist measured within the budget: the pick stands on the prediction"
            return Pick(first.index, first.rule, first.tie_margin, first.best_accuracy, first.tied, record)
        chosen = int(idx[picked.index])
        record.outcome = "kept the prediction's pick" if chosen == first.index else "moved from the prediction's pick"
        record.measured_x_dense = float(ratio[picked.index])
        tied = tuple(int(idx[j]) for j in picked.tied)
        return Pick(chosen, MEASURED_RULE, picked.tie_margin, picked.best_accuracy, tied, record)
