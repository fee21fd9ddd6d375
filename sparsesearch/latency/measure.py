"""Timers: warm-up, repeats, a figure (trimmed mean or fastest sample) and its spread; CUDA events on GPU,
perf_counter on CPU.

One timing stack: a `Timer` times calls (`measure`) and the parts of a forward (`measure_parts`, which
`time_parts` wraps); `time_interleaved` times several runs forward by forward with one. On CPU one retry rule,
`retry_preempted`, re-runs a call during which another process had the CPU."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from ..errors import LatencyTableError

__all__ = [
    "Stat",
    "STATISTICS",
    "summarize",
    "combine_rounds",
    "time_parts",
    "retry_preempted",
    "serpentine",
    "time_interleaved",
    "Timer",
    "CpuTimer",
    "CudaTimer",
    "make_timer",
    "default_flush_bytes",
]

#: Fraction of samples dropped at each end before averaging.
DEFAULT_TRIM = 0.2
#: What a CPU sample measures: elapsed time, or the CPU time of the calling thread (one torch thread only).
CLOCKS = ("wall", "thread")
#: What an entry's figure (`Stat.ms`) is. "mean" (the default): per round the trimmed mean, per entry the mean of
#: its rounds. "min": the fastest sample of all rounds, the speed the code runs at when nothing interferes. On a
#: quiet moment of a shared 2-core VM the fastest sample reproduced 2-3x more tightly than the mean, but tables of
#: fastest samples validated worse than tables of means (benchmarks/RESULTS.md, latency tables): a part's fastest of a
#: few samples is itself noisy, and the parts' fastest samples do not add up to a forward's.
STATISTICS = ("mean", "min")


def _check_statistic(statistic: str) -> str:
    if statistic not in STATISTICS:
        raise LatencyTableError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    return statistic


@dataclass(frozen=True)
class Stat:
    """Summary of repeated timings, in milliseconds.

    Attributes:
        ms: the figure predictions use: the trimmed mean, or the fastest sample (see `STATISTICS`).
        spread: standard deviation of the samples that survived trimming.
        median: median of all samples.
        min: fastest sample.
        n: number of samples (repeats).
        rejected: samples thrown away and re-run because another process took the CPU during them.
        rounds: for an entry timed in several rounds, the figure of each round (see `combine_rounds`).
    """

    ms: float
    spread: float
    median: float
    min: float
    n: int
    rejected: int = 0
    rounds: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = asdict(self)
        for k in ("ms", "spread", "median", "min"):
            d[k] = round(d[k], 6)
        d["rounds"] = [round(v, 6) for v in self.rounds]
        if not d["rounds"]:
            del d["rounds"]
        return d

    @classmethod
    def from_dict(cls, data: Any) -> Stat:
        if not isinstance(data, dict):
            raise LatencyTableError(f"a timing must be a mapping with ms, spread, median, min, n; got {data!r}")
        try:
            stat = cls(
                float(data["ms"]),
                float(data["spread"]),
                float(data["median"]),
                float(data["min"]),
                int(data["n"]),
                int(data.get("rejected", 0)),
                tuple(float(v) for v in data.get("rounds", ())),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise LatencyTableError(f"a timing is missing or has a bad field ({e}): {data!r}") from None
        if not (math.isfinite(stat.ms) and stat.ms >= 0.0):
            raise LatencyTableError(f"a timing has an invalid ms value: {data!r}")
        return stat


def summarize(
    samples_ms: Sequence[float], trim: float = DEFAULT_TRIM, rejected: int = 0, statistic: str = "mean"
) -> Stat:
    """The figure (`statistic` "mean": the trimmed mean, dropping floor(n * trim) samples at each end; "min": the
    fastest sample) and the spread of the samples the trim keeps."""
    _check_statistic(statistic)
    x = np.sort(np.asarray(samples_ms, dtype=np.float64))
    if x.size == 0:
        raise LatencyTableError("no timing samples: use at least one repeat")
    if not 0.0 <= trim < 0.5:
        raise LatencyTableError(f"trim must be in [0, 0.5), got {trim}")
    cut = int(x.size * trim)
    kept = x[cut : x.size - cut] if x.size - 2 * cut > 0 else x
    spread = float(kept.std(ddof=1)) if kept.size > 1 else 0.0
    figure = float(kept.mean()) if statistic == "mean" else float(x[0])
    return Stat(figure, spread, float(np.median(x)), float(x[0]), int(x.size), int(rejected))


Setup = Callable[[], Any] | None
T = TypeVar("T")


def combine_rounds(stats: Sequence[Stat], statistic: str = "mean") -> Stat:
    """Combine the rounds of one entry: the figure (`statistic` "mean": the mean of the rounds' figures; "min":
    the smallest), the spread of all samples (within-round variance plus the variance of the round figures),
    the counts of all rounds, and every round's figure in `rounds`.

    The rounds of an entry are spread over the whole run, so that a slow phase of a shared machine weighs on
    every entry alike instead of on a few (for "mean"), or so that every entry gets several chances at a quiet
    moment (for "min").
    """
    _check_statistic(statistic)
    if not stats:
        raise LatencyTableError("no rounds to combine")
    means = np.array([s.ms for s in stats])
    within = float(np.mean([s.spread**2 for s in stats]))
    between = float(means.var(ddof=1)) if len(stats) > 1 else 0.0
    return Stat(
        float(means.mean() if statistic == "mean" else means.min()),
        float(np.sqrt(within + between)),
        float(np.median([s.median for s in stats])),
        min(s.min for s in stats),
        sum(s.n for s in stats),
        sum(s.rejected for s in stats),
        tuple(float(v) for v in means) if len(stats) > 1 else (),
    )


class Timer:
    """Times a zero-argument callable: `warmup` untimed calls, then `repeats` timed calls, one sample each; or a
    whole forward and each part inside it (`measure_parts`). The one timing stack of the package: subclasses say
    how one call is timed (`_timed_call`, inside `_session`, with at most `_max_rejects` calls re-run), how a
    part's hooks read the clock (`_part_start`, `_part_end`) and how a raw reading becomes milliseconds (`_ms`).

    Before every call of `measure` (warm-up included) the timer can evict the caches by reading a buffer of
    `flush_bytes` and then run `setup` (untimed): a part measured in isolation then starts as it does inside the
    model, with its weights cold and its input freshly written by the previous part.
    """

    def __init__(self, trim: float = DEFAULT_TRIM, flush_bytes: int = 0, statistic: str = "mean") -> None:
        self.trim = trim
        self.statistic = _check_statistic(statistic)
        self.flush_bytes = int(flush_bytes)
        self._buffer: torch.Tensor | None = None
        self.last_rejected = 0

    def flush(self) -> None:
        """Evict the caches (no-op when flush_bytes is 0)."""

    def samples(self, fn: Callable[[], Any], warmup: int, repeats: int, setup: Setup = None) -> list[float]:
        """`warmup` untimed calls, then the ms of `repeats` timed ones (each after a flush and `setup`); the
        samples thrown away because another process took the CPU are counted in `last_rejected`."""

        def before() -> None:
            self.flush()
            if setup is not None:
                setup()

        for _ in range(warmup):
            before()
            fn()
        rows, self.last_rejected = self._forwards(fn, repeats, None, before)
        return [self._ms(r["total"]) for r in rows]

    def measure(self, fn: Callable[[], Any], warmup: int, repeats: int, setup: Setup = None) -> Stat:
        """Warm up, time `repeats` calls, summarise."""
        _check_counts(warmup, repeats)
        samples = self.samples(fn, warmup, repeats, setup)
        return summarize(samples, self.trim, self.last_rejected, self.statistic)

    def measure_parts(
        self, run: Callable[[], Any], parts: Sequence[tuple[str, torch.nn.Module]], warmup: int, repeats: int
    ) -> dict[str, Stat]:
        """Time a whole forward `run` and, with forward hooks, each module of `parts` inside it; then, the hooks
        removed, the same forward `repeats` times more (no flush: forwards back to back).

        Every part is timed where it runs in the model: after the part that precedes it, with the caches and
        branch predictors as the model leaves them.

        Returns:
            {"total": Stat of the whole forward with hooks, name: Stat of each part, "plain": Stat of the whole
            forward without hooks} (the profiler maps the sum of the parts onto "plain", see `fit.fit_correction`).
        """
        _check_counts(warmup, repeats)
        current: dict[str, Any] = {}
        handles = _attach_part_timers(parts, current, self._part_start, self._part_end)
        try:
            for _ in range(warmup):
                run()
            rows, rejected = self._forwards(run, repeats, current, None)
        finally:
            for h in handles:
                h.remove()
        names = [n for n, _ in parts]
        missing = [n for n in names if any(n not in r for r in rows)]
        if missing:
            raise LatencyTableError(f"part(s) {', '.join(missing)} did not run in the forward pass")
        out = {
            name: summarize([self._ms(r[name]) for r in rows], self.trim, rejected, self.statistic)
            for name in ["total", *names]
        }
        plain, plain_rejected = self._forwards(run, repeats, None, None)
        out["plain"] = summarize([self._ms(r["total"]) for r in plain], self.trim, plain_rejected, self.statistic)
        return out

    def _forwards(
        self,
        run: Callable[[], Any],
        repeats: int,
        current: dict[str, Any] | None,
        before: Callable[[], None] | None,
    ) -> tuple[list[dict[str, Any]], int]:
        """`repeats` timed calls of `run`, each after an untimed `before()`: one row per call, ``{"total": raw
        reading, **current}`` (`current`: what the part hooks left during the call), and how many calls were
        thrown away (another process took the CPU) and re-run."""

        def once() -> tuple[dict[str, Any], bool]:
            if before is not None:
                before()
            if current is not None:
                current.clear()
            raw, preempted = self._timed_call(run)
            return {"total": raw, **(current or {})}, preempted

        with self._session():
            return retry_preempted(once, repeats, self._max_rejects(repeats))

    # ---- what a subclass says --------------------------------------------------------------------------------
    def _session(self) -> contextlib.AbstractContextManager[Any]:
        """Around a series of timed calls (e.g. draining the device queue before and after)."""
        return contextlib.nullcontext()

    def _timed_call(self, run: Callable[[], Any]) -> tuple[Any, bool]:
        """(raw reading, whether another process took the CPU during it) of one `run()`."""
        raise NotImplementedError  # pragma: no cover

    def _max_rejects(self, repeats: int) -> int:
        """How many preempted calls of a series of `repeats` may be re-run."""
        return 0

    def _part_start(self) -> Any:
        raise NotImplementedError  # pragma: no cover

    def _part_end(self, start: Any) -> Any:
        raise NotImplementedError  # pragma: no cover

    def _ms(self, raw: Any) -> float:
        raise NotImplementedError  # pragma: no cover


def _check_counts(warmup: int, repeats: int) -> None:
    if repeats < 1 or warmup < 0:
        raise LatencyTableError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats} warmup={warmup}")


def retry_preempted(call: Callable[[], tuple[T, bool]], repeats: int, max_rejects: int) -> tuple[list[T], int]:
    """`repeats` results of `call()`, which returns (result, whether another process took the CPU during it): a
    preempted call is thrown away and made again, at most `max_rejects` times in all (then results are kept as
    they come). Returns the results and the number thrown away. The one retry loop of the timers."""
    out: list[T] = []
    rejected = 0
    while len(out) < repeats:
        result, preempted = call()
        if preempted and rejected < max_rejects:
            rejected += 1
            continue
        out.append(result)
    return out, rejected


class CpuTimer(Timer):
    """Wall-clock time of each call with time.perf_counter_ns.

    With one torch thread, a call during which this thread got less than `min_cpu_fraction` of the wall time
    on the CPU (thread CPU time / wall time) was preempted by another process: the sample is thrown away and
    the call re-run, up to `max_rejects_per_repeat * repeats` times (then samples are kept as they come).
    On a shared machine this keeps other processes' bursts out of the table; `Stat.rejected` counts them.

    `clock="thread"` times the calling thread's CPU time instead (time.thread_time_ns). With one torch
    thread the forward pass runs on the calling thread and never blocks, so on an idle machine this equals
    the wall time; on a machine other processes keep busy it leaves out the time slices they take.
    """

    def __init__(
        self,
        trim: float = DEFAULT_TRIM,
        flush_bytes: int = 0,
        min_cpu_fraction: float = 0.95,
        max_rejects_per_repeat: int = 20,
        clock: str = "wall",
        statistic: str = "mean",
    ) -> None:
        super().__init__(trim, flush_bytes, statistic)
        if clock not in CLOCKS:
            raise LatencyTableError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
        self.min_cpu_fraction = min_cpu_fraction
        self.max_rejects_per_repeat = max_rejects_per_repeat
        self.clock = clock

    def flush(self) -> None:
        if self.flush_bytes <= 0:
            return
        if self._buffer is None:
            self._buffer = torch.ones(self.flush_bytes // 4, dtype=torch.float32)
        self._buffer.sum()

    def _now(self) -> int:
        return time.thread_time_ns() if self.clock == "thread" else time.perf_counter_ns()

    def _session(self) -> contextlib.AbstractContextManager[Any]:
        if self.clock == "thread" and torch.get_num_threads() != 1:
            raise LatencyTableError("the thread clock needs one torch thread (--threads 1)")
        return contextlib.nullcontext()

    def _timed_call(self, run: Callable[[], Any]) -> tuple[int, bool]:
        elapsed, preempted = _timed_cpu_call(run, self._now, self.min_cpu_fraction)
        check = self.clock != "thread" and self.min_cpu_fraction > 0 and torch.get_num_threads() == 1
        return elapsed, check and preempted

    def _max_rejects(self, repeats: int) -> int:
        return self.max_rejects_per_repeat * repeats

    def _part_start(self) -> int:
        return self._now()

    def _part_end(self, start: int) -> int:
        return self._now() - start

    def _ms(self, raw: int) -> float:
        return raw / 1e6


def _timed_cpu_call(run: Callable[[], Any], now: Callable[[], int], min_cpu_fraction: float) -> tuple[int, bool]:
    """(elapsed ns on the `now` clock, whether another process took the CPU: this thread ran for less than
    `min_cpu_fraction` of the wall time) of one `run()`."""
    c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
    a0 = now()
    run()
    a1 = now()
    t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
    return a1 - a0, (c1 - c0) < min_cpu_fraction * (t1 - t0)


class CudaTimer(Timer):
    """Device time of each call between two CUDA events on the current stream; one synchronise at the end.

    The queue is drained before the first timed call so that warm-up work is not counted.
    """

    def __init__(
        self,
        device: torch.device | str = "cuda",
        trim: float = DEFAULT_TRIM,
        flush_bytes: int = 0,
        statistic: str = "mean",
    ) -> None:
        super().__init__(trim, flush_bytes, statistic)
        self.device = torch.device(device)

    def flush(self) -> None:
        if self.flush_bytes <= 0:
            return
        if self._buffer is None:
            self._buffer = torch.empty(self.flush_bytes // 4, dtype=torch.float32, device=self.device)
        self._buffer.zero_()  # as triton.testing.do_bench: overwrite a buffer larger than L2

    @contextlib.contextmanager
    def _session(self) -> Iterator[None]:
        with torch.cuda.device(self.device):
            torch.cuda.synchronize()
            yield
            torch.cuda.synchronize()

    def _timed_call(self, run: Callable[[], Any]) -> tuple[tuple[torch.cuda.Event, torch.cuda.Event], bool]:
        start = self._part_start()
        run()
        return self._part_end(start), False

    def _part_start(self) -> torch.cuda.Event:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def _part_end(self, start: torch.cuda.Event) -> tuple[torch.cuda.Event, torch.cuda.Event]:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return start, ev

    def _ms(self, raw: tuple[torch.cuda.Event, torch.cuda.Event]) -> float:
        return float(raw[0].elapsed_time(raw[1]))


def time_interleaved(
    runs: Sequence[tuple[Callable[[], Any], Callable[[], Any]]],
    timer: Timer,
    warmup: int,
    repeats: int,
    rounds: int,
    before_pass: Callable[[], Any] | None = None,
    after_round: Callable[[int], None] | None = None,
    order: Sequence[int] | None = None,
) -> list[list[Stat]]:
    """Time several calls interleaved call by call: per (setup, call) of `runs`, one Stat per round.

    After `warmup` untimed calls of each, every *pass* times each call once, in turn: its `setup` (e.g. setting
    its config) and one untimed call run first, then one timed call. A round is `repeats` passes, and a
    run's Stat of a round summarises its `repeats` samples with the timer's trim and statistic. Interleaving
    call by call, rather than `repeats` calls of one and then the next, spreads every run's samples evenly over
    the time taken, so that a machine whose speed drifts over seconds (+-20% on a shared VM,
    benchmarks/RESULTS.md, latency tables) weighs on all runs alike. The untimed call before each timed one makes
    every timed forward follow a forward of its own config, as in a deployed model (and in the profiler's
    in-model pass): right after another config a forward ran 4-9% slower on a 2-core VM, the dense one more
    than sparse ones, which put a config-dependent error into tables and their validation (RESULTS.md).
    `order` (a permutation of the runs' indices) is the order of the even passes, the odd ones take it
    reversed: ordered by expected time, runs of nearly equal time are timed next to each other, whose drift is
    most alike (on a 2-core VM consecutive forwards' deviations correlated ~0.6, RESULTS.md), so exactly the
    pairs that are hard to rank get the smallest error in their difference; reversing every other pass keeps
    any effect of the preceding run symmetric. Default: the runs' order in every pass.
    `before_pass` runs before each pass (e.g. waiting for a quiet machine), `after_round(rounds done)` after each
    round.
    """
    forward = _pass_order(order, len(runs))
    for setup, call in runs:
        setup()
        if warmup:
            timer.measure(call, warmup - 1, 1)
    stats: list[list[Stat]] = [[] for _ in runs]
    passes = 0
    for r in range(rounds):
        samples: list[list[float]] = [[] for _ in runs]
        rejected = [0] * len(runs)
        for _ in range(repeats):
            if before_pass is not None:
                before_pass()
            for i in forward if order is None else serpentine(forward, passes):
                setup, call = runs[i]
                setup()
                one = timer.measure(call, 1, 1)
                samples[i].append(one.ms)
                rejected[i] += one.rejected
            passes += 1
        for i, got in enumerate(samples):
            stats[i].append(summarize(got, timer.trim, rejected[i], timer.statistic))
        if after_round is not None:
            after_round(r + 1)
    return stats


def serpentine(order: Sequence[int], p: int) -> Sequence[int]:
    """Pass p's order of runs timed in `order` on even passes and in reverse on odd ones."""
    return order if p % 2 == 0 else order[::-1]


def _pass_order(order: Sequence[int] | None, n: int) -> list[int]:
    """`order` checked to be a permutation of range(n) (None: range(n))."""
    if order is None:
        return list(range(n))
    got = [int(i) for i in order]
    if sorted(got) != list(range(n)):
        raise LatencyTableError(f"order must be a permutation of the {n} runs' indices, got {got}")
    return got


def time_parts(
    run: Callable[[], Any],
    parts: Sequence[tuple[str, torch.nn.Module]],
    warmup: int,
    repeats: int,
    device: torch.device | str = "cpu",
    clock: str = "wall",
    trim: float = DEFAULT_TRIM,
    statistic: str = "mean",
) -> dict[str, Stat]:
    """`Timer.measure_parts` of a timer for `device` without cache flush: a CpuTimer with this clock and its
    default rejection rule (a forward during which the thread was preempted is re-run; for another rule, call
    `CpuTimer(...).measure_parts`), or a CudaTimer (events)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if clock == "thread":
            raise LatencyTableError("the thread clock needs a CPU and one torch thread (--threads 1)")
        timer: Timer = CudaTimer(dev, trim, 0, statistic)
    else:
        timer = CpuTimer(trim, 0, clock=clock, statistic=statistic)
    return timer.measure_parts(run, parts, warmup, repeats)


def _attach_part_timers(
    parts: Sequence[tuple[str, torch.nn.Module]],
    current: dict[str, Any],
    start: Callable[[], Any],
    end: Callable[[Any], Any],
) -> list[RemovableHandle]:
    """Forward pre/post hooks on each part that leave its raw time in ``current[name]`` after every forward:
    `start()` before the part runs, `end(what start gave)` after it. Returns the hook handles (the caller removes
    them)."""

    def pre(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any) -> None:
            current[name] = start()

        return hook

    def post(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            current[name] = end(current[name])

        return hook

    handles = []
    for name, module in parts:
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name)))
    return handles


def _cache_size(level: int) -> int | None:
    """Bytes of the CPU's data/unified cache at `level` (Linux sysfs), or None."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for name in sorted(os.listdir(root)):
            base = os.path.join(root, name)
            with open(os.path.join(base, "level")) as f:
                if int(f.read()) != level:
                    continue
            with open(os.path.join(base, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(base, "size")) as f:
                text = f.read().strip().upper()
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            return int(text.rstrip("KMG")) * mult
    except (OSError, ValueError):
        return None
    return None


def default_flush_bytes(device: torch.device | str) -> int:
    """Bytes to read (CPU) or overwrite (GPU) before each timed call.

    GPU: 256 MiB, as triton.testing.do_bench (larger than any GPU's L2). CPU: four times the per-core L2
    (the parts of a model evict each other's weights from it), or twice the last-level cache when that is
    small enough to flush cheaply (<= 64 MiB); 32 MiB when sysfs does not say.
    """
    if torch.device(device).type == "cuda":
        return 256 * 2**20
    l2, l3 = _cache_size(2), _cache_size(3)
    if l3 is not None and l3 <= 64 * 2**20:
        return 2 * l3
    if l2 is not None:
        return 4 * l2
    return 32 * 2**20


def make_timer(
    device: torch.device | str,
    trim: float = DEFAULT_TRIM,
    flush_bytes: int = 0,
    clock: str = "wall",
    statistic: str = "mean",
) -> Timer:
    """CudaTimer for a CUDA device (wall clock only), CpuTimer otherwise."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if clock != "wall":
            raise LatencyTableError("CUDA latencies are timed with CUDA events: use the wall clock")
        return CudaTimer(dev, trim, flush_bytes, statistic)
    return CpuTimer(trim, flush_bytes, clock=clock, statistic=statistic)
