"""Check a latency table against the real thing: time whole-model forwards of configs of its space end to end
and compare with the table's predictions (MAPE, share within +-10%, Kendall tau, worst error)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import SparsityConfig
from ..errors import LatencyTableError
from ..fileio import atomic_write_text
from ..models.family import prunable
from ..scoped import torch_threads
from ..space import SearchSpace
from .env import DTYPES, device_type
from .load import LoadMonitor, default_max_load
from .malloc import malloc_tuned
from .measure import (
    Stat,
    Timer,
    combine_rounds,
    make_timer,
    time_interleaved,
)
from .runtime import check_runtime, ort_call, runtime_version
from .table import LatencyTable

__all__ = [
    "ValidationRow",
    "ValidationReport",
    "kendall_tau_b",
    "validation_genomes",
    "ValidationSettings",
    "validate",
    "time_configs",
    "report_paths",
    "write_report",
    "table_model",
]


def kendall_tau_b(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two equally long sequences (ties counted as in scipy.stats.kendalltau); NaN when fewer
    than two items or either sequence is constant. O(n^2) in numpy: validations hold tens of configs, and this
    keeps scipy off the path of `latency validate` (the GPU image has no scipy)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"kendall_tau_b needs two 1-d sequences of one length, got {x.shape} and {y.shape}")
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    pairs = len(i)
    denom = np.sqrt(float(pairs - np.count_nonzero(dx == 0)) * float(pairs - np.count_nonzero(dy == 0)))
    return float(np.sum(dx * dy) / denom) if denom > 0 else float("nan")


@dataclass
class ValidationRow:
    """One validated config: its genome, the prediction and the measurement (ms)."""

    label: str
    genome: list[int]
    predicted: float
    measured: Stat

    @property
    def error(self) -> float:
        """Signed relative error of the prediction, (predicted - measured) / measured."""
        return (self.predicted - self.measured.ms) / self.measured.ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "genome": self.genome,
            "predicted_ms": round(self.predicted, 5),
            "measured_ms": round(self.measured.ms, 5),
            "measured_spread_ms": round(self.measured.spread, 5),
            "measured_median_ms": round(self.measured.median, 5),
            "measured_fastest_ms": round(self.measured.min, 5),
            "measured_rounds_ms": [round(v, 5) for v in self.measured.rounds],
            "rejected_samples": self.measured.rejected,
            "error_pct": round(100 * self.error, 3),
        }


@dataclass
class ValidationReport:
    """Predicted vs measured latency of a set of configs, with the summary figures."""

    table: str
    rows: list[ValidationRow]
    settings: dict[str, Any] = field(default_factory=dict)
    drift: list[dict[str, Any]] = field(default_factory=list)

    @property
    def speed_vs_profile(self) -> float | None:
        """Median over the profile's calibration configs, timed again here, of (time in the profile / time
        now): above 1, the machine runs faster now than while it was profiled (None without them)."""
        if not self.drift:
            return None
        return float(np.median([d["profile_ms"] / d["measured_ms"] for d in self.drift]))

    @property
    def mape_drift_corrected(self) -> float | None:
        """MAPE after dividing every prediction by `speed_vs_profile`: the error that is not the machine
        running at another speed than while it was profiled (a diagnostic, not the headline figure)."""
        f = self.speed_vs_profile
        if f is None:
            return None
        return float(100 * np.mean([abs(r.predicted / f - r.measured.ms) / r.measured.ms for r in self.rows]))

    @property
    def errors_drift_corrected(self) -> np.ndarray | None:
        """Signed relative errors after dividing every prediction by `speed_vs_profile` (None without it)."""
        f = self.speed_vs_profile
        if f is None:
            return None
        return np.array([(r.predicted / f - r.measured.ms) / r.measured.ms for r in self.rows])

    @property
    def errors(self) -> np.ndarray:
        return np.array([r.error for r in self.rows])

    @property
    def mape(self) -> float:
        """Mean absolute percentage error, in percent."""
        return float(100 * np.mean(np.abs(self.errors)))

    @property
    def within_10(self) -> float:
        """Share of configs predicted within +-10%, in percent."""
        return float(100 * np.mean(np.abs(self.errors) <= 0.10))

    @property
    def kendall_tau(self) -> float:
        """Rank agreement of predictions and measurements (1 = same order)."""
        return kendall_tau_b([r.predicted for r in self.rows], [r.measured.ms for r in self.rows])

    @property
    def worst(self) -> ValidationRow:
        """The row with the largest absolute relative error."""
        return max(self.rows, key=lambda r: abs(r.error))

    def summary(self) -> dict[str, Any]:
        w = self.worst
        return {
            "n": len(self.rows),
            "mape_pct": round(self.mape, 3),
            "within_10_pct": round(self.within_10, 2),
            "kendall_tau": round(self.kendall_tau, 4),
            "worst_error_pct": round(100 * w.error, 3),
            "worst_label": w.label,
            "measured_range_ms": [
                round(min(r.measured.ms for r in self.rows), 4),
                round(max(r.measured.ms for r in self.rows), 4),
            ],
            "speed_vs_profile": None if self.speed_vs_profile is None else round(self.speed_vs_profile, 4),
            "mape_drift_corrected_pct": None
            if self.mape_drift_corrected is None
            else round(self.mape_drift_corrected, 3),
            **self._drift_corrected_summary(),
        }

    def _drift_corrected_summary(self) -> dict[str, Any]:
        """Share within +-10% and worst error once the machine-speed factor is removed (Kendall tau does not
        change: one factor on every prediction keeps their order)."""
        e = self.errors_drift_corrected
        if e is None:
            return {
                "within_10_drift_corrected_pct": None,
                "worst_drift_corrected_pct": None,
                "worst_drift_corrected_label": None,
            }
        i = int(np.argmax(np.abs(e)))
        return {
            "within_10_drift_corrected_pct": round(float(100 * np.mean(np.abs(e) <= 0.10)), 2),
            "worst_drift_corrected_pct": round(float(100 * e[i]), 3),
            "worst_drift_corrected_label": self.rows[i].label,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "summary": self.summary(),
            "settings": self.settings,
            "rows": [r.to_dict() for r in self.rows],
            "drift_check": self.drift,
        }


def table_model(table: LatencyTable) -> tuple[torch.nn.Module, dict[tuple[int, int], torch.Tensor]]:
    """The table's model as its profile ran it (head, classes, seed, dtype, device; eval mode) and one random
    input (batch, 3, H, W) per resolution of the table."""
    meta = table.meta
    device = torch.device(meta["device_type"])
    dtype = DTYPES[meta["dtype"]]
    head = meta.get("head", "cls")
    seed = int(meta.get("seed", 0))
    model = table.space.create_model(
        seed=seed, head=None if head == "none" else head, num_classes=int(meta.get("num_classes", 1000))
    )
    model = model.eval().to(device=device, dtype=dtype)
    images = {}
    for res in table.space.resolutions:
        g = torch.Generator().manual_seed(seed + res[0] * 7 + res[1])
        images[res] = torch.randn(int(meta["batch"]), 3, *res, generator=g).to(device=device, dtype=dtype)
    return model, images


def _uniform_genome(table: LatencyTable, p: float, resolution_index: int) -> np.ndarray:
    """Every gene at its choice nearest to p (ties: lower), default windows, one resolution."""
    space = table.space
    x = space.encode(space.densest(space.resolutions[resolution_index]))
    for gi, g in enumerate(space.genes):
        x[gi] = int(np.argmin([abs(c - p) for c in g.choices]))
    return space.repair(x)


def validation_genomes(table: LatencyTable, n: int = 50, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """The configs a validation times: per resolution the dense config and one 'uniform' config per sparsity
    level of the space (each gene at its nearest choice), then n random configs; duplicates dropped."""
    space = table.space
    levels = sorted({c for g in space.genes for c in g.choices})
    out: list[tuple[str, np.ndarray]] = []
    seen: set[tuple[int, ...]] = set()

    def add(label: str, genome: np.ndarray) -> None:
        key = tuple(int(v) for v in genome)
        if key not in seen:
            seen.add(key)
            out.append((label, np.asarray(genome, dtype=np.int64)))

    for ri, res in enumerate(space.resolutions):
        tag = f"@{res[0]}x{res[1]}" if len(space.resolutions) > 1 else ""
        add(f"dense{tag}", space.encode(space.densest(res)))
        for p in levels:
            add(f"uniform {p:g}{tag}", _uniform_genome(table, p, ri))
    rng = np.random.default_rng(seed)
    for i, genome in enumerate(space.sample_genes(rng, n) if n > 0 else []):
        add(f"random {i}", genome)
    return out


@dataclass(frozen=True)
class ValidationSettings:
    """How `validate` times a table's configs.

    Attributes:
        n, seed: random configs (`validation_genomes`), beside the dense and uniform ones.
        warmup, repeats, rounds: per config and round, and passes over all configs (None: the table's). Each
            config's figure combines its rounds by the table's statistic, as the profiler did its entries.
        allow_foreign: skip `table.check_compatible` (measure on this machine anyway).
        quiet, max_load, max_wait_s: wait for a quiet machine before each pass over the configs, as
            `ProfileSettings`.
        drift_check: also time the profile's calibration configs again (not part of the figures) to tell how
            much faster or slower the machine runs now than while it was profiled (`speed_vs_profile`).
        runtime: where to time the whole models, "torch" or "onnxruntime" (each config exported and timed in
            ONNX Runtime, `latency.runtime`); None: the table's. Another runtime than the table's is refused
            unless `allow_foreign`.
    """

    n: int = 50
    seed: int = 0
    warmup: int | None = None
    repeats: int | None = None
    rounds: int | None = None
    allow_foreign: bool = False
    quiet: bool = False
    max_load: float | None = None
    max_wait_s: float = 600.0
    drift_check: bool = True
    runtime: str | None = None


def validate(
    table: LatencyTable,
    settings: ValidationSettings | None = None,
    *,
    timer: Timer | None = None,
    on_config: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> ValidationReport:
    """Time whole-model forwards of `validation_genomes(table, n, seed)` at the table's device, dtype, batch,
    threads, head, resolution(s) and clock, and compare with `table.predict_many`. The allocator stays as this
    process has it (recorded in the report's settings): for a table profiled with `tune_malloc`, call that first
    to time as the profile did (`sparsesearch latency validate` does, for its own process).

    Args:
        settings: how to time (`ValidationSettings`); keyword arguments named as its fields override it
            (``validate(table, n=10, rounds=2)``); another name raises LatencyTableError.
        timer: the Timer (default: the table's clock, trim and statistic, no cache flush).
        on_config: called after each round with (configs timed so far, total).
    """
    o = _settings(settings, overrides)
    n, seed, allow_foreign, max_load, max_wait_s = o.n, o.seed, o.allow_foreign, o.max_load, o.max_wait_s
    meta = table.meta
    dev_type = meta["device_type"]
    device = torch.device(dev_type)
    if not allow_foreign:
        table.check_compatible(runtime=o.runtime)
    else:
        device_type(dev_type)
    runtime = o.runtime or table.runtime
    runtime_version(check_runtime(runtime))
    warmup, repeats, rounds = _counts(meta, o.warmup, o.repeats, o.rounds)
    timer = timer or _table_timer(table)
    genomes = validation_genomes(table, n, seed)
    n_rows = len(genomes)
    checks = _calibration_checks(table) if o.drift_check else []
    genomes = genomes + [(f"profile check {i}", g) for i, (_, g) in enumerate(checks)]
    predicted = table.predict_many(np.stack([g for _, g in genomes]))
    malloc = malloc_tuned() if dev_type == "cpu" else None  # the caller's choice (`tune_malloc`), recorded
    monitor = LoadMonitor()
    threads = int(meta["threads"])
    limit = (max_load if max_load is not None else default_max_load(device, threads)) if o.quiet else None
    model, images = table_model(table)
    timed = _TimedModel(table.space, model, images, timer, warmup, repeats, runtime)
    with torch_threads(threads), torch.inference_mode():
        stats = timed.run([g for _, g in genomes], rounds, monitor, limit, max_wait_s, on_config, predicted)
    rows = [
        ValidationRow(label, [int(v) for v in genome], float(p), combine_rounds(st, table.statistic))
        for (label, genome), p, st in zip(genomes, predicted, stats)
    ]
    drift = [
        {"genome": row.genome, "profile_ms": round(then, 4), "measured_ms": round(row.measured.ms, 4)}
        for (then, _), row in zip(checks, rows[n_rows:])
    ]
    recorded = {
        "n_random": n,
        "seed": seed,
        "warmup": warmup,
        "repeats": repeats,
        "rounds": rounds,
        "threads": threads,
        "dtype": meta["dtype"],
        "batch": int(meta["batch"]),
        "device": meta["device"],
        "allow_foreign": allow_foreign,
        "max_foreign_load": limit,
        "waited_s": round(monitor.waited_s, 1),
        "busy_measurements": monitor.busy,
        "clock": meta.get("clock", "wall"),
        "runtime": runtime,
        "runtime_version": runtime_version(runtime),
        "malloc": malloc,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return ValidationReport(table.source, rows[:n_rows], recorded, drift)


def _settings(settings: ValidationSettings | None, overrides: dict[str, Any]) -> ValidationSettings:
    """`settings` (default: `ValidationSettings()`) with `overrides` applied by field name."""
    names = {f.name for f in dataclasses.fields(ValidationSettings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise LatencyTableError(f"validate: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return dataclasses.replace(settings or ValidationSettings(), **overrides)


def time_configs(
    table: LatencyTable,
    configs: Sequence[SparsityConfig],
    rounds: int = 3,
    repeats: int = 8,
    warmup: int = 2,
    timer: Timer | None = None,
) -> list[Stat]:
    """Timings of a whole forward of each config on this machine, timed as `validate` times its configs: the
    table's model and inputs (head, classes, dtype, batch, random weights), threads, clock and
    statistic; configs interleaved forward by forward, each timed forward after an untimed one of its own,
    `rounds` rounds of `repeats` passes in order of predicted time (`time_interleaved`). For figures relative
    to each other (e.g. to a dense config in the list): the absolute level is this moment's machine speed.
    Each Stat's `rounds` holds every round's figure (`combine_rounds`), for the figures' noise. The models run in
    the table's runtime (torch, or each config exported to ONNX Runtime).
    """
    meta = table.meta
    device_type(meta["device_type"])
    timer = timer or _table_timer(table)
    genomes = [table.space.encode(c) for c in configs]
    model, images = table_model(table)
    timed = _TimedModel(table.space, model, images, timer, warmup, repeats, table.runtime)
    predicted = table.predict_many(np.stack(genomes))
    with torch_threads(int(meta["threads"])), torch.inference_mode():
        stats = timed.run(genomes, rounds, LoadMonitor(), None, 0.0, None, predicted)
    return [combine_rounds(st, table.statistic) for st in stats]


def _table_timer(table: LatencyTable) -> Timer:
    """The timer whole forwards are checked with: the table's device, trim, clock and statistic, no cache flush."""
    meta = table.meta
    return make_timer(
        torch.device(meta["device_type"]),
        float(meta.get("trim", 0.2)),
        clock=meta.get("clock", "wall"),
        statistic=table.statistic,
    )


def _counts(meta: dict[str, Any], warmup: int | None, repeats: int | None, rounds: int | None) -> tuple[int, int, int]:
    """(warmup, repeats, rounds): the given ones, else the table's."""
    warmup = int(meta.get("warmup", 5)) if warmup is None else warmup
    repeats = int(meta.get("repeats", 20)) if repeats is None else repeats
    rounds = int(meta.get("rounds", 1)) if rounds is None else rounds
    if repeats < 1 or warmup < 0 or rounds < 1:
        raise LatencyTableError(f"need repeats >= 1, warmup >= 0, rounds >= 1; got {repeats}, {warmup}, {rounds}")
    return warmup, repeats, rounds


def _calibration_checks(table: LatencyTable) -> list[tuple[float, np.ndarray]]:
    """(ms the profile measured, genome) of every calibration config stored in the table."""
    return [
        (float(c["measured_ms"]), np.asarray(c["genome"], dtype=np.int64))
        for rt in table.resolution_tables
        for c in rt.correction.get("calibration", [])
    ]


@dataclass
class _TimedModel:
    """The table's model and inputs, and how each config is timed."""

    space: SearchSpace
    model: torch.nn.Module
    images: dict[tuple[int, int], torch.Tensor]
    timer: Timer
    warmup: int
    repeats: int
    runtime: str = "torch"

    def forwards(self, genomes: list[np.ndarray]) -> list[tuple[Callable[[], Any], Callable[[], Any]]]:
        """(setup, call) per genome: in torch, set the config and run the model; in ONNX Runtime, the model
        exported at the config (once, here) run in a session (nothing to set up)."""
        net = prunable(self.model)
        out: list[tuple[Callable[[], Any], Callable[[], Any]]] = []
        for g in genomes:
            config = self.space.decode(g)
            image = self.images[self.space.resolutions[int(g[-1])]]
            if self.runtime == "torch":
                out.append((functools.partial(net.set_config, config), functools.partial(self.model, image)))
                continue
            net.set_config(config)
            session = ort_call(self.model, image, self.model)
            out.append((_nothing, functools.partial(session, image.cpu().numpy())))
        return out

    def run(
        self,
        genomes: list[np.ndarray],
        rounds: int,
        monitor: LoadMonitor,
        limit: float | None,
        max_wait_s: float,
        on_config: Callable[[int, int], None] | None,
        predicted: Sequence[float] | np.ndarray | None = None,
    ) -> list[list[Stat]]:
        """Per genome, one Stat per round of whole-model forwards, configs interleaved forward by forward
        (`time_interleaved`), in order of their `predicted` times when given; with `limit` set, every pass first
        waits for a quiet machine."""
        return time_interleaved(
            self.forwards(genomes),
            self.timer,
            self.warmup,
            self.repeats,
            rounds,
            before_pass=lambda: monitor.wait_quiet(limit, budget_s=max_wait_s),
            after_round=None if on_config is None else lambda r: on_config(r * len(genomes), rounds * len(genomes)),
            order=None if predicted is None else [int(i) for i in np.argsort(predicted, kind="stable")],
        )


def _nothing() -> None:
    """The setup of a config exported with its config fixed."""


def report_paths(table_path: str | os.PathLike, keep_existing: bool = False) -> tuple[Path, Path]:
    """(<table>.validation.json, <table>.validation.png) beside the table; with `keep_existing`, the first of
    .validation, .validation2, .validation3, ... whose JSON does not exist yet, so an earlier report (a shipped
    table's, say) is never overwritten."""
    p = Path(table_path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    n = 1
    while True:
        name = f"{stem}.validation{n if n > 1 else ''}"
        if not (keep_existing and p.with_name(name + ".json").exists()):
            return p.with_name(name + ".json"), p.with_name(name + ".png")
        n += 1


def write_report(
    report: ValidationReport, json_path: str | os.PathLike, png_path: str | os.PathLike | None = None
) -> None:
    """Write the JSON report atomically and, if png_path is given, the predicted-vs-measured scatter plot."""
    atomic_write_text(json_path, json.dumps(report.to_dict(), indent=1) + "\n")
    if png_path is None:
        return
    from matplotlib.figure import Figure  # noqa: PLC0415  (no pyplot: the caller's backend stays as it is)

    meas = np.array([r.measured.ms for r in report.rows])
    pred = np.array([r.predicted for r in report.rows])
    fig = Figure(figsize=(5.5, 5), dpi=120)
    ax = fig.subplots()
    lo, hi = float(min(meas.min(), pred.min())) * 0.95, float(max(meas.max(), pred.max())) * 1.05
    line = np.array([lo, hi])
    ax.plot(line, line, color="black", lw=1, label="predicted = measured")
    ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.12, label="+-10%")
    kinds = {"dense": "tab:red", "uniform": "tab:orange", "random": "tab:blue"}
    for prefix, color in kinds.items():
        sel = np.array([r.label.startswith(prefix) for r in report.rows])
        if sel.any():
            ax.errorbar(
                meas[sel],
                pred[sel],
                xerr=np.array([r.measured.spread for r in report.rows])[sel],
                fmt="o",
                ms=3.5,
                color=color,
                elinewidth=0.7,
                label=prefix,
            )
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("predicted (ms)")
    s = report.summary()
    ax.set_title(
        f"{Path(report.table).name}\nMAPE {s['mape_pct']:.2f}%  within10 {s['within_10_pct']:.0f}%  "
        f"tau {s['kendall_tau']:.3f}  worst {s['worst_error_pct']:+.1f}%",
        fontsize=8,
    )
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    tmp = Path(png_path).with_name("." + Path(png_path).name + ".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, png_path)
