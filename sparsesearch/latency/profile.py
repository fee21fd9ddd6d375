"""The profiler: time every part of a search space's model on this machine and write a LatencyTable.

What is measured, per resolution:

1. each block kind (stage, width, heads, window size, variant, feature-map size) *in isolation*, at every
   kept-window count the space can produce (or a grid of counts when there are too many): the model's own
   block, its sparsity set to give that count, eval and inference mode. Before each timed call the timer
   flushes the caches and runs the part that precedes the block in the model, whose output the block then
   consumes, so it starts in the state the model leaves it in;
2. the fixed parts (e.g. patch embedding, patch merging, final norm, neck, head), the same way. What a part
   is, what precedes it and how its blocks vary is the model family's to say (`sparsesearch.models.family`):
   nothing here knows an architecture;
3. the *in-model* pass: whole forwards of "level" configs (every gene at its c-th choice, for every c and
   window pattern) with every part timed by forward hooks where it runs. Together the level configs run every
   (block kind, kept count) the genes produce; these in-model figures are what the table predicts with. What
   still differs between a block alone and inside the model (caches, branch predictors and allocator state
   left by its neighbours) is in them; counts the pass did not run use their isolated time scaled by the
   kind's in-model/isolated ratio. Each level config is also timed without hooks right after, and the
   correction maps the sum of the hooked parts onto that plain forward (a line fitted over the level
   configs: it holds what runs between the parts and what timing every part costs, see `_fit_correction`);
4. calibration: plain whole forwards of a few configs (the two corners and random ones): the correction
   when there is no in-model pass, otherwise an out-of-sample check of the table, kept in it.

Each entry is measured in several rounds spread over the run; its figure is the mean of its rounds. On CPU a
sample during which another process preempted the measuring thread is re-run, and each measurement can wait
for the machine to be quiet. Partial results are saved atomically after every measurement; a rerun with the
same settings measures only what is missing.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import SparsityConfig
from ..errors import LatencyTableError, SparseSearchError, SparseSearchWarning
from ..fileio import atomic_write_text, set_aside
from ..models.family import prunable
from ..ops import keep_count
from ..scoped import torch_threads
from ..space import SearchSpace
from .env import DTYPES, device_type, environment, machine_slug, parse_dtype
from .malloc import tune_malloc
from .measure import (
    CLOCKS,
    DEFAULT_TRIM,
    STATISTICS,
    LoadMonitor,
    Stat,
    Timer,
    combine_rounds,
    default_flush_bytes,
    default_max_load,
    make_timer,
    serpentine,
    summarize,
)
from .structure import (
    BlockKind,
    block_kind,
    kinds_and_counts,
    res_key,
    space_family,
    space_hash,
    sparsity_for_count,
    stage_shapes,
    window_row,
)
from .table import KindTable, LatencyTable, ResolutionTable

__all__ = [
    "ProfileSettings",
    "Entry",
    "Profiler",
    "profile",
    "default_table_path",
    "partial_path",
    "PartialProfileWarning",
]

_HEADS = ("cls", "seg", "none")


class PartialProfileWarning(SparseSearchWarning):
    """The partial results of an earlier profile run cannot be resumed (corrupt, or other settings)."""


class CalibrationWarning(SparseSearchWarning):
    """A finished table misses its own calibration configs (whole forwards timed in the same run) by more than
    `CALIBRATION_TOLERANCE_PCT`: its parts do not add up to the model it describes."""


#: how far the finished table may miss a calibration config of its own run before the profile warns
CALIBRATION_TOLERANCE_PCT = 10.0


@dataclass
class ProfileSettings:
    """What and how to measure.

    Attributes:
        device: 'cpu' or 'cuda' (or 'cuda:N').
        dtype: 'fp32', 'fp16' or 'bf16'; the model and its input are cast with .to(dtype) (no autocast).
        batch: images per forward pass.
        resolutions: input sizes (H, W); None: the space's own.
        threads: torch.set_num_threads during measurement; None: torch's default (recorded either way).
        warmup, repeats: untimed and timed calls per entry and round.
        rounds: passes over all entries; an entry's figure combines its rounds (`combine_rounds`).
        trim: fraction of samples dropped at each end before averaging (statistic "mean").
        statistic: an entry's figure, "mean" (trimmed mean per round, mean of the rounds) or "min" (fastest
            sample of all rounds), see `STATISTICS`.
        head: the model's head ('cls', 'seg' or 'none'), with num_classes outputs.
        max_k_points: above this many distinct pruned counts per block kind, measure a grid and interpolate.
        calibration: number of whole-model configs timed to fit the back-to-back correction (0: none).
        in_model: also time every part inside whole forwards of "level" configs (each gene at its c-th
            choice, for every c and window pattern), and predict with those in-model figures (see `Profiler`).
        flush_mb: cache flush before each timed call of a part (MiB; None: `default_flush_bytes`; 0: none).
        clock: 'wall' (elapsed time) or, on CPU with one thread, 'thread' (the thread's CPU time: equal to
            the wall time on an idle machine, and blind to the time slices other processes take on a busy one).
        malloc: on CPU, keep freed memory in the allocator's heap for the rest of the process (`tune_malloc`),
            so forwards run without page faults and do not depend on the process's allocation history
            (process-wide, hence off by default in the library; `sparsesearch profile` turns it on).
        quiet: on CPU, start each measurement only once other processes use at most `max_load` cores
            (None: the cores this process leaves free + 0.25), waiting at most `max_wait_s` over the run.
        seed: seed of the random inputs and of the calibration configs.
    """

    device: str = "cpu"
    dtype: str = "fp32"
    batch: int = 1
    resolutions: tuple[tuple[int, int], ...] | None = None
    threads: int | None = None
    warmup: int = 2
    repeats: int = 10
    rounds: int = 3
    trim: float = DEFAULT_TRIM
    statistic: str = "mean"
    head: str = "cls"
    num_classes: int = 1000
    max_k_points: int = 24
    calibration: int = 12
    in_model: bool = True
    flush_mb: float | None = None
    clock: str = "wall"
    malloc: bool = False
    quiet: bool = False
    max_load: float | None = None
    max_wait_s: float = 600.0
    seed: int = 0

    def validate(self) -> None:
        device_type(self.device)
        parse_dtype(self.dtype)
        if self.batch < 1:
            raise LatencyTableError(f"--batch must be at least 1, got {self.batch}")
        if self.warmup < 0 or self.repeats < 1 or self.rounds < 1:
            raise LatencyTableError(
                "need --warmup >= 0, --repeats >= 1 and --rounds >= 1, "
                f"got {self.warmup}, {self.repeats}, {self.rounds}"
            )
        if self.threads is not None and self.threads < 1:
            raise LatencyTableError(f"--threads must be at least 1, got {self.threads}")
        if self.head not in _HEADS:
            raise LatencyTableError(f"head must be one of {', '.join(_HEADS)}, got {self.head!r}")
        if self.max_k_points < 2:
            raise LatencyTableError(f"max_k_points must be at least 2, got {self.max_k_points}")
        if self.calibration < 0:
            raise LatencyTableError(f"calibration must be >= 0, got {self.calibration}")
        if self.statistic not in STATISTICS:
            raise LatencyTableError(f"--statistic must be one of {', '.join(STATISTICS)}, got {self.statistic!r}")
        if self.clock not in CLOCKS:
            raise LatencyTableError(f"--clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}")
        if self.clock == "thread" and (torch.device(self.device).type != "cpu" or self.threads != 1):
            raise LatencyTableError("--clock thread needs --device cpu and --threads 1")
        if self.flush_mb is not None and self.flush_mb < 0:
            raise LatencyTableError(f"flush_mb must be >= 0, got {self.flush_mb}")


@dataclass
class Entry:
    """One thing to time: a block kind at a kept count, a fixed part, or a whole-model calibration config."""

    key: str
    part: str  # "block" | "fixed" | "model" (plain whole forward) | "in_model" (whole forward, parts timed)
    resolution: tuple[int, int]
    kind: BlockKind | None = None
    k: int | None = None
    name: str | None = None
    genome: list[int] | None = None


def default_table_path(
    space: SearchSpace, settings: ProfileSettings, root: str | os.PathLike = "latency_tables"
) -> Path:
    """latency_tables/<machine-slug>/<space>_<res>[-<res>...]_<dtype>_b<batch>.json (see `machine_slug`)"""

    resolutions = settings.resolutions or space.resolutions
    res = "-".join(res_key(r) for r in resolutions)
    return Path(root) / machine_slug(settings.device) / f"{space.name}_{res}_{settings.dtype}_b{settings.batch}.json"


def partial_path(out: str | os.PathLike) -> Path:
    """Where a profile's partial results live until the table is complete."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


class Profiler:
    """Plans and runs the measurements of one table.

    Args:
        space: the search space (its architecture, genes and window choices decide what is measured).
        settings: how to measure.
        timer: a Timer (default: CUDA events on GPU, perf_counter on CPU); tests inject their own.
    """

    def __init__(self, space: SearchSpace, settings: ProfileSettings, timer: Timer | None = None) -> None:
        settings.validate()
        self.settings = settings
        resolutions = tuple((int(r[0]), int(r[1])) for r in (settings.resolutions or space.resolutions))
        if len(set(resolutions)) != len(resolutions):
            raise LatencyTableError("a resolution is listed twice")
        if resolutions != space.resolutions:  # the table's space runs at the measured resolutions
            data = space.to_dict()
            data["resolutions"] = [list(r) for r in resolutions]
            space = SearchSpace(data, space.source)
        self.space = space
        self.resolutions: tuple[tuple[int, int], ...] = resolutions
        self.device = torch.device(settings.device)
        self.dtype = DTYPES[settings.dtype]
        self.flush_bytes = (
            default_flush_bytes(self.device) if settings.flush_mb is None else int(settings.flush_mb * 2**20)
        )
        self.statistic = settings.statistic
        self.timer = timer or make_timer(self.device, settings.trim, self.flush_bytes, settings.clock, self.statistic)
        self._plain_timer = (
            make_timer(self.device, settings.trim, clock=settings.clock, statistic=self.statistic)
            if timer is None
            else timer
        )
        self.environment = environment(self.device)
        self.monitor = LoadMonitor()
        self.malloc: str | None = None
        self.max_load = (
            (settings.max_load if settings.max_load is not None else default_max_load(self.device, settings.threads))
            if settings.quiet
            else None
        )
        self._model: torch.nn.Module | None = None
        self._counts = kinds_and_counts(space, resolutions)
        self.family = space_family(space)
        self.arch = self.family.arch(space.architecture, space.model_kwargs)
        self._head = None if settings.head == "none" else settings.head

    # ---- planning --------------------------------------------------------------------------------------------
    def measured_counts(self, kind: BlockKind) -> list[int]:
        """The kept counts to time for a kind: all it can take, or a grid over the pruned ones + the dense one."""
        counts = sorted(self._counts[kind])
        nw = kind.num_windows
        pruned = [k for k in counts if k < nw]
        if len(pruned) > self.settings.max_k_points:
            grid = np.linspace(pruned[0], pruned[-1], self.settings.max_k_points)
            pruned = sorted({int(round(v)) for v in grid} | {pruned[0], pruned[-1]})
        return pruned + [nw]

    def calibration_genomes(self) -> list[np.ndarray]:
        """Whole-model configs timed for the correction: the dense and sparsest corners plus random configs."""
        space = self.space
        n = self.settings.calibration
        if n == 0:
            return []
        out: list[np.ndarray] = []
        for ri in range(len(self.resolutions)):
            lo = space.encode(space.densest(self.resolutions[ri]))
            hi = space.encode(space.sparsest(self.resolutions[ri]))
            out.extend([lo, hi])
        rng = np.random.default_rng(self.settings.seed + 12345)
        while len(out) < max(n, 2 * len(self.resolutions)):
            out.append(space.sample_genes(rng))
        return out

    def level_genomes(self, resolution_index: int) -> list[tuple[str, np.ndarray]]:
        """The in-model pass: for window pattern w (each stage at its w-th window choice, or its last) and level c
        (each gene at its c-th choice, or its last), one config; together they run every (block kind, kept
        count) the genes produce, and they respect the ordering rule."""
        space = self.space
        n_genes = len(space.genes)
        out: list[tuple[str, np.ndarray]] = []
        seen: set[tuple[int, ...]] = set()
        for w in range(max(len(c) for c in space.window_choices)):
            for c in range(max(len(g.choices) for g in space.genes)):
                x = np.zeros(space.n_var, dtype=np.int64)
                x[:n_genes] = [min(c, len(g.choices) - 1) for g in space.genes]
                x[n_genes : n_genes + len(space.depths)] = [min(w, len(ch) - 1) for ch in space.window_choices]
                x[-1] = resolution_index
                if tuple(x) not in seen and space.is_valid(x):
                    seen.add(tuple(x))
                    out.append((f"w{w}c{c}", x))
        return out

    def plan(self) -> list[Entry]:
        """Every entry of the table, in measurement order."""
        entries: list[Entry] = []
        for res in self.resolutions:
            r = res_key(res)
            for name in self.family.fixed_parts(self.arch, self._head):
                entries.append(Entry(f"{r}/fixed/{name}", "fixed", res, name=name))
            kinds = sorted(
                (k for k in self._counts if k.resolution == res), key=lambda k: (k.stage, k.window, k.variant)
            )
            for kind in kinds:
                for k in self.measured_counts(kind):
                    entries.append(Entry(f"{kind.key}/k{k}", "block", res, kind=kind, k=k))
            if self.settings.in_model:
                for label, genome in self.level_genomes(self.resolutions.index(res)):
                    entries.append(Entry(f"{r}/in_model/{label}", "in_model", res, genome=genome.tolist()))
        for i, genome in enumerate(self.calibration_genomes()):
            res = self.space.resolutions[int(genome[-1])]
            entries.append(
                Entry(f"model/{i}/{'-'.join(map(str, genome.tolist()))}", "model", res, genome=genome.tolist())
            )
        return entries

    def settings_hash(self) -> str:
        """Identifies measurements that can be reused by a resumed run (same machine, software and settings)."""
        env = {k: v for k, v in self.environment.items() if k not in ("platform",)}
        s = asdict(self.settings)
        s["resolutions"] = [list(r) for r in self.resolutions]
        text = json.dumps({"env": env, "settings": s, "space": space_hash(self.space)}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ---- measuring -------------------------------------------------------------------------------------------
    def model(self) -> torch.nn.Module:
        """The space's model (random weights) in eval mode on the device, in the dtype."""
        if self._model is None:
            head = None if self.settings.head == "none" else self.settings.head
            with torch.inference_mode(False):  # normal parameters, as a user's model has (e.g. bias caches use them)
                model = self.space.create_model(
                    seed=self.settings.seed, head=head, num_classes=self.settings.num_classes
                )
                self._model = model.eval().to(device=self.device, dtype=self.dtype)
        return self._model

    def _randn(self, *shape: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.settings.seed + sum(shape))
        return torch.randn(*shape, generator=g).to(device=self.device, dtype=self.dtype)

    def _default_window(self, stage: int) -> int:
        choices = self.space.window_choices[stage]
        default = self.space.default_window[stage]
        return default if default in choices else choices[0]

    def _plan(self, entry: Entry) -> Any:
        """The family's plan for timing a block kind at a kept count or a fixed part (see `PartPlan`)."""
        model = self.model()
        B = self.settings.batch
        shapes = stage_shapes(self.space, entry.resolution)
        if entry.part == "block":
            kind = entry.kind
            assert kind is not None and entry.k is not None
            p = sparsity_for_count(entry.k, kind.num_windows)
            return self.family.block_plan(model, kind.stage, kind.variant, kind.window, p, shapes, entry.resolution, B)
        if entry.name not in self.family.fixed_parts(self.arch, self._head):
            raise LatencyTableError(f"unknown part {entry.name!r}")
        windows = [self._default_window(i) for i in range(len(shapes))]
        return self.family.fixed_plan(model, entry.name, entry.resolution, self._head, shapes, windows, B)

    def entry_fn(self, entry: Entry) -> tuple[Callable[[], Any], Callable[[], Any] | None]:
        """(run, setup): `run` runs the entry's part once; `setup` (untimed, after the timer's cache flush,
        before each call) runs the part that precedes it in the model (the family says which), whose output
        `run` then consumes, so the part starts with the caches and predictors in the state the model leaves
        them in. The patch embedding has no predecessor: the image comes cold from the data loader."""
        model = self.model()
        if entry.part == "model":
            assert entry.genome is not None
            config = self.space.decode(np.asarray(entry.genome))
            prunable(model).set_config(config)
            image = self._randn(self.settings.batch, 3, *entry.resolution)
            return (lambda: model(image)), None
        plan = self._plan(entry)
        first = self._randn(*plan.before_input)
        if plan.before is None:
            return (lambda: plan.run(first)), None
        prev = plan.before
        held: list[Any] = [prev(first)]

        def setup() -> None:
            held[0] = prev(first)

        return (lambda: plan.run(held[0])), setup

    def model_parts(self) -> list[tuple[str, torch.nn.Module]]:
        """(name, module) of every part of the model, in forward order, named as in `LatencyTable.parts`."""
        return self.family.model_parts(self.model(), self._head)

    def measure(self, entry: Entry) -> Stat | dict[str, Stat]:
        """Time one entry (warm-up, repeats) in inference mode: a Stat, or for an in-model entry
        {"total": Stat, part name: Stat}."""
        self.monitor.wait_quiet(self.max_load, budget_s=self.settings.max_wait_s)
        if entry.part == "in_model":
            assert entry.genome is not None
            model = self.model()
            prunable(model).set_config(self.space.decode(np.asarray(entry.genome)))
            image = self._randn(self.settings.batch, 3, *entry.resolution)
            with torch.inference_mode():
                return self._plain_timer.measure_parts(
                    lambda: model(image), self.model_parts(), self.settings.warmup, self.settings.repeats
                )
        with torch.inference_mode():
            fn, setup = self.entry_fn(entry)
            if entry.part == "model":  # whole forwards back to back, exactly as `latency validate` times them
                return self._plain_timer.measure(fn, self.settings.warmup, self.settings.repeats)
            return self.timer.measure(fn, self.settings.warmup, self.settings.repeats, setup)

    def measure_group(self, entries: Sequence[Entry]) -> list[Stat | dict[str, Stat]]:
        """Time the whole-forward entries of one round ("in_model" and "model") interleaved forward by forward.

        After `warmup` plain forwards of each config, every pass runs each entry once, in turn: an in-model
        entry one untimed forward, one forward with its parts hooked and one plain forward, a calibration entry
        one untimed and one timed plain forward (a forward right after another config runs slower, the dense
        ones more: `time_interleaved`).
        Spreading every config's samples over the whole group, instead of timing `repeats` forwards of one
        config and then the next, makes the machine's drift over seconds (+-20% on a shared VM, benchmarks/RESULTS.md)
        weigh on all configs alike: these entries set the table's correction and its calibration.
        Passes run the configs in order of expected time, every other one reversed (`_expected_time_order`, as
        `time_interleaved` does with an order).
        Returns, per entry, what `measure` would: a Stat, or {"total", "plain", part name: Stat}.
        """
        model = self.model()
        net = prunable(model)
        parts = self.model_parts()
        s = self.settings
        calls = []
        for e in entries:
            assert e.genome is not None and e.part in ("in_model", "model")
            image = self._randn(s.batch, 3, *e.resolution)
            calls.append((self.space.decode(np.asarray(e.genome)), functools.partial(model, image)))
        samples: list[dict[str, list[Stat]]] = [{} for _ in entries]
        with torch.inference_mode():
            for config, call in calls:
                net.set_config(config)
                for _ in range(s.warmup):
                    call()
            order = _expected_time_order([config for config, _ in calls])
            for p in range(s.repeats):
                self.monitor.wait_quiet(self.max_load, budget_s=s.max_wait_s)
                for i in serpentine(order, p):
                    e, (config, call), got = entries[i], calls[i], samples[i]
                    net.set_config(config)
                    # one untimed forward first: every timed forward follows one of its own config (see
                    # `time_interleaved`), the hooked one included
                    if e.part == "in_model":
                        one = self._plain_timer.measure_parts(call, parts, 1, 1)
                    else:
                        one = {"total": self._plain_timer.measure(call, 1, 1)}
                    for name, stat in one.items():
                        got.setdefault(name, []).append(stat)
        out: list[Stat | dict[str, Stat]] = []
        for e, got in zip(entries, samples):
            stats = {name: self._pooled(v) for name, v in got.items()}
            out.append(stats if e.part == "in_model" else stats["total"])
        return out

    def _pooled(self, singles: Sequence[Stat]) -> Stat:
        """One round's Stat from the single-forward Stats of one entry (its samples, trim and statistic)."""
        return summarize([v.ms for v in singles], self.settings.trim, sum(v.rejected for v in singles), self.statistic)

    # ---- running ---------------------------------------------------------------------------------------------
    def load_partial(self, out: Path) -> dict[str, list[Stat]]:
        """Per entry, the rounds measured by an earlier run with the same settings (empty if none).

        A partial file that cannot be read is renamed to `<partial>.corrupt` and reported with a
        `PartialProfileWarning`; one from other settings, another machine or other software is reported the same
        way and left in place (the first measurement of this run replaces it). Either way measuring starts over.
        """
        path = partial_path(out)
        if not path.is_file():
            return {}
        try:
            text = path.read_bytes()
        except OSError as e:
            raise LatencyTableError(
                f"cannot read the partial profile {path} ({e.strerror}); "
                "fix its permissions, or delete it to start over"
            ) from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            if data.get("settings_hash") != self.settings_hash():
                warnings.warn(
                    f"ignoring the partial profile {path}: it was measured with other settings, on another machine "
                    "or with other software; measuring starts over and replaces it",
                    PartialProfileWarning,
                    stacklevel=3,
                )
                return {}
            return {str(k): [Stat.from_dict(v) for v in rounds] for k, rounds in (data.get("entries") or {}).items()}
        except (ValueError, TypeError, AttributeError, KeyError, LatencyTableError) as e:
            kept = set_aside(path)
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            warnings.warn(
                f"the partial profile {path} is corrupt ({reason}); kept it as {kept.name}, measuring starts over",
                PartialProfileWarning,
                stacklevel=3,
            )
            return {}

    def run(
        self,
        out: str | os.PathLike,
        resume: bool = True,
        on_entry: Callable[[Entry, Stat, int, int], None] | None = None,
        on_start: Callable[[int, int], None] | None = None,
    ) -> LatencyTable:
        """Measure every (round, entry) not yet in the partial file, then write the table to `out` atomically.

        Args:
            out: the table path; partial results go to `<out>.partial` and are removed when done.
            resume: reuse the partial results of an earlier run with the same settings.
            on_entry: called after each measurement is saved, with (entry, stat, done, total) where done and
                total count (round, entry) pairs.
            on_start: called once with (already measured, total) before measuring.
        """
        out = Path(out)
        entries = self.plan()
        rounds = self.settings.rounds
        keys = {e.key for e in entries}
        done = {k: v[:rounds] for k, v in (self.load_partial(out) if resume else {}).items() if k.split("|")[0] in keys}
        for k in [k for k in done if "|" in k]:  # parts of a round whose total was not saved are dropped
            done[k] = done[k][: len(done.get(k.split("|")[0], []))]
        total = rounds * len(entries)
        count = sum(len(v) for k, v in done.items() if "|" not in k)
        started = time.time()
        if on_start is not None:
            on_start(count, total)
        partial = partial_path(out)
        settings_hash = self.settings_hash()
        self.malloc = tune_malloc() if self.settings.malloc and self.device.type == "cpu" else None
        with torch_threads(self.settings.threads):
            for r in range(rounds):
                todo = [e for e in entries if len(done.setdefault(e.key, [])) <= r]
                whole = [e for e in todo if e.part in _WHOLE_FORWARD]
                for entry in todo:
                    if entry.part in _WHOLE_FORWARD:
                        if entry is not whole[0]:
                            continue
                        results = self.measure_group(whole)  # all of this round's, interleaved, at the first
                        group = list(zip(whole, results))
                    else:
                        group = [(entry, self.measure(entry))]
                    for e, result in group:
                        count += 1
                        stat = _record(done, e, result)
                        payload = {
                            "settings_hash": settings_hash,
                            "entries": {k: [s.to_dict() for s in v] for k, v in done.items() if v},
                        }
                        atomic_write_text(partial, json.dumps(payload))
                        if on_entry is not None:
                            on_entry(e, stat, count, total)
            threads = torch.get_num_threads()
        combined = {k: combine_rounds(v, self.statistic) for k, v in done.items()}
        table = self.build_table(entries, combined, threads, time.time() - started)
        table = LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())), str(out))  # exactly what is saved
        table.save(out)
        partial.unlink(missing_ok=True)
        return table

    def build_table(self, entries: list[Entry], done: dict[str, Stat], threads: int, duration_s: float) -> LatencyTable:
        """Assemble measured entries into a LatencyTable.

        A part's figure is its in-model time where the in-model pass ran it (averaged over its occurrences);
        otherwise its isolated time scaled by the in-model/isolated ratio of its kind, interpolated over the
        kept counts (the stage's median ratio if the kind never ran in the model; 1 without an in-model pass).
        Then the back-to-back correction is fitted on the calibration runs.
        """
        in_block, in_fixed = self._in_model_figures(entries, done)
        tables = []
        for res in self.resolutions:
            fixed: dict[str, Stat] = {}
            fixed_details: dict[str, dict[str, Any]] = {}
            for e in entries:
                if e.part == "fixed" and e.resolution == res:
                    assert e.name is not None
                    iso, situ = done[e.key], in_fixed.get((res, e.name))
                    fixed[e.name] = situ or iso
                    fixed_details[e.name] = _detail(iso, situ, None if situ else 1.0)
            by_kind: dict[BlockKind, list[tuple[int, Stat]]] = {}
            for e in entries:
                if e.part == "block" and e.resolution == res:
                    assert e.kind is not None and e.k is not None
                    by_kind.setdefault(e.kind, []).append((e.k, done[e.key]))
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
        meta = self.meta(threads, duration_s)
        table = LatencyTable(meta, self.space.to_dict(), tables, "<profile>")
        calibration = [(e, done[e.key]) for e in entries if e.part == "model"]
        glue = self._glue(entries, done)
        if calibration or glue:
            _fit_correction(table, tables, calibration, glue, self._plain_pairs(entries, done))
            table = LatencyTable(meta, self.space.to_dict(), tables, "<profile>")
            warn_on_calibration(tables)
        return table

    def _glue(self, entries: list[Entry], done: dict[str, Stat]) -> dict[tuple[int, int], list[float]]:
        """Per resolution, for each in-model config: its whole forward minus the sum of its parts, from the same
        forwards (so a machine that got slower or faster between passes does not leak into it)."""
        out: dict[tuple[int, int], list[float]] = {}
        names = [n for n, _ in self.model_parts()]
        for e in entries:
            if e.part == "in_model" and e.key in done and all(f"{e.key}|{n}" in done for n in names):
                parts = sum(done[f"{e.key}|{n}"].ms for n in names)
                out.setdefault(e.resolution, []).append(done[e.key].ms - parts)
        return out

    def _plain_pairs(
        self, entries: list[Entry], done: dict[str, Stat]
    ) -> dict[tuple[int, int], list[tuple[float, float]]]:
        """Per resolution, for each in-model config: (sum of its parts timed with hooks, its plain whole forward
        timed right after, without hooks). Empty for partial results of a profiler that did not time both."""
        out: dict[tuple[int, int], list[tuple[float, float]]] = {}
        names = [n for n, _ in self.model_parts()]
        for e in entries:
            keys = [f"{e.key}|{n}" for n in (*names, "plain")]
            if e.part == "in_model" and all(k in done for k in keys):
                out.setdefault(e.resolution, []).append((sum(done[k].ms for k in keys[:-1]), done[keys[-1]].ms))
        return out

    def _in_model_figures(
        self, entries: list[Entry], done: dict[str, Stat]
    ) -> tuple[dict[tuple[BlockKind, int], Stat], dict[tuple[tuple[int, int], str], Stat]]:
        """Pool the in-model times of every (block kind, kept count) and fixed part over their occurrences."""
        blocks: dict[tuple[BlockKind, int], list[Stat]] = {}
        fixed: dict[tuple[tuple[int, int], str], list[Stat]] = {}
        block_names = {
            self.family.block_name(self.arch, s, j): (s, j) for s, d in enumerate(self.space.depths) for j in range(d)
        }
        for e in entries:
            if e.part != "in_model":
                continue
            assert e.genome is not None
            config = self.space.decode(np.asarray(e.genome))
            shapes = stage_shapes(self.space, e.resolution)
            for name, _ in self.model_parts():
                stat = done.get(f"{e.key}|{name}")
                if stat is None:
                    continue
                if name not in block_names:
                    fixed.setdefault((e.resolution, name), []).append(stat)
                    continue
                s, j = block_names[name]
                w = config.window_size[window_row(self.space, s, j)]
                kind = block_kind(self.space, e.resolution, s, j, w, shapes)
                k = keep_count(config.sparsity[s][j], kind.num_windows)
                blocks.setdefault((kind, k), []).append(stat)
        return {key: _pool(v) for key, v in blocks.items()}, {key: _pool(v) for key, v in fixed.items()}

    def meta(self, threads: int, duration_s: float) -> dict[str, Any]:
        s = self.settings
        env = self.environment
        return {
            **{
                k: env[k]
                for k in (
                    "device",
                    "device_type",
                    "device_slug",
                    "driver",
                    "cuda",
                    "torch",
                    "triton",
                    "numpy",
                    "python",
                )
            },
            "host_cpu": env["host_cpu"],
            "platform": env["platform"],
            "kernels_env": env["kernels_env"],
            "kernel_backend": env["kernel_backend"],
            "code_hash": env["code_hash"],
            "fingerprint": env["fingerprint"],
            "machine": machine_slug(fp=env["fingerprint"]),
            "threads": threads,
            "dtype": s.dtype,
            "batch": s.batch,
            "resolutions": [list(r) for r in self.resolutions],
            "head": s.head,
            "num_classes": s.num_classes,
            "warmup": s.warmup,
            "repeats": s.repeats,
            "rounds": s.rounds,
            "statistic": self.statistic,
            "statistic_note": (
                f"per round, the mean of the middle {100 - 200 * s.trim:g}% of samples (trim {s.trim:g} each side); "
                "per entry, the mean of its rounds"
                if self.statistic == "mean"
                else "the fastest sample of all rounds (the speed when nothing else interferes)"
            ),
            "trim": s.trim,
            "timer": (
                "cuda events"
                if self.device.type == "cuda"
                else "time.thread_time_ns"
                if s.clock == "thread"
                else "time.perf_counter_ns"
            ),
            "max_k_points": s.max_k_points,
            "calibration": s.calibration,
            "in_model": s.in_model,
            "flush_bytes": self.flush_bytes,
            "max_foreign_load": self.max_load,
            "waited_s": round(self.monitor.waited_s, 1),
            "busy_measurements": self.monitor.busy,
            "clock": s.clock,
            "malloc": self.malloc,
            "seed": s.seed,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "duration_s": round(duration_s, 1),
            "space": {
                "name": self.space.name,
                "architecture": self.space.architecture,
                "source": self.space.source,
                "hash": space_hash(self.space),
            },
            "sparsesearch": _package_version(),
        }


#: entries that time whole forwards: measured together, interleaved (`Profiler.measure_group`)
_WHOLE_FORWARD = ("in_model", "model")


def _expected_time_order(configs: Sequence[SparsityConfig]) -> list[int]:
    """Indices of configs from the slowest expected to the fastest, before any table exists: pixels times the
    mean kept fraction of the blocks (ties keep their order)."""

    def work(c: SparsityConfig) -> float:
        kept = [1.0 - p for stage in c.sparsity for p in stage]
        pixels = float(np.prod(c.resolution)) if c.resolution else 1.0
        return pixels * (float(np.mean(kept)) if kept else 1.0)

    return sorted(range(len(configs)), key=lambda i: -work(configs[i]))


def _record(done: dict[str, list[Stat]], entry: Entry, result: Stat | dict[str, Stat]) -> Stat:
    """Append one round of `entry` to `done`: an in-model result's total under the entry's key and each of its
    parts (and the plain forward) under `key|part`. Returns the entry's own Stat."""
    if isinstance(result, dict):
        for name, part_stat in result.items():
            if name != "total":
                done.setdefault(f"{entry.key}|{name}", []).append(part_stat)
        result = result["total"]
    done.setdefault(entry.key, []).append(result)
    return result


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


def _package_version() -> str:
    from .. import __version__  # noqa: PLC0415

    return __version__


def _fit_correction(
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


def profile(
    space: SearchSpace | str | os.PathLike,
    settings: ProfileSettings | None = None,
    out: str | os.PathLike | None = None,
    **kwargs: Any,
) -> LatencyTable:
    """Measure a latency table (see Profiler); `out` defaults to `default_table_path`."""
    if not isinstance(space, SearchSpace):
        try:
            space = SearchSpace.load(space)
        except SparseSearchError as e:
            raise LatencyTableError(str(e)) from None
    settings = settings or ProfileSettings()
    profiler = Profiler(space, settings)
    return profiler.run(out or default_table_path(profiler.space, settings), **kwargs)
