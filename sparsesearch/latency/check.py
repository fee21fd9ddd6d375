"""Is a latency table true on this machine, now? The speed check.

A table's absolute times hold only on the machine, and in the state, it was profiled in: another VM with the
same CPU name, or the same VM an hour later, can run every config at 0.6x or 1.3x the speed. A uniform change
like that leaves the table's *ratios* right (a relative budget such as 0.8x does not move) but shifts every
absolute prediction. `check_table` measures it in a few seconds: it times the table's calibration configs
(whole forwards, the profile's own check configs) again, interleaved over several rounds so that a slow phase
of the machine weighs on every config alike, and returns the median over configs of measured / predicted.

`ensure_table_speed` is what `evolve`, `export` and `latency predict` call before trusting absolute times:
outside +-10% it raises TableSpeedError naming the ways out (re-profile, rescale, relative budget).
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import SparsityConfig
from ..errors import LatencyTableError
from ..models.family import prunable
from ..scoped import torch_threads
from .env import device_type, fingerprint, machine_slug
from .measure import CpuTimer, Timer, make_timer
from .runtime import OrtCall, ort_call
from .structure import res_key
from .table import LatencyTable

__all__ = [
    "DEFAULT_TOLERANCE",
    "TableCheck",
    "TableSpeedError",
    "check_genomes",
    "check_table",
    "check_timer",
    "ensure_table_speed",
    "reprofile_command",
]

#: The largest |measured / predicted - 1| that lets an absolute budget be trusted without rescaling.
DEFAULT_TOLERANCE = 0.10


class TableSpeedError(LatencyTableError):
    """This machine runs the table's configs at another speed than the table predicts (beyond the tolerance)."""


@dataclass
class TableCheck:
    """The result of `check_table`.

    Attributes:
        factor: median over the check configs of measured / predicted time (1.6: this machine takes 1.6x the
            predicted time; multiply the table's predictions by it to get this machine's).
        rows: per config: label, genome, predicted_ms, measured_ms, ratio (measured / predicted) and, for the
            profile's calibration configs, profile_ms (what the profile measured).
        seconds: wall time the check took (model built, warm-up and timing).
        rounds, repeats: interleaved passes over the configs and timed forwards per config and pass.
        tolerance: the accepted |factor - 1|.
    """

    source: str
    factor: float
    rows: list[dict[str, Any]]
    seconds: float
    rounds: int
    repeats: int
    tolerance: float = DEFAULT_TOLERANCE
    machine: str = ""
    date: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    @property
    def ok(self) -> bool:
        """The factor is within the tolerance: the table's absolute times hold here."""
        return abs(self.factor - 1.0) <= self.tolerance

    @property
    def speed(self) -> float:
        """This machine's speed relative to the table's (1 / factor; 0.6: it runs at 0.6x the table's speed)."""
        return 1.0 / self.factor

    @property
    def ratio_range(self) -> tuple[float, float]:
        """Smallest and largest per-config measured / predicted ratio."""
        r = [row["ratio"] for row in self.rows]
        return min(r), max(r)

    @property
    def vs_profile(self) -> float | None:
        """Median of (measured now / measured by the profile) over the calibration configs (None without them)."""
        r = [row["measured_ms"] / row["profile_ms"] for row in self.rows if row.get("profile_ms")]
        return float(np.median(r)) if r else None

    def line(self) -> str:
        """One line for a terminal."""
        lo, hi = self.ratio_range
        verdict = "within" if self.ok else "OUTSIDE"
        return (
            f"measured/predicted {self.factor:.3f} (this machine runs at {self.speed:.2f}x the table's speed; "
            f"{verdict} +-{100 * self.tolerance:g}%), per config {lo:.3f} .. {hi:.3f}, {len(self.rows)} configs x "
            f"{self.rounds} rounds x {self.repeats} in {self.seconds:.1f} s"
        )

    def record(self, rescaled: bool) -> dict[str, Any]:
        """What a command's outputs (best.json, pareto.json, the export card) record of the check."""
        d = {k: v for k, v in self.to_dict().items() if k != "configs"}
        d["rescaled"] = rescaled
        return d

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.ratio_range
        return {
            "table": self.source,
            "factor": round(self.factor, 5),
            "speed": round(self.speed, 5),
            "ok": self.ok,
            "tolerance": self.tolerance,
            "ratio_range": [round(lo, 5), round(hi, 5)],
            "vs_profile": None if self.vs_profile is None else round(self.vs_profile, 5),
            "seconds": round(self.seconds, 2),
            "rounds": self.rounds,
            "repeats": self.repeats,
            "machine": self.machine,
            "date": self.date,
            "configs": self.rows,
        }


class _Forward:
    """One config's whole forward, as the timer calls it; carries its `genome` and `config` so that a test's fake
    timer can return a time for it without running anything."""

    def __init__(
        self,
        model: torch.nn.Module,
        image: torch.Tensor,
        genome: np.ndarray,
        config: SparsityConfig,
        session: OrtCall | None = None,
    ) -> None:
        self.model, self.image, self.genome, self.config = model, image, genome, config
        self.session = session  # ONNX Runtime: the model exported at this config
        self.array = image.cpu().numpy() if session is not None else None

    def __call__(self) -> Any:
        if self.session is not None and self.array is not None:
            return self.session(self.array)
        return self.model(self.image)


def check_genomes(table: LatencyTable, n_random: int = 4, seed: int = 0) -> list[tuple[str, np.ndarray, float | None]]:
    """(label, genome, time the profile measured or None) of the configs the check times: the profile's
    calibration configs (the densest and sparsest corners and random ones, per resolution); for a table
    without them, the corners of each resolution and `n_random` random configs."""
    out: list[tuple[str, np.ndarray, float | None]] = []
    for rt in table.resolution_tables:
        for i, c in enumerate(rt.correction.get("calibration", []) if isinstance(rt.correction, dict) else []):
            out.append(
                (
                    f"calibration {res_key(rt.resolution)} {i}",
                    np.asarray(c["genome"], dtype=np.int64),
                    float(c["measured_ms"]),
                )
            )
    if out:
        return out
    space = table.space
    for res in space.resolutions:
        out.append((f"dense {res_key(res)}", space.encode(space.densest(res)), None))
        out.append((f"sparsest {res_key(res)}", space.encode(space.sparsest(res)), None))
    rng = np.random.default_rng(seed)
    out.extend((f"random {i}", g, None) for i, g in enumerate(space.sample_genes(rng, n_random) if n_random else []))
    return out


def check_timer(table: LatencyTable) -> Timer:
    """The timer the check uses by default: the table's clock, trim and statistic, no cache flush; on CPU
    a preempted sample is re-run at most twice per repeat (the profiler allows 20), so that a busy machine
    cannot stretch the check much beyond its time budget."""
    meta = table.meta
    dev = torch.device(meta["device_type"])
    trim, clock = float(meta.get("trim", 0.2)), meta.get("clock", "wall")
    if dev.type == "cpu":
        return CpuTimer(trim, 0, max_rejects_per_repeat=2, clock=clock, statistic=table.statistic)
    return make_timer(dev, trim, clock=clock, statistic=table.statistic)


def _plan(predicted_ms: np.ndarray, budget_s: float, rounds: int | None, repeats: int | None) -> tuple[int, int]:
    """(rounds, repeats) that fit about `budget_s` seconds after one warm-up pass (at least 2 rounds of 1)."""
    passes = budget_s * 1000.0 / max(float(predicted_ms.sum()), 1e-6) - 1.0
    if repeats is None:
        repeats = 2 if passes >= 6 else 1
    if rounds is None:
        rounds = int(np.clip(passes // repeats, 2, 10))
    if rounds < 1 or repeats < 1:
        raise LatencyTableError(f"the speed check needs rounds >= 1 and repeats >= 1, got {rounds} and {repeats}")
    return rounds, repeats


def check_table(
    table: LatencyTable,
    *,
    budget_s: float = 4.0,
    rounds: int | None = None,
    repeats: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    timer: Timer | None = None,
    on_round: Callable[[int, int], None] | None = None,
    runtime: str | None = None,
) -> TableCheck:
    """Time the table's check configs (`check_genomes`) on this machine and compare with its predictions.

    The model is the table's (head, classes, dtype, batch, random weights) run at the table's thread count and
    clock; one untimed pass warms it up, then `rounds` passes time every config `repeats` times each,
    interleaved. The allocator stays as this process has it: for a table profiled with `tune_malloc`, call that
    first to time as the profile did (`sparsesearch latency check` does, for its own process). A config's
    figure is the median of its rounds (the smallest, for a table of fastest samples); the factor is the median
    over configs of measured / predicted.

    Args:
        budget_s: about how long the timing may take; sets rounds and repeats when they are not given.
        timer: a Timer (default `check_timer(table)`); it is called with a callable that has `.genome` and
            `.config`, so a fake timer can answer without running the model.
        on_round: called after each round with (done, total).
        runtime: the runtime the configs are timed in: the table's (None or the same; "onnxruntime": each
            config exported and timed in ONNX Runtime, `latency.runtime`); another is refused in one line.
    """
    started = time.perf_counter()
    meta = table.meta
    device_type(meta["device_type"])  # a CUDA table on a machine without one: one clear line
    _refuse_other_runtime(table, runtime)
    timer = timer or check_timer(table)
    configs = check_genomes(table)
    genomes = np.stack([g for _, g, _ in configs])
    predicted = table.predict_many(genomes)
    rounds, repeats = _plan(predicted, budget_s, rounds, repeats)
    from .validate import table_model  # noqa: PLC0415

    model, images = table_model(table)
    space = table.space
    net = prunable(model)
    with torch_threads(int(meta["threads"])):
        forwards = [_forward(table, model, images[space.resolutions[int(g[-1])]], g) for g in genomes]
    samples: list[list[float]] = [[] for _ in forwards]
    with torch_threads(int(meta["threads"])), torch.inference_mode():
        for fwd in forwards:
            net.set_config(fwd.config)
            timer.measure(fwd, 1, 1)  # warm-up pass (also the allocator's)
        timing = time.perf_counter()
        for r in range(rounds):
            for i, fwd in enumerate(forwards):
                net.set_config(fwd.config)
                samples[i].append(timer.measure(fwd, 0, repeats).ms)
            if on_round is not None:
                on_round(r + 1, rounds)
            if r >= 1 and time.perf_counter() - timing > 1.5 * budget_s:  # a slow machine: fewer rounds
                rounds = r + 1
                break
    combine = np.min if table.statistic == "min" else np.median
    figures = [float(combine(s)) for s in samples]
    rows = _rows(configs, predicted, figures)
    factor = float(np.median([m / float(p) for p, m in zip(predicted, figures)]))
    return TableCheck(
        table.source,
        factor,
        rows,
        time.perf_counter() - started,
        rounds,
        repeats,
        tolerance,
        machine_slug(meta["device_type"], fingerprint(meta["device_type"])),
    )


def _refuse_other_runtime(table: LatencyTable, runtime: str | None) -> None:
    """LatencyTableError (one line) unless the table can be timed in `runtime` (None: its own) here."""
    problem = table.runtime_problem(runtime)
    if problem:
        raise LatencyTableError(
            f"{table.source} was measured for {problem}: check a table of this runtime, or profile one with "
            f"`sparsesearch profile --runtime {runtime or table.runtime}`"
        )


def _rows(
    configs: list[tuple[str, np.ndarray, float | None]], predicted: np.ndarray, figures: list[float]
) -> list[dict[str, Any]]:
    """The check's row per config: label, genome, predicted and measured ms, their ratio, the profile's ms."""
    return [
        {
            "label": label,
            "genome": [int(v) for v in genome],
            "predicted_ms": round(float(p), 5),
            "measured_ms": round(m, 5),
            "ratio": round(m / float(p), 5),
            **({"profile_ms": profile_ms} if profile_ms else {}),
        }
        for (label, genome, profile_ms), p, m in zip(configs, predicted, figures)
    ]


def _forward(table: LatencyTable, model: torch.nn.Module, image: torch.Tensor, genome: np.ndarray) -> _Forward:
    """One check config's forward in the table's runtime (ONNX Runtime: the model exported at the config)."""
    config = table.space.decode(genome)
    if table.runtime == "torch":
        return _Forward(model, image, genome, config)
    prunable(model).set_config(config)
    return _Forward(model, image, genome, config, ort_call(model, image, model))


def reprofile_command(table: LatencyTable) -> str:
    """The `sparsesearch profile` command that measures the table's setup again on this machine, over it."""
    m = table.meta
    res = " ".join(res_key(r) for r in table.resolutions)
    space = m["space"].get("source") or m["space"].get("name")
    return (
        f"sparsesearch profile --space {space} --device {m['device_type']} "
        f"--dtype {m['dtype']} --batch {m['batch']} --threads {m['threads']} --resolution {res} "
        f"--head {m.get('head', 'cls')} --num-classes {m.get('num_classes', 1000)} --warmup {m.get('warmup', 2)} "
        f"--repeats {m.get('repeats', 10)} --rounds {m.get('rounds', 3)} "
        f"--calibration {m.get('calibration', 12) or 12} "
        + (f"--runtime {table.runtime} " if table.runtime != "torch" else "")
        + f"--out {table.source}"
    )


def speed_message(table: LatencyTable, check: TableCheck) -> str:
    """The one line that stops a command whose absolute budget the table cannot be trusted for."""
    return (
        f"{table.source}: this machine takes {check.factor:.2f}x the time the table predicts (measured/predicted over "
        f"{len(check.rows)} configs; tolerance +-{100 * check.tolerance:g}%), so an absolute budget would be off by as "
        f"much. Ways out: re-profile this machine with `{reprofile_command(table)}`; or pass --rescale-table "
        f"(predictions x {check.factor:.3f}, recorded in the outputs); or give a relative budget such as 0.8x, which "
        "a uniform speed change does not move; --no-table-check skips this check"
    )


def ensure_table_speed(
    table: LatencyTable,
    absolute_budget_ms: float | None,
    *,
    check: bool = True,
    rescale: bool = False,
    resolutions: Any = None,
    tolerance: float = DEFAULT_TOLERANCE,
    timer: Timer | None = None,
    budget_s: float = 4.0,
) -> tuple[LatencyTable, TableCheck | None]:
    """Run the speed check where absolute times matter; return the table to use and the check (None if skipped).

    - `check` False: nothing is timed (`rescale` must then be False too);
    - no absolute budget (None: relative or none) and no `rescale`: nothing to check, (table, None);
    - `rescale`: the check runs and the table comes back rescaled by its factor (`LatencyTable.rescaled`);
    - otherwise the check runs; outside the tolerance it raises TableSpeedError with the ways out, unless the
      budget constrains nothing either way (every config of the space, at `resolutions`, meets it both as
      predicted and at the measured speed).
    """
    if rescale and not check:
        raise LatencyTableError(
            "--rescale-table scales by the speed check's factor: it cannot be combined with --no-table-check"
        )
    if not check or (absolute_budget_ms is None and not rescale):
        return table, None
    result = check_table(table, tolerance=tolerance, timer=timer, budget_s=budget_s)
    if rescale:
        return table.rescaled(result.factor, result.to_dict()), result
    if result.ok or (
        absolute_budget_ms is not None
        and absolute_budget_ms >= max(result.factor, 1.0) * table.max_latency(resolutions)
    ):
        return table, result
    raise TableSpeedError(speed_message(table, result))
