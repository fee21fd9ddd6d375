"""The profiler: time every part of a search space's model on this machine and write a LatencyTable.

This module drives a profile and measures its entries; what to measure is `plan.py`'s, resuming `resume.py`'s,
the figures and the correction `fit.py`'s and the recorded metadata `meta.py`'s.

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

With `ProfileSettings.runtime` "onnxruntime" every part and calibration config is exported to ONNX and timed in
ONNX Runtime (`runtime.py`); it has no hooks, so there is no in-model pass (3.): the figures are the isolated
ones and the correction is fitted on the calibration configs (4.).

Each entry is measured in several rounds spread over the run; its figure is the mean of its rounds. On CPU a
sample during which another process preempted the measuring thread is re-run, and each measurement can wait
for the machine to be quiet. Partial results are saved atomically after every measurement; a rerun with the
same settings measures only what is missing.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import LatencyTableError, SparseSearchError
from ..models.family import PartInputs, prunable
from ..scoped import torch_threads
from ..space import SearchSpace
from .env import DTYPES, environment
from .fit import TableFit
from .load import LoadMonitor, default_max_load
from .malloc import tune_malloc
from .measure import (
    Stat,
    Timer,
    combine_rounds,
    default_flush_bytes,
    make_timer,
    serpentine,
    summarize,
)
from .meta import profile_meta
from .plan import WHOLE_FORWARD, Entry, ProfilePlan, ProfileSettings, default_table_path, expected_time_order
from .resume import PartialResults, settings_hash
from .runtime import OrtCall, ort_call, runtime_version
from .structure import sparsity_for_count, stage_shapes
from .table import LatencyTable

__all__ = ["Profiler", "profile"]


class Profiler(ProfilePlan):
    """Runs the measurements of one table (what to measure: `ProfilePlan`).

    Args:
        space: the search space (its architecture, genes and window choices decide what is measured).
        settings: how to measure.
        timer: a Timer (default: CUDA events on GPU, perf_counter on CPU); tests inject their own.
    """

    def __init__(self, space: SearchSpace, settings: ProfileSettings, timer: Timer | None = None) -> None:
        super().__init__(space, settings)
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
        self.runtime_version = runtime_version(settings.runtime)
        self._sessions: dict[str, OrtCall] = {}  # onnxruntime: each entry's session, made once for all rounds

    def settings_hash(self) -> str:
        """Identifies measurements that can be reused by a resumed run (same machine, software and settings)."""
        env = self.environment
        if self.settings.runtime != "torch":
            env = {**env, "runtime_version": self.runtime_version}
        return settings_hash(env, self.settings, self.resolutions, self.space)

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
        shapes = stage_shapes(self.space, entry.resolution)
        windows = tuple(self._default_window(i) for i in range(len(shapes)))
        at = PartInputs(shapes, entry.resolution, self.settings.batch, self._head, windows)
        if entry.part == "block":
            kind = entry.kind
            assert kind is not None and entry.k is not None
            p = sparsity_for_count(entry.k, kind.num_windows)
            return self.family.block_plan(model, kind.stage, kind.variant, kind.window, p, at)
        if entry.name not in self.family.fixed_parts(self.arch, self._head):
            raise LatencyTableError(f"unknown part {entry.name!r}")
        return self.family.fixed_plan(model, entry.name, at)

    def entry_fn(self, entry: Entry) -> tuple[Callable[[], Any], Callable[[], Any] | None]:
        """(run, setup): `run` runs the entry's part once; `setup` (untimed, after the timer's cache flush,
        before each call) runs the part that precedes it in the model (the family says which), whose output
        `run` then consumes, so the part starts with the caches and predictors in the state the model leaves
        them in. The patch embedding has no predecessor: the image comes cold from the data loader."""
        model = self.model()
        if self.settings.runtime == "onnxruntime":
            return self._ort_entry_fn(entry)
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

    def _session(self, entry: Entry, fn: Callable[[torch.Tensor], Any], example: torch.Tensor) -> OrtCall:
        """The entry's part (`fn`, its config set) exported at `example`'s shape and loaded into ONNX Runtime,
        once for all rounds."""
        if entry.key not in self._sessions:
            self._sessions[entry.key] = ort_call(fn, example, self.model())
        return self._sessions[entry.key]

    def _ort_entry_fn(self, entry: Entry) -> tuple[Callable[[], Any], Callable[[], Any] | None]:
        """`entry_fn` in ONNX Runtime: the part (or the whole model at its config) runs in a session on a numpy
        input; the part that precedes it runs in torch in `setup`, its output converted there (untimed)."""
        model = self.model()
        if entry.part == "model":
            assert entry.genome is not None
            prunable(model).set_config(self.space.decode(np.asarray(entry.genome)))
            image = self._randn(self.settings.batch, 3, *entry.resolution)
            whole = self._session(entry, model, image)
            array = image.cpu().numpy()
            return (lambda: whole(array)), None
        plan = self._plan(entry)
        first = self._randn(*plan.before_input)
        prev = plan.before
        if prev is None:
            run = self._session(entry, plan.run, first)
            array = first.cpu().numpy()
            return (lambda: run(array)), None
        x = prev(first)
        run = self._session(entry, plan.run, x)
        held: list[np.ndarray] = [x.cpu().numpy()]

        def setup() -> None:
            held[0] = prev(first).cpu().numpy()

        return (lambda: run(held[0])), setup

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
        calls: list[tuple[Any, Callable[[], Any]]] = []
        for e in entries:
            assert e.genome is not None and e.part in ("in_model", "model")
            config = self.space.decode(np.asarray(e.genome))
            if s.runtime == "onnxruntime":  # the whole model exported at its config (no in-model entries here)
                calls.append((config, self._ort_entry_fn(e)[0]))
                continue
            image = self._randn(s.batch, 3, *e.resolution)
            calls.append((config, functools.partial(model, image)))
        samples: list[dict[str, list[Stat]]] = [{} for _ in entries]
        with torch.inference_mode():
            for config, call in calls:
                net.set_config(config)
                for _ in range(s.warmup):
                    call()
            order = expected_time_order([config for config, _ in calls])
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
        partial = PartialResults(out, self.settings_hash())
        count = partial.resume(entries, rounds) if resume else 0
        total = rounds * len(entries)
        started = time.time()
        if on_start is not None:
            on_start(count, total)
        self.malloc = tune_malloc() if self.settings.malloc and self.device.type == "cpu" else None
        with torch_threads(self.settings.threads) as threads:
            for r in range(rounds):
                todo = partial.todo(entries, r)
                whole = [e for e in todo if e.part in WHOLE_FORWARD]
                for entry in todo:
                    if entry.part in WHOLE_FORWARD:
                        if entry is not whole[0]:
                            continue
                        results = self.measure_group(whole)  # all of this round's, interleaved, at the first
                        group = list(zip(whole, results))
                    else:
                        group = [(entry, self.measure(entry))]
                    for e, result in group:
                        count += 1
                        stat = partial.record(e, result)
                        if on_entry is not None:
                            on_entry(e, stat, count, total)
        combined = {k: combine_rounds(v, self.statistic) for k, v in partial.done.items()}
        table = self.build_table(entries, combined, threads, time.time() - started)
        table = LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())), str(out))  # exactly what is saved
        table.save(out)
        partial.remove()
        return table

    def build_table(self, entries: list[Entry], done: dict[str, Stat], threads: int, duration_s: float) -> LatencyTable:
        """Assemble measured entries into a LatencyTable (see `TableFit.table`)."""
        names = [n for n, _ in self.model_parts()]
        return TableFit(self, names, entries, done).table(self.meta(threads, duration_s))

    def meta(self, threads: int, duration_s: float) -> dict[str, Any]:
        """What the table records about how it was measured (see `profile_meta`)."""
        return profile_meta(self, threads, duration_s)


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
