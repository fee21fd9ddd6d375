"""The end-to-end demo pipeline (`sparsesearch demo`, `make demo`): profile -> dense pretraining -> supernet
adaptation -> evolve -> export -> the final comparison, measured on this machine.

Every stage writes into its own folder under `out` with a stamp of the settings that produced it; a rerun with
the same settings reuses the stage's result, a change (or `fresh=True`) redoes it and everything after it.

The final table scores every row on the held-out test split (the search chose on the val split), times every
row interleaved in one sitting (rounds over all rows, median round), and puts the measured "x dense" beside the
table's prediction; :func:`verdict` says whether the demo's claims held (a `Verdict`, printed in two lines).
"""

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

if TYPE_CHECKING:
    from .search.records import BestRecord, MeasuredRow, ParetoRecord

__all__ = [
    "DemoOptions",
    "DemoRow",
    "DemoSummary",
    "run_demo",
    "Verdict",
    "Comparison",
    "verdict",
    "RESIZE_MARGIN",
]

#: mIoU points the searched config must gain over uniform resizing at the same budget (the demo's claim).
RESIZE_MARGIN = 2.0
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


#: what a row of the final table is (the verdict reads these, not the display names); a "_candidate" row is a
#: baseline timed beside the one compared with (see `settle_baselines`)
ROLES = ("dense", "unadapted", "uniform_sparsity", "uniform_resize", "searched")
BASELINES = ("uniform_sparsity", "uniform_resize")
#: baseline candidates: the search's pick and its neighbours predicted within the budget plus this share (as the
#: finalists' slack), timed in the final table so the one compared with is within the budget *as measured*
BASELINE_SLACK = 0.1


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
    verdict: list[str] = field(default_factory=list)  # its two lines (`Verdict.lines`)


def _row(rows: Sequence[DemoRow], role: str) -> DemoRow | None:
    return next((r for r in rows if r.role == role), None)


def _label(row: DemoRow) -> str:
    """The config a row names: "uniform 0.60" of "uniform sparsity (uniform 0.60)"; else the whole name."""
    return row.name[row.name.find("(") + 1 : -1] if row.name.endswith(")") else row.name


def _paired_se(a: DemoRow, b: DemoRow) -> float | None:
    """The standard error of a's gain over b on the same test items, when both kept them."""
    if not a.left_out or len(a.left_out) != len(b.left_out):
        return None
    from .evaluate import jackknife_stderr  # noqa: PLC0415

    return float(jackknife_stderr([x - y for x, y in zip(a.left_out, b.left_out)]))


@dataclass
class Comparison:
    """The searched config against one baseline kind (the row `settle_baselines` chose), or its absence."""

    kind: str  # "uniform_sparsity" or "uniform_resize"
    needed: float  # the gain the claim needs (0: at or above; the resize margin)
    label: str = ""  # the baseline's config ("uniform 0.60"); "" when the table has none within the budget
    accuracy: float = float("nan")
    measured_x: float = float("nan")
    gain: float = float("nan")  # searched minus baseline accuracy
    paired_se: float | None = None
    over_budget: bool = False  # the baseline row ran over the budget as measured (none of its kind within it)

    @property
    def present(self) -> bool:
        return bool(self.label)

    @property
    def held(self) -> bool:
        return self.present and self.gain >= self.needed

    def phrase(self) -> str:
        name = "the best uniform sparsity" if self.kind == "uniform_sparsity" else "uniform resize"
        if not self.present:
            return f"no {self.kind.replace('_', ' ')} within the budget to compare with"
        se = f" (+-{self.paired_se:.2f} paired)" if self.paired_se is not None else ""
        over = ", over the budget: none of its candidates ran within it" if self.over_budget else ""
        need = "at or above needed" if self.needed == 0 else f"at least +{self.needed:g} needed"
        return (
            f"{self.gain:+.2f}{se} over {name} ({self.label} at {self.measured_x:.2f}x as measured{over}: "
            f"{self.accuracy:.2f}; {need})"
        )


@dataclass
class Verdict:
    """Whether the demo's claims held, as data; `lines()` says it in two lines.

    speed: the searched config *measured* at or under its budget (as a multiple of dense). accuracy: its accuracy
    at or above the best uniform sparsity and at least the margin above uniform resizing within the same budget.
    """

    budget_x: float
    metric: str
    searched: bool  # the table has a searched row
    measured_x: float = float("nan")
    predicted_x: float = float("nan")
    accuracy: float = float("nan")
    comparisons: list[Comparison] = field(default_factory=list)

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
        return [speed, accuracy]


def verdict(rows: Sequence[DemoRow], budget_x: float, metric: str = "mIoU", margin: float = RESIZE_MARGIN) -> Verdict:
    """Whether the demo's claims held, from the final table's rows (see `Verdict`): the baselines compared are the
    rows `settle_baselines` chose. A claim whose baseline row is missing does not hold."""
    best = _row(rows, "searched")
    if best is None:
        return Verdict(budget_x, metric, searched=False)
    out = Verdict(budget_x, metric, True, best.measured_x, best.predicted_x, best.accuracy)
    for kind, needed in zip(BASELINES, (0.0, margin)):
        base = _row(rows, kind)
        if base is None:
            out.comparisons.append(Comparison(kind, needed))
            continue
        out.comparisons.append(
            Comparison(
                kind,
                needed,
                _label(base),
                base.accuracy,
                base.measured_x,
                best.accuracy - base.accuracy,
                _paired_se(best, base),
                base.measured_x > budget_x,
            )
        )
    return out


def settle_baselines(rows: list[DemoRow], budget_x: float, search: BestRecord | None = None) -> list[DemoRow]:
    """Per baseline kind, the row the verdict compares with: the most accurate of the search's pick and its
    timed neighbours that are within the budget (by the search's own measured rule, `BestRecord.within_budget`,
    where its finalists timed them, as the searched config had to be; else as measured here); the pick by
    prediction when none is. The others stay in the table as "<role>_candidate" rows."""

    def admitted(r: DemoRow) -> bool:
        by_search = search.within_budget(r.config) if search is not None and r.config else None
        return by_search if by_search is not None else r.measured_x <= budget_x

    for role in BASELINES:
        group = [r for r in rows if r.role in (role, f"{role}_candidate")]
        fits = [r for r in group if admitted(r)]
        if fits:
            chosen = max(fits, key=lambda r: (r.accuracy, -r.measured_x))
            for r in group:
                r.role = role if r is chosen else f"{role}_candidate"
    return rows


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
        self.say(f"[1/5] profiling {Path(self.space_path).name} on this CPU ({o.latency_threads} thread(s)) at {sizes}")
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
            f"[2/5] dense pretraining: {o.pretrain_steps} steps from random init (the 'pretrained checkpoint')",
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
            f"[3/5] adapting a supernet: {o.steps} steps, sandwich sampling + in-place distillation",
            steps=o.steps,
            lr=o.lr,
            sampler="sandwich",
            distill=True,
            init=str(init),
            ckpt_every=max(1, o.steps // 4),
        )

    def search(self, supernet: Path, table: Path) -> _Stage:
        """4. The evolutionary search under the budget (val split)."""
        from .progress import progress_bar  # noqa: PLC0415
        from .search.evolve import EvolveOptions, evolve  # noqa: PLC0415

        o = self.o
        eo = EvolveOptions(
            supernet=str(supernet),
            table=str(table),
            latency=o.latency,
            out=str(self.root / "search"),
            val_samples=o.val_samples,
            algorithm=o.algorithm,
            population=o.population,
            generations=o.generations,
            seed=o.seed,
            overwrite=True,
            finalists=o.finalists,
        )
        stage = _Stage(self.root, "search", asdict(eo), "best.json")
        if self._reuse(stage, "search"):
            return stage
        stage.reset()
        self.say(
            f"[4/5] searching under a budget of {o.latency} "
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
        self.say("[5/5] exporting the searched model (weights, config, model card, ONNX)")
        export_model(str(supernet), search.product, stage.dir, table=table, measure=False, onnx=True)
        stage.finish()

    def picks(self, space: Any, best: BestRecord, pareto: ParetoRecord) -> list[tuple[str, str, dict[str, Any]]]:
        """(name, role, config) of each row: dense, unadapted, per baseline kind the search's rule's pick by
        prediction with its neighbours near the budget ("<role>_candidate" rows; `settle_baselines` decides which
        one is compared after timing), searched."""
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
        out.append((best.best.label or "searched", "searched", best.best.config.to_dict()))
        return out

    def compare(
        self, supernet: Path, pretrained: Path, table_path: Path, best: BestRecord, pareto: ParetoRecord
    ) -> list[DemoRow]:
        """The final table: every row scored on the test split and timed interleaved, on this machine."""
        from .evaluate import Evaluator  # noqa: PLC0415
        from .flops import count_flops  # noqa: PLC0415
        from .latency import LatencyTable  # noqa: PLC0415
        from .supernet import build_eval_dataset, load_supernet  # noqa: PLC0415

        o = self.o
        self.say(f"measuring the final comparison on this machine (test split, {o.measure_rounds} interleaved rounds)")
        table = LatencyTable.load(table_path)
        model, space, meta = load_supernet(supernet)
        raw, _, _ = load_supernet(pretrained)
        test = build_eval_dataset(meta, None, "test")
        evals = {id(m): Evaluator(m, test, o.test_samples, batch=16) for m in (model, raw)}
        self.samples = evals[id(model)].n
        picks = self.picks(space, best, pareto)
        runs: list[tuple[torch.nn.Module, SparsityConfig, tuple[int, int]]] = []
        scores = []
        for _, role, d in picks:
            cfg = SparsityConfig.from_dict(d)
            h, w = cfg.resolution or space.resolutions[0]
            # every row is timed on the supernet: the unadapted row runs the same architecture and config (its
            # weights do not change the work), and alternating two models (2 x 20 MB, more than this VM's L3)
            # slowed the sparse rows by ~2% of dense against the finalists' timing of the same configs
            runs.append((model, cfg, (int(h), int(w))))
            scores.append(evals[id(raw if role == "unadapted" else model)](cfg))
        with torch_threads(o.latency_threads):  # timed as the table was profiled
            measured = _measure_interleaved(runs, o.measure_rounds, 5 if o.quick else 8, table.statistic)
        rows = []
        for (name, role, d), (m, cfg, res), ms, sc in zip(picks, runs, measured, scores):
            pred = table.predict(cfg) if res in table.resolutions else table.dense_latency(res)
            gf = count_flops(m, res, cfg).gflops
            rows.append(
                DemoRow(
                    name, d, float(pred), ms, float(sc.value), gf, role, stderr=float(sc.stderr), left_out=sc.left_out
                )
            )
        for m in (model, raw):
            m.set_config(None)  # type: ignore[operator]
        for r in rows:
            r.predicted_x, r.measured_x = r.predicted_ms / rows[0].predicted_ms, r.measured_ms / rows[0].measured_ms
        return settle_baselines(rows, best.budget_ms / rows[0].predicted_ms, best)


def baseline_note(rows: Sequence[DemoRow], search: BestRecord) -> str:
    """A line per baseline row the search timed and its rule left out (measured x dense plus `guard` standard
    errors over the budget): why the verdict compares with another row, or, where no row of that kind was
    admitted, that it compares with this one anyway (a baseline given more time than the budget)."""
    measured = search.measured
    if measured is None:
        return ""
    guard = measured.guard
    budget_x = search.budget_ms / measured.dense_predicted_ms

    def line(label: str, hit: MeasuredRow, tail: str) -> str:
        x, se = hit.measured_x_dense, hit.measured_x_dense_se
        return f"{label}: timed by the search at {x:.3f}x +- {se:.3f} dense, {tail} (+{guard:g} SE)"

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


def _resize_note(space: Any, rows: Sequence[DemoRow]) -> str:
    """How the resize baseline was trained: a resolution of the space (adapted at it) or not."""
    r = _row(rows, "uniform_resize")
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
    from .search.records import BestRecord, ParetoRecord  # noqa: PLC0415

    best = BestRecord.load(search.product)
    pareto = ParetoRecord.load(search.dir / "pareto.json")
    demo.export(supernet.product, best, search, table.product)
    rows = demo.compare(supernet.product, pretrained.product, table.product, best, pareto)
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
