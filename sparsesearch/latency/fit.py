"""From measurements to a table's figures: a part's in-model time where the in-model pass ran it, its isolated
time scaled by its kind's in-model/isolated ratio otherwise, and the back-to-back correction that maps the sum of
the parts onto whole forwards (`fit_correction`), checked against the calibration configs of the same run."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import SparseSearchWarning
from ..ops import keep_count
from .measure import Stat
from .plan import Entry, ProfilePlan
from .structure import BlockKind, block_kind, stage_shapes, window_row
from .table import KindTable, LatencyTable, ResolutionTable

__all__ = ["CalibrationWarning", "CALIBRATION_TOLERANCE_PCT", "TableFit", "fit_correction", "warn_on_calibration"]


class CalibrationWarning(SparseSearchWarning):
    """A finished table misses its own calibration configs (whole forwards timed in the same run) by more than
    `CALIBRATION_TOLERANCE_PCT`: its parts do not add up to the model it describes."""


#: how far the finished table may miss a calibration config of its own run before the profile warns
CALIBRATION_TOLERANCE_PCT = 10.0


class TableFit:
    """The table of one profile from its measurements.

    Args:
        plan: what was measured (the space, its family and resolutions).
        part_names: the model's parts in forward order, named as in `LatencyTable.parts`.
        entries: every entry of the plan.
        done: each entry's figure, its rounds combined (an in-model entry's parts and plain forward under
            `key|part`).
    """

    def __init__(
        self, plan: ProfilePlan, part_names: Sequence[str], entries: Sequence[Entry], done: dict[str, Stat]
    ) -> None:
        self.plan, self.part_names, self.entries, self.done = plan, list(part_names), list(entries), done

    def table(self, meta: dict[str, Any]) -> LatencyTable:
        """Assemble the measured entries into a LatencyTable with `meta`.

        A part's figure is its in-model time where the in-model pass ran it (averaged over its occurrences);
        otherwise its isolated time scaled by the in-model/isolated ratio of its kind, interpolated over the
        kept counts (the stage's median ratio if the kind never ran in the model; 1 without an in-model pass).
        Then the back-to-back correction is fitted on the calibration runs.
        """
        tables = self.resolution_tables()
        space = self.plan.space.to_dict()
        table = LatencyTable(meta, space, tables, "<profile>")
        calibration = [(e, self.done[e.key]) for e in self.entries if e.part == "model"]
        glue = self.glue()
        if calibration or glue:
            fit_correction(table, tables, calibration, glue, self.plain_pairs())
            table = LatencyTable(meta, space, tables, "<profile>")
            warn_on_calibration(tables)
        return table

    def resolution_tables(self) -> list[ResolutionTable]:
        """One ResolutionTable per resolution: fixed parts and block kinds, without the correction."""
        in_block, in_fixed = self.in_model_figures()
        tables = []
        for res in self.plan.resolutions:
            fixed: dict[str, Stat] = {}
            fixed_details: dict[str, dict[str, Any]] = {}
            for e in self.entries:
                if e.part == "fixed" and e.resolution == res:
                    assert e.name is not None
                    iso, situ = self.done[e.key], in_fixed.get((res, e.name))
                    fixed[e.name] = situ or iso
                    fixed_details[e.name] = _detail(iso, situ, None if situ else 1.0)
            by_kind: dict[BlockKind, list[tuple[int, Stat]]] = {}
            for e in self.entries:
                if e.part == "block" and e.resolution == res:
                    assert e.kind is not None and e.k is not None
                    by_kind.setdefault(e.kind, []).append((e.k, self.done[e.key]))
            stage_ratios: dict[int, list[float]] = {}
            for kind, points in by_kind.items():
                for k, iso in points:
                    situ = in_block.get((kind, k))
                    if situ is not None:
                        stage_ratios.setdefault(kind.stage, []).append(situ.ms / iso.ms)
            kinds: dict[tuple[int, int, str], KindTable] = {}
            for kind, points in by_kind.items():
                points.sort(key=lambda p: p[0])
                covered = [(k, in_block[(kind, k)].ms / iso.ms) for k, iso in points if (kind, k) in in_block]
                fallback = float(np.median(stage_ratios[kind.stage])) if stage_ratios.get(kind.stage) else 1.0
                stats, details = [], []
                for k, iso in points:
                    situ = in_block.get((kind, k))
                    if situ is not None:
                        stats.append(situ)
                        details.append(_detail(iso, situ, None))
                        continue
                    ratio = (
                        float(np.interp(k, [c[0] for c in covered], [c[1] for c in covered])) if covered else fallback
                    )
                    stats.append(_scaled(iso, ratio))
                    details.append(_detail(iso, None, ratio))
                kinds[(kind.stage, kind.window, kind.variant)] = KindTable(
                    kind.stage,
                    kind.window,
                    kind.variant,
                    kind.H,
                    kind.W,
                    kind.dim,
                    kind.heads,
                    kind.num_windows,
                    tuple(k for k, _ in points),
                    tuple(stats),
                    tuple(details),
                )
            tables.append(ResolutionTable(res, fixed, kinds, {}, fixed_details))
        return tables

    def glue(self) -> dict[tuple[int, int], list[float]]:
        """Per resolution, for each in-model config: its whole forward minus the sum of its parts, from the same
        forwards (so a machine that got slower or faster between passes does not leak into it)."""
        out: dict[tuple[int, int], list[float]] = {}
        names = self.part_names
        for e in self.entries:
            if e.part == "in_model" and e.key in self.done and all(f"{e.key}|{n}" in self.done for n in names):
                parts = sum(self.done[f"{e.key}|{n}"].ms for n in names)
                out.setdefault(e.resolution, []).append(self.done[e.key].ms - parts)
        return out

    def plain_pairs(self) -> dict[tuple[int, int], list[tuple[float, float]]]:
        """Per resolution, for each in-model config: (sum of its parts timed with hooks, its plain whole forward
        timed right after, without hooks). Empty for partial results of a profiler that did not time both."""
        out: dict[tuple[int, int], list[tuple[float, float]]] = {}
        names = self.part_names
        for e in self.entries:
            keys = [f"{e.key}|{n}" for n in (*names, "plain")]
            if e.part == "in_model" and all(k in self.done for k in keys):
                out.setdefault(e.resolution, []).append(
                    (sum(self.done[k].ms for k in keys[:-1]), self.done[keys[-1]].ms)
                )
        return out

    def in_model_figures(self) -> tuple[dict[tuple[BlockKind, int], Stat], dict[tuple[tuple[int, int], str], Stat]]:
        """Pool the in-model times of every (block kind, kept count) and fixed part over their occurrences."""
        plan, space = self.plan, self.plan.space
        blocks: dict[tuple[BlockKind, int], list[Stat]] = {}
        fixed: dict[tuple[tuple[int, int], str], list[Stat]] = {}
        block_names = {
            plan.family.block_name(plan.arch, s, j): (s, j) for s, d in enumerate(space.depths) for j in range(d)
        }
        for e in self.entries:
            if e.part != "in_model":
                continue
            assert e.genome is not None
            config = space.decode(np.asarray(e.genome))
            shapes = stage_shapes(space, e.resolution)
            for name in self.part_names:
                stat = self.done.get(f"{e.key}|{name}")
                if stat is None:
                    continue
                if name not in block_names:
                    fixed.setdefault((e.resolution, name), []).append(stat)
                    continue
                s, j = block_names[name]
                w = config.window_size[window_row(space, s, j)]
                kind = block_kind(space, e.resolution, s, j, w, shapes)
                k = keep_count(config.sparsity[s][j], kind.num_windows)
                blocks.setdefault((kind, k), []).append(stat)
        return {key: _pool(v) for key, v in blocks.items()}, {key: _pool(v) for key, v in fixed.items()}


def _pool(stats: list[Stat]) -> Stat:
    """Several measurements of the same part (occurrences in the model): mean figures, total counts."""
    if len(stats) == 1:
        return stats[0]
    return Stat(
        float(np.mean([s.ms for s in stats])),
        float(np.mean([s.spread for s in stats])),
        float(np.mean([s.median for s in stats])),
        min(s.min for s in stats),
        sum(s.n for s in stats),
        sum(s.rejected for s in stats),
    )


def _scaled(stat: Stat, ratio: float) -> Stat:
    return Stat(stat.ms * ratio, stat.spread * ratio, stat.median * ratio, stat.min * ratio, stat.n, stat.rejected)


def _detail(isolated: Stat, in_model: Stat | None, ratio: float | None) -> dict[str, Any]:
    """How a figure was obtained: 'in-model' (timed inside whole forwards) or 'isolated x ratio'."""
    d: dict[str, Any] = {"source": "in-model" if in_model is not None else f"isolated x {ratio:.4f}"}
    d["isolated"] = isolated.to_dict()
    if in_model is not None:
        d["in_model"] = in_model.to_dict()
    return d


def fit_correction(
    table: LatencyTable,
    tables: list[ResolutionTable],
    calibration: list[tuple[Entry, Stat]],
    glue: dict[tuple[int, int], list[float]],
    plain: dict[tuple[int, int], list[tuple[float, float]]] | None = None,
) -> None:
    """Per resolution, the back-to-back correction `offset + scale * sum of parts`:

    - with an in-model pass that also timed each config without hooks (`plain`): least squares of the plain
      whole forward on the sum of the parts timed with hooks, over the in-model configs (each pair timed back to
      back, so the machine's speed cancels out); the offset alone (their median difference) with fewer than 3
      configs, a narrow range, or a scale outside [0.8, 1.25]. Timing every part with hooks costs more than
      the hooks' own calls: on a 2-core VM the parts of sparse configs summed to 4-7% more than the plain
      forward, of dense ones ~1%, which a constant offset cannot absorb;
    - with an in-model pass only: scale 1 and offset = the median over the in-model configs of (whole forward -
      sum of its parts), what runs between the parts (the model's own Python); the calibration configs
      are kept as a check of the finished table (`fit_error_pct`);
    - isolated parts only: least squares over the calibration configs (the offset alone with fewer than 3
      configs, a narrow range, or a fitted scale outside [0.5, 2]).
    """
    for rt in tables:
        rows = [(e, s) for e, s in calibration if tuple(e.resolution) == rt.resolution]
        between = glue.get(rt.resolution)
        if not rows and not between:
            continue
        raw = np.array([table.predict(table.space.decode(np.asarray(e.genome))) for e, _ in rows])
        measured = np.array([s.ms for _, s in rows])
        b = 1.0
        pairs = (plain or {}).get(rt.resolution)
        if pairs:
            x, y = np.array(pairs).T
            offset, b = _line_fit(x, y, (0.8, 1.25))
            method = (
                f"least squares over {len(pairs)} in-model configs: plain whole forward = offset + scale * sum of "
                "its parts timed with hooks"
            )
        elif between:
            offset = float(np.median(between))
            method = f"median of (whole forward - sum of its parts) over {len(between)} in-model configs"
        else:
            if len(rows) >= 3 and np.ptp(raw) > 0.05 * raw.mean():
                A = np.stack([np.ones_like(raw), raw], axis=1)
                (_, fitted_b), *_ = np.linalg.lstsq(A, measured, rcond=None)
                if 0.5 <= fitted_b <= 2.0:
                    b = float(fitted_b)
            offset = float(np.mean(measured - b * raw))
            method = f"least squares: whole forward = offset + scale * sum of isolated parts, over {len(rows)} configs"
        fitted = offset + b * raw
        rt.correction = {
            "offset_ms": offset,
            "scale": b,
            "method": method,
            **({"hooked_glue_ms": float(np.median(between))} if between else {}),  # the offset without the plain fit
            "calibration": [
                {
                    "genome": e.genome,
                    "sum_of_parts_ms": round(float(r), 4),
                    "measured_ms": round(s.ms, 4),
                    "error_pct": round(100 * float((f - s.ms) / s.ms), 3),
                }
                for (e, s), r, f in zip(rows, raw, fitted)
            ],
        }


def warn_on_calibration(tables: Sequence[ResolutionTable], tolerance_pct: float = CALIBRATION_TOLERANCE_PCT) -> None:
    """One CalibrationWarning per resolution whose worst calibration config the table misses by more than
    `tolerance_pct` (its `correction.calibration[].error_pct`, prediction vs the whole forward of the same run)."""
    for rt in tables:
        checks = rt.correction.get("calibration", []) if isinstance(rt.correction, dict) else []
        if not checks:
            continue
        worst = max(checks, key=lambda c: abs(float(c["error_pct"])))
        if abs(float(worst["error_pct"])) > tolerance_pct:
            h, w = rt.resolution
            warnings.warn(
                f"at {h}x{w} the table misses its own calibration config {list(worst['genome'])} by "
                f"{float(worst['error_pct']):+.1f}% (predicted vs its whole forward timed in this run): the parts "
                "do not add up to the model on this machine now; profile again with more --rounds on a quiet "
                "machine, and check the result with `sparsesearch latency validate`",
                CalibrationWarning,
                stacklevel=2,
            )


def _line_fit(x: np.ndarray, y: np.ndarray, scale_range: tuple[float, float]) -> tuple[float, float]:
    """(offset, scale) of y = offset + scale * x by least squares; scale 1 and the median offset when there are
    fewer than 3 points, x spans under 5% of its mean, or the scale falls outside `scale_range`."""
    if len(x) >= 3 and np.ptp(x) > 0.05 * np.mean(x):
        A = np.stack([np.ones_like(x), x], axis=1)
        (a, b), *_ = np.linalg.lstsq(A, y, rcond=None)
        if scale_range[0] <= b <= scale_range[1]:
            return float(a), float(b)
    return float(np.median(y - x)), 1.0
