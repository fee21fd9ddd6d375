"""What a profile measures: its settings (`ProfileSettings`), the entries of a table (`Entry`), and the plan that
lists them in measurement order (`ProfilePlan`): each block kind at its kept counts, the fixed parts, the in-model
"level" configs and the calibration configs. What a part is and how its blocks vary is the model family's to say."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import SparsityConfig
from ..errors import LatencyTableError
from ..space import SearchSpace
from .env import device_type, machine_slug, parse_dtype
from .measure import CLOCKS, DEFAULT_TRIM, STATISTICS
from .runtime import check_runtime, runtime_version
from .structure import BlockKind, kinds_and_counts, res_key, space_family

__all__ = ["ProfileSettings", "Entry", "ProfilePlan", "default_table_path", "WHOLE_FORWARD", "expected_time_order"]

_HEADS = ("cls", "seg", "none")

#: entries that time whole forwards: measured together, interleaved (`Profiler.measure_group`)
WHOLE_FORWARD = ("in_model", "model")


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
        runtime: where the parts run, "torch" (eager) or "onnxruntime" (each part exported to ONNX and timed in
            an ONNX Runtime session, `latency.runtime`; CPU and fp32 only). ONNX Runtime has no forward hooks:
            its tables have no in-model pass (`in_model_pass`), their correction is fitted on the calibration
            configs' whole forwards, each exported at its config.
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
    runtime: str = "torch"

    @property
    def in_model_pass(self) -> bool:
        """Whether the profile times parts inside whole forwards (`in_model`; torch only: it needs hooks)."""
        return self.in_model and self.runtime == "torch"

    def validate(self) -> None:
        device_type(self.device)
        check_runtime(self.runtime)
        if self.runtime != "torch":
            runtime_version(self.runtime)
            if torch.device(self.device).type != "cpu" or self.dtype != "fp32":
                raise LatencyTableError(
                    f"--runtime {self.runtime} times fp32 on the CPU: use --device cpu --dtype fp32"
                )
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
    """latency_tables/<machine-slug>/<space>_<res>[-<res>...]_<dtype>_b<batch>[_<runtime>].json (see
    `machine_slug`; no runtime suffix for torch)"""

    resolutions = settings.resolutions or space.resolutions
    res = "-".join(res_key(r) for r in resolutions)
    tag = "" if settings.runtime == "torch" else f"_{settings.runtime}"
    name = f"{space.name}_{res}_{settings.dtype}_b{settings.batch}{tag}.json"
    return Path(root) / machine_slug(settings.device) / name


class ProfilePlan:
    """The entries of one table, in measurement order, for a space and settings.

    Args:
        space: the search space (its architecture, genes and window choices decide what is measured); a space
            whose resolutions differ from the settings' is rewritten to run at the measured ones.
        settings: what and how to measure (validated here).
    """

    def __init__(self, space: SearchSpace, settings: ProfileSettings) -> None:
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
        self._counts = kinds_and_counts(space, resolutions)
        self.family = space_family(space)
        self.arch = self.family.arch(space.architecture, space.model_kwargs)
        self._head = None if settings.head == "none" else settings.head

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
            if self.settings.in_model_pass:
                for label, genome in self.level_genomes(self.resolutions.index(res)):
                    entries.append(Entry(f"{r}/in_model/{label}", "in_model", res, genome=genome.tolist()))
        for i, genome in enumerate(self.calibration_genomes()):
            res = self.space.resolutions[int(genome[-1])]
            entries.append(
                Entry(f"model/{i}/{'-'.join(map(str, genome.tolist()))}", "model", res, genome=genome.tolist())
            )
        return entries


def expected_time_order(configs: Sequence[SparsityConfig]) -> list[int]:
    """Indices of configs from the slowest expected to the fastest, before any table exists: pixels times the
    mean kept fraction of the blocks (ties keep their order)."""

    def work(c: SparsityConfig) -> float:
        kept = [1.0 - p for stage in c.sparsity for p in stage]
        pixels = float(np.prod(c.resolution)) if c.resolution else 1.0
        return pixels * (float(np.mean(kept)) if kept else 1.0)

    return sorted(range(len(configs)), key=lambda i: -work(configs[i]))
