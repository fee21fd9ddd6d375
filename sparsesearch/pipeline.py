"""The end-to-end demo pipeline (`sparsesearch demo`, `make demo`): profile -> dense pretraining -> supernet
adaptation -> evolve -> the same search on the pretrained weights (training-free) -> export -> the final
comparison, measured on this machine.

Every stage writes into its own folder under `out` with a stamp of the settings that produced it; a rerun with
the same settings reuses the stage's result, a change (or `fresh=True`) redoes it and everything after it.

The final table scores every row on the held-out test split (the searches chose on the val split), times every
row interleaved in one sitting (rounds over all rows, median round), and puts the measured "x dense" beside the
table's prediction; :func:`sparsesearch.verdict.verdict` says whether the demo's claims held and what the search
gains with and without training (a `Verdict`, printed in three lines)."""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .config import SparsityConfig
from .errors import SparseSearchError
from .fileio import atomic_write_text
from .options import option
from .scoped import torch_threads
from .verdict import (
    BASELINES,
    RESIZE_MARGIN,
    UNIFORM_SPARSITY_ROLES,
    Comparison,
    DemoRow,
    Verdict,
    baseline_note,
    row_of,
    settle_baselines,
    verdict,
)

if TYPE_CHECKING:
    from .search.records import BestRecord, ParetoRecord

__all__ = [
    "DemoOptions",
    "DemoRow",
    "DemoSummary",
    "run_demo",
    "Verdict",
    "Comparison",
    "verdict",
    "RESIZE_MARGIN",
    "baseline_note",
    "settle_baselines",
]

#: uniform sparsity of the "unadapted" row: the dense-pretrained weights pruned without adaptation.
UNADAPTED_SPARSITY = 0.7


def _quick_space(space_path: str) -> str:
    """The quick run's space: the tiny space of the family whose architecture `space_path` names."""
    from .models.family import get_family  # noqa: PLC0415
    from .space import SearchSpace  # noqa: PLC0415

    return get_family(SearchSpace.load(space_path).architecture).quick_space_yaml


@dataclass
class DemoOptions:
    """Settings of the demo (`sparsesearch demo`'s flags are built from these fields); the defaults finish in
    about 7 minutes on a quiet 2-core CPU."""

    out: str | None = option(
        None,
        help="run folder (default: runs/demo for the built-in space, runs/demo_<space file name> for another; a "
        "folder that holds another space's demo is refused)",
    )
    space: str = option("search_spaces/demo.yaml", help="search space of the demo")
    # dense scenes (most windows hold part of an object): pruning costs accuracy until the supernet adapts
    data: str = option("synthetic:384:objects=24-48,coverage=0.4-0.6", help="data spec")
    resolutions: tuple[int, ...] | None = option(
        None,
        help="sides to profile (default: the space's resolutions; a single-resolution space adds 5/6 and 2/3 of "
        "it for the uniform-resize reference)",
        type=int,
        nargs="+",
    )
    pretrain_steps: int = option(120, help="dense pretraining steps (the demo's 'pretrained checkpoint')")
    pretrain_lr: float = option(2e-3, help="learning rate of the dense pretraining", cli=False)
    steps: int = option(120, help="supernet adaptation steps from the pretrained weights")
    batch: int = option(4, help="training batch", cli=False)
    lr: float = option(1e-3, help="learning rate of the adaptation", cli=False)
    latency: str = option("0.7x", help="search budget (e.g. 0.6x, 40ms)")
    algorithm: str = option("ga", help="search algorithm (see `sparsesearch evolve --help`)")
    population: int = option(12, help="configs per generation of the search")
    # after the warm start (search.warmstart), whose seeds already sit near the budget
    generations: int = option(3, help="generations of the search")
    # the search's accuracy (val split); configs are compared on the same images (paired), whose noise is small
    val_samples: int = option(24, help="val items the search scores")
    test_samples: int = option(96, help="held-out test items the final table scores")
    measure_rounds: int = option(5, help="interleaved rounds of the final table's timing", cli=False)
    finalists: int = option(8, help="the search times this many of the pick's candidates before choosing (0: off)")
    # the finalists re-time the configs the pick weighs: the table needs less
    profile_repeats: int = option(4, help="repeats of each latency-table entry", cli=False)
    profile_rounds: int = option(2, help="rounds of the latency table's profile", cli=False)
    threads: int | None = option(None, help="torch CPU threads for training (default: torch's)")
    # the latency table and the final table's timing: one thread, as `sparsesearch profile` uses on a shared
    # CPU (a batch-1 forward of a small model gains little from a second thread, and its timing is steadier)
    latency_threads: int = option(1, help="CPU threads of the latency table and the final timing")
    seed: int = option(0, help="seed of every stage")
    fresh: bool = option(False, help="discard earlier results in --out")
    # a reduced run (tiny model, 64x64 images, a few steps): what the test suite runs
    quick: bool = option(False, help="a reduced run in seconds (tiny model, 64x64)")

    def __post_init__(self) -> None:
        from .search.backends import check_algorithm  # noqa: PLC0415

        check_algorithm(self.algorithm)  # before any stage runs
        if self.resolutions is not None:
            self.resolutions = tuple(int(r) for r in self.resolutions)

    def effective(self) -> DemoOptions:
        """The settings actually used (the run folder named; quick mode shrinks everything)."""
        if self.out is None:
            return replace(self, out=demo_folder(self.space, self.quick)).effective()
        if not self.quick:
            return self
        # timings of a model this small are noise: the budget only has to admit every config
        return DemoOptions(
            **{
                **asdict(self),
                "data": "synthetic:16",
                "resolutions": (64, 48),
                "pretrain_steps": 2,
                "steps": 4,
                "batch": 4,
                "population": 6,
                "generations": 2,
                "val_samples": 4,
                "test_samples": 4,
                "measure_rounds": 2,
                "finalists": 3,
                "profile_repeats": 2,
                "profile_rounds": 1,
                "latency": "100000ms",
            }
        )


def _malloc_tuned() -> bool:
    """Whether this process's allocator is tuned (`sparsesearch.latency.tune_malloc`)."""
    from .latency.malloc import malloc_tuned  # noqa: PLC0415

    return malloc_tuned() is not None


def demo_folder(space_path: str, quick: bool = False) -> str:
    """The default run folder of a space's demo: runs/demo for the built-in space, runs/demo_<space file name> for
    any other (runs/demo_quick... for a quick run), so that no demo writes into another space's run."""
    stem = Path(space_path).stem
    name = "demo" if stem == Path(DemoOptions.space).stem else f"demo_{stem}"
    return f"runs/{name}_quick" if quick else f"runs/{name}"


#: baseline candidates: the search's pick and its neighbours predicted within the budget plus this share (as the
#: finalists' slack), timed in the final table so the one compared with is within the budget *as measured*
BASELINE_SLACK = 0.1


@dataclass
class DemoSummary:
    rows: list[DemoRow]
    metric: str
    budget_ms: float
    out: Path
    reused: list[str] = field(default_factory=list)
    machine: str = ""
    budget_x: float = float("nan")  # the budget as a multiple of the predicted dense latency
    split: str = "test"
    samples: int = 0
    resize_note: str = ""
    baseline_note: str = ""  # baselines the search's timing left out (see `baseline_note`)
    outcome: Verdict | None = None  # the verdict as data
    verdict: list[str] = field(default_factory=list)  # its lines (`Verdict.lines`)


class _Stage:
    """A stage folder with a stamp of its settings."""

    def __init__(self, root: Path, name: str, settings: dict[str, Any], product: str) -> None:
        self.dir = root / name
        self.settings = json.loads(json.dumps(settings, default=str))
        self.product = self.dir / product

    def done(self) -> bool:
        stamp = self.dir / "stamp.json"
        return self.product.exists() and stamp.is_file() and json.loads(stamp.read_text()) == self.settings

    def reset(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)

    def finish(self) -> None:
        atomic_write_text(self.dir / "stamp.json", json.dumps(self.settings, indent=1) + "\n")


def _uniform_in_space(space: Any, p: float) -> SparsityConfig:
    """Uniform sparsity `p` as a config of `space`: each gene at its choice nearest to `p` (genes that only
    allow 0 stay dense), at the space's first resolution."""
    x = space.encode(space.densest())
    for gi, g in enumerate(space.genes):
        x[gi] = min(range(len(g.choices)), key=lambda c: abs(g.choices[c] - p))
    return space.decode(space.repair(x))


def _measure_interleaved(
    runs: Sequence[tuple[torch.nn.Module, SparsityConfig, tuple[int, int]]],
    rounds: int,
    repeats: int,
    statistic: str = "mean",
) -> list[float]:
    """Milliseconds per forward of each (model, config, input size) on CPU, batch 1: two untimed forwards of
    each, then rows interleaved forward by forward (`latency.time_interleaved`, as `latency validate` times
    configs), `rounds` rounds of `repeats` passes, combined by the table's `statistic` (`combine_rounds`)."""
    from .latency import combine_rounds, make_timer, time_interleaved  # noqa: PLC0415
    from .models.family import prunable  # noqa: PLC0415

    timed = [
        (functools.partial(prunable(model).set_config, cfg), functools.partial(model, torch.randn(1, 3, *res)))
        for model, cfg, res in runs
    ]
    with torch.inference_mode():
        stats = time_interleaved(timed, make_timer("cpu", statistic=statistic), 2, repeats, max(1, rounds))
    return [combine_rounds(s, statistic).ms for s in stats]


def _profiled_resolutions(
    space_res: Sequence[tuple[int, int]], sides: Sequence[int] | None
) -> tuple[tuple[int, int], ...]:
    """The sizes the table is profiled at: the sides asked for; else the space's resolutions when it has several;
    else its one resolution and 5/6 and 2/3 of it (multiples of 16), for a uniform-resize reference row."""
    if sides:
        return tuple((int(r), int(r)) for r in sides)
    if len(space_res) > 1:
        return tuple(space_res)
    h, w = space_res[0]
    return ((h, w),) + tuple((max(16, round(h * f / 16) * 16), max(16, round(w * f / 16) * 16)) for f in (5 / 6, 2 / 3))


#: the file in a demo's folder that says which space's run it holds
DEMO_MARK = "demo.json"


def _check_folder(root: Path, o: DemoOptions) -> dict[str, Any]:
    """The folder's owner record for this run; SparseSearchError if `root` holds the demo of another space (a
    folder of an earlier version, without the record, is taken over)."""
    from .space import SearchSpace  # noqa: PLC0415

    owner = {"space": SearchSpace.load(o.space).name, "source": str(o.space), "quick": bool(o.quick)}
    mark = root / DEMO_MARK
    if not mark.is_file():
        return owner
    try:
        held = json.loads(mark.read_text())
    except (OSError, ValueError):
        return owner
    if (held.get("space"), held.get("quick")) != (owner["space"], owner["quick"]):
        what = f"the {'quick ' if held.get('quick') else ''}demo of space {held.get('space')!r}"
        raise SparseSearchError(
            f"{root} holds {what} ({held.get('source')}); give this run its own folder with --out (by default "
            f"each space has one: {demo_folder(str(o.space), o.quick)}), or remove {root} to reuse the name"
        )
    return owner


class _Demo:
    """One demo run: the stages in order, each reused when its stamp matches and nothing before it was redone."""

    def __init__(self, o: DemoOptions, say: Callable[[str], None], progress: bool) -> None:
        self.o, self.say, self.progress = o, say, progress
        assert o.out is not None  # DemoOptions.effective names it
        self.root = Path(o.out)
        owner = _check_folder(self.root, o)
        if o.fresh and self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / DEMO_MARK, json.dumps(owner, indent=1) + "\n")
        self.threads = torch.get_num_threads()  # `run_demo` sets o.threads for the run
        self.space_path = o.space
        if o.quick:
            self.space_path = str(self.root / "quick.yaml")
            Path(self.space_path).write_text(_quick_space(o.space))
        self.space_text = Path(self.space_path).read_text()
        self.reused: list[str] = []
        self.samples = 0  # test items the final table scored
        self.redo = False  # once a stage is redone, every later one is too

    def _reuse(self, stage: _Stage, what: str) -> bool:
        if stage.done() and not self.redo:
            self.reused.append(what)
            return True
        self.redo = True
        return False

    def table(self) -> _Stage:
        """1. The latency table of this machine (the space's resolutions, or the sides asked for)."""
        from .latency import ProfileSettings, profile  # noqa: PLC0415
        from .progress import progress_bar  # noqa: PLC0415
        from .space import SearchSpace  # noqa: PLC0415

        o = self.o
        res = _profiled_resolutions(SearchSpace.load(self.space_path).resolutions, o.resolutions)
        ps = ProfileSettings(
            device="cpu",
            resolutions=res,
            threads=o.latency_threads,
            repeats=o.profile_repeats,
            rounds=o.profile_rounds,
            head="seg",
            num_classes=4,
            seed=o.seed,
            calibration=2 if o.quick else 6,
            # as the process is: `sparsesearch demo` tunes its allocator (no page faults whose number depends on the
            # allocation history), a library caller's process stays as it is
            malloc=_malloc_tuned(),
            quiet=not o.quick,
            max_wait_s=120.0,
        )
        stage = _Stage(self.root, "table", {"space": self.space_text, **asdict(ps)}, "table.json")
        if self._reuse(stage, "latency table"):
            return stage
        stage.dir.mkdir(parents=True, exist_ok=True)  # keeps a partial profile: the profiler resumes it
        stage.product.unlink(missing_ok=True)
        sizes = ", ".join(f"{h}x{w}" for h, w in res)
        self.say(f"[1/6] profiling {Path(self.space_path).name} on this CPU ({o.latency_threads} thread(s)) at {sizes}")
        with progress_bar(desc="profile", unit="entry", enabled=self.progress) as bar:

            def on_start(done: int, total: int) -> None:
                bar.total, bar.n = total, done
                bar.refresh()

            profile(self.space_path, ps, stage.product, on_start=on_start, on_entry=lambda *a: bar.update(1))
        stage.finish()
        return stage

    def _train(self, name: str, what: str, message: str, **kw: Any) -> _Stage:
        """Train (or reuse, or resume) one adaptation run in OUT/name."""
        from .adapt import AdaptOptions, adapt  # noqa: PLC0415

        o = self.o
        ao = AdaptOptions(
            space=self.space_path,
            data=o.data,
            out=str(self.root / name),
            batch=o.batch,
            seed=o.seed,
            val_samples=o.val_samples,
            num_classes=4,
            device="cpu",
            **kw,
        )
        stage = _Stage(self.root, name, {"space": self.space_text, **ao.to_dict()}, "supernet.pt")
        if self._reuse(stage, what):
            return stage
        self.say(message)
        try:  # a run killed part-way resumes from its last.pt; one with other settings is refused and redone
            if not (stage.dir / "last.pt").is_file() or (stage.dir / "stamp.json").exists():
                raise SparseSearchError("nothing to resume")
            adapt(ao, resume=True, progress=self.progress, log=self.say)
        except SparseSearchError:
            stage.reset()
            adapt(ao, progress=self.progress, log=self.say)
        stage.finish()
        return stage

    def pretrain(self) -> _Stage:
        """2. Dense training from random init: the demo's stand-in for a pretrained checkpoint."""
        o = self.o
        return self._train(
            "pretrain",
            "dense pretraining",
            f"[2/6] dense pretraining: {o.pretrain_steps} steps from random init (the 'pretrained checkpoint')",
            steps=o.pretrain_steps,
            lr=o.pretrain_lr,
            sampler="dense",
            ckpt_every=max(1, o.pretrain_steps // 2),
        )

    def adapt(self, init: Path) -> _Stage:
        """3. Supernet adaptation from the pretrained weights (sandwich sampling + in-place distillation)."""
        o = self.o
        return self._train(
            "adapt",
            "supernet",
            f"[3/6] adapting a supernet: {o.steps} steps, sandwich sampling + in-place distillation",
            steps=o.steps,
            lr=o.lr,
            sampler="sandwich",
            distill=True,
            init=str(init),
            ckpt_every=max(1, o.steps // 4),
        )

    def search(self, supernet: Path, table: Path, training_free: bool = False) -> _Stage:
        """4. The evolutionary search under the budget (val split) on the adapted supernet; 5. with
        `training_free`, the same search on the pretrained weights as they are (no adaptation)."""
        from .progress import progress_bar  # noqa: PLC0415
        from .search.evolve import EvolveOptions, evolve  # noqa: PLC0415

        o = self.o
        name = "search_pretrained" if training_free else "search"
        eo = EvolveOptions(
            supernet=str(supernet),
            table=str(table),
            latency=o.latency,
            out=str(self.root / name),
            val_samples=o.val_samples,
            algorithm=o.algorithm,
            population=o.population,
            generations=o.generations,
            seed=o.seed,
            overwrite=True,
            finalists=o.finalists,
        )
        stage = _Stage(self.root, name, asdict(eo), "best.json")
        if self._reuse(stage, "training-free search" if training_free else "search"):
            return stage
        stage.reset()
        what = "the pretrained weights, not adapted (training-free)" if training_free else "the supernet"
        self.say(
            f"[{5 if training_free else 4}/6] searching {what} under a budget of {o.latency} "
            f"({o.algorithm}, population {o.population}, {o.generations} generations)"
        )
        with progress_bar(o.generations, desc="evolve", unit="gen", enabled=self.progress) as bar:

            def on_generation(rec: dict[str, Any]) -> None:
                bar.n = min(int(rec.get("generation", 0)), o.generations)
                if "best_accuracy" in rec:  # set_postfix refreshes the bar
                    bar.set_postfix(best=f"{rec['best_accuracy']:.2f}", ms=f"{rec['best_latency_ms']:.2f}")
                else:
                    bar.refresh()

            evolve(eo, on_generation=on_generation)
        stage.finish()
        return stage

    def export(self, supernet: Path, best: BestRecord, search: _Stage, table: Path) -> None:
        """5. The deployable model of the searched config (weights, config, model card, ONNX)."""
        from .export import export_model  # noqa: PLC0415

        stage = _Stage(
            self.root, "export", {"best": best.best.config.to_dict(), "supernet": str(supernet)}, "card.json"
        )
        if self._reuse(stage, "export"):
            return
        stage.reset()
        self.say("[6/6] exporting the searched model (weights, config, model card, ONNX)")
        export_model(str(supernet), search.product, stage.dir, table=table, measure=False, onnx=True)
        stage.finish()

    def picks(
        self, space: Any, best: BestRecord, pareto: ParetoRecord, free: BestRecord | None = None
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """(name, role, config) of each row: dense, unadapted, per baseline kind the search's rule's pick by
        prediction with its neighbours near the budget ("<role>_candidate" rows; `settle_baselines` decides which
        one is compared after timing), the training-free search's pick (`free`), searched."""
        from .search.selection import pick_best  # noqa: PLC0415

        out = [("dense", "dense", space.densest().to_dict())]
        unadapted = _uniform_in_space(space, UNADAPTED_SPARSITY)
        out.append(
            (f"unadapted @{UNADAPTED_SPARSITY:g} (dense weights, no adaptation)", "unadapted", unadapted.to_dict())
        )
        tie, budget = best.pick.tie_margin, best.budget_ms
        kinds = (pareto.uniform_sparsity, pareto.uniform_resize)
        for label, role, kind in zip(("uniform sparsity", "uniform resize"), BASELINES, kinds):
            points = sorted(kind, key=lambda p: p.latency_ms)
            lat = [p.latency_ms for p in points]
            pick = pick_best(lat, [p.accuracy for p in points], budget, tie)
            if pick is None:  # none predicted within the budget: the fastest, if the table may over-predict it
                if points and lat[0] <= budget * (1 + BASELINE_SLACK):
                    out.append((f"{label} ({points[0].label})", role, points[0].config.to_dict()))
                continue
            for i in range(max(0, pick.index - 1), pick.index + 2):  # the pick (the same rule as the searched
                # config's, by prediction) and its neighbours near the budget
                if i < len(points) and (i == pick.index or lat[i] <= budget * (1 + BASELINE_SLACK)):
                    r = role if i == pick.index else f"{role}_candidate"
                    out.append((f"{label} ({points[i].label})", r, points[i].config.to_dict()))
        if free is not None:
            name = "training-free searched (pretrained weights, no adaptation)"
            out.append((name, "training_free", free.best.config.to_dict()))
        out.append((best.best.label or "searched", "searched", best.best.config.to_dict()))
        return out

    def compare(
        self,
        supernet: Path,
        pretrained: Path,
        table_path: Path,
        searches: tuple[BestRecord, ParetoRecord, BestRecord | None],
    ) -> list[DemoRow]:
        """The final table: every row scored on the test split and timed interleaved, on this machine.
        `searches`: the adapted search's best and pareto records, the training-free search's best."""
        from .evaluate import Evaluator  # noqa: PLC0415
        from .latency import LatencyTable  # noqa: PLC0415
        from .supernet import build_eval_dataset, load_supernet  # noqa: PLC0415

        o = self.o
        best, pareto, free = searches
        self.say(f"measuring the final comparison on this machine (test split, {o.measure_rounds} interleaved rounds)")
        table = LatencyTable.load(table_path)
        model, space, meta = load_supernet(supernet)
        raw, _, _ = load_supernet(pretrained)
        test = build_eval_dataset(meta, None, "test")
        adapted, unadapted = (Evaluator(m, test, o.test_samples, batch=16) for m in (model, raw))
        self.samples = adapted.n
        picks = self.picks(space, best, pareto, free)
        configs = [SparsityConfig.from_dict(d) for _, _, d in picks]
        sizes = [_size(cfg.resolution or space.resolutions[0]) for cfg in configs]
        # every row is timed on the supernet: the pretrained-weight rows run the same architecture and config
        # (weights do not change the work), and alternating two models (2 x 20 MB, more than this VM's L3) slowed
        # the sparse rows by ~2% of dense against the finalists' timing of the same configs
        runs = [(model, cfg, res) for cfg, res in zip(configs, sizes)]
        with torch_threads(o.latency_threads):  # timed as the table was profiled
            measured = _measure_interleaved(runs, o.measure_rounds, 5 if o.quick else 8, table.statistic)
        rows = []
        for (name, role, d), cfg, res, ms in zip(picks, configs, sizes, measured):
            on_pretrained = role in ("unadapted", "training_free")
            sc = (unadapted if on_pretrained else adapted)(cfg)
            pred = table.predict(cfg) if res in table.resolutions else table.dense_latency(res)
            row = DemoRow(name, d, float(pred), ms, float(sc.value), _gflops(model, res, cfg), role)
            row.stderr, row.left_out = float(sc.stderr), sc.left_out
            if on_pretrained or role in UNIFORM_SPARSITY_ROLES:  # the training-free baseline's candidates
                pre = sc if on_pretrained else unadapted(cfg)
                row.pretrained_accuracy, row.pretrained_left_out = float(pre.value), pre.left_out
            rows.append(row)
        for m in (model, raw):
            m.set_config(None)  # type: ignore[operator]
        for r in rows:
            r.predicted_x, r.measured_x = r.predicted_ms / rows[0].predicted_ms, r.measured_ms / rows[0].measured_ms
        return settle_baselines(rows, best.budget_ms / rows[0].predicted_ms, best)


def _size(res: Sequence[int]) -> tuple[int, int]:
    return int(res[0]), int(res[1])


def _gflops(model: torch.nn.Module, res: tuple[int, int], cfg: SparsityConfig) -> float:
    from .flops import count_flops  # noqa: PLC0415

    return float(count_flops(model, res, cfg).gflops)


def _resize_note(space: Any, rows: Sequence[DemoRow]) -> str:
    """How the resize baseline was trained: a resolution of the space (adapted at it) or not."""
    r = row_of(rows, "uniform_resize")
    if r is None:
        return "uniform resize: no resolution within the budget"
    res = tuple(SparsityConfig.from_dict(r.config).resolution or space.resolutions[0])
    sides = "/".join(str(h) for h, _ in space.resolutions)
    if res in space.resolutions:
        return f"uniform resize: {res[0]}x{res[1]} is a resolution of the space ({sides}): adapted at it, as fair"
    return f"uniform resize: {res[0]}x{res[1]} is not a resolution of the space ({sides}): never trained at it"


def run_demo(options: DemoOptions, say: Callable[[str], None] = lambda msg: None, progress: bool = True) -> DemoSummary:
    """Run (or reuse) every stage and measure the final comparison on this machine.

    `say` receives one line per stage; `progress` shows the stages' progress bars. The process's allocator is left
    as it is (`sparsesearch demo` tunes its own, see `sparsesearch.latency.tune_malloc`) and its thread count is
    restored after the run.
    """
    with torch_threads(options.threads):  # training and evaluation; the thread count is restored after the run
        return _run_demo(options, say, progress)


def _run_demo(options: DemoOptions, say: Callable[[str], None], progress: bool) -> DemoSummary:
    from .latency import device_name  # noqa: PLC0415
    from .space import SearchSpace  # noqa: PLC0415

    demo = _Demo(options.effective(), say, progress)
    table = demo.table()
    pretrained = demo.pretrain()
    supernet = demo.adapt(pretrained.product)
    search = demo.search(supernet.product, table.product)
    free = demo.search(pretrained.product, table.product, training_free=True)
    from .search.records import BestRecord, ParetoRecord  # noqa: PLC0415

    best = BestRecord.load(search.product)
    pareto = ParetoRecord.load(search.dir / "pareto.json")
    demo.export(supernet.product, best, search, table.product)
    searches = (best, pareto, BestRecord.load(free.product))
    rows = demo.compare(supernet.product, pretrained.product, table.product, searches)
    budget_x = best.budget_ms / rows[0].predicted_ms
    metric = best.metric
    outcome = verdict(rows, budget_x, metric)
    summary = DemoSummary(
        rows,
        metric,
        best.budget_ms,
        demo.root,
        demo.reused,
        f"{device_name('cpu')}, {demo.o.latency_threads} thread(s)",
        budget_x=budget_x,
        samples=demo.samples,
        resize_note=_resize_note(SearchSpace.load(demo.space_path), rows),
        baseline_note=baseline_note(rows, best),
        outcome=outcome,
        verdict=outcome.lines(),
    )
    atomic_write_text(demo.root / "summary.json", json.dumps(asdict(summary), indent=1, default=str) + "\n")
    return summary
