"""The end-to-end demo pipeline (`sparsesearch demo`, `make demo`): profile -> adapt -> evolve -> export.

Every stage writes into its own folder under `out` with a stamp of the settings that produced it; a rerun with
the same settings reuses the stage's result, a change (or `fresh=True`) redoes it and everything after it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import SparsityConfig
from .errors import SparseSearchError
from .fileio import atomic_write_text

__all__ = ["DemoOptions", "DemoRow", "DemoSummary", "run_demo", "QUICK_SPACE_YAML", "QUICK_SAM_SPACE_YAML"]

QUICK_SPACE_YAML = """\
name: quick
architecture: swin_nano
model_kwargs: {embed_dim: 16, num_heads: [1, 1, 2, 2]}
resolutions: [[64, 64]]
sparsity_choices: [0.0, 0.25, 0.5, 0.75]
genes:
  - {name: s1, blocks: ["0.0", "0.1"]}
  - {name: s2, blocks: ["1.0", "1.1"]}
  - {name: s34, blocks: ["2.0", "2.1", "3.0", "3.1"], choices: [0.0]}
window_sizes: [[4], [4], [4], [4]]
"""

# the quick run of a plain-ViT space (`--quick --space search_spaces/sam_demo.yaml`): 4x4 tokens at 64x64
QUICK_SAM_SPACE_YAML = """\
name: quick_sam
architecture: samvit_nano
model_kwargs: {embed_dim: 16, num_heads: 2, neck_chans: 16, seg_dim: 16, window_size: 2}
resolutions: [[64, 64]]
sparsity_choices: [0.0, 0.25, 0.5, 0.75]
genes:
  - {name: w1, blocks: ["0.0", "0.1"]}
  - {name: g1, blocks: ["0.2"]}
  - {name: g2, blocks: ["1.0", "1.1", "1.2"], choices: [0.0, 0.5]}
window_sizes: [[2], [2]]
"""


def _quick_space(space_path: str) -> str:
    """The quick run's space: the plain-ViT one when `space_path` names a plain-ViT architecture, else Swin's."""
    from .models import model_family_name  # noqa: PLC0415
    from .space import SearchSpace  # noqa: PLC0415

    try:
        family = model_family_name(SearchSpace.load(space_path).architecture)
    except SparseSearchError:
        family = "SwinTransformer"
    return QUICK_SAM_SPACE_YAML if family == "SamViT" else QUICK_SPACE_YAML


@dataclass
class DemoOptions:
    """Settings of the demo; the defaults finish in a few minutes on a 2-core CPU."""

    out: str = "runs/demo"
    space: str = "search_spaces/demo.yaml"
    data: str = "synthetic:320"
    resolutions: tuple[int, ...] = (192, 160, 128)  # profiled; the smaller ones serve the resize baseline
    steps: int = 300
    batch: int = 4
    lr: float = 1e-3
    latency: str = "0.9x"
    algorithm: str = "ga"
    population: int = 16
    generations: int = 6
    val_samples: int = 48
    profile_repeats: int = 6
    profile_rounds: int = 2
    threads: int | None = None
    seed: int = 0
    fresh: bool = False
    quick: bool = False  # a reduced run (tiny model, 64x64 images, a few steps): what the test suite runs

    def effective(self) -> DemoOptions:
        """The settings actually used (quick mode shrinks everything)."""
        if not self.quick:
            return self
        # timings of a model this small are noise: the budget only has to admit every config
        return DemoOptions(
            **{
                **asdict(self),
                "data": "synthetic:16",
                "resolutions": (64, 48),
                "steps": 4,
                "batch": 4,
                "population": 6,
                "generations": 2,
                "val_samples": 4,
                "profile_repeats": 2,
                "profile_rounds": 1,
                "latency": "100000ms",
            }
        )


@dataclass
class DemoRow:
    """One line of the final comparison."""

    name: str
    config: dict[str, Any]
    predicted_ms: float
    measured_ms: float
    accuracy: float
    gflops: float


@dataclass
class DemoSummary:
    rows: list[DemoRow]
    metric: str
    budget_ms: float
    out: Path
    reused: list[str] = field(default_factory=list)
    machine: str = ""


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


def run_demo(options: DemoOptions, say: Callable[[str], None] = lambda msg: None, progress: bool = True) -> DemoSummary:
    """Run (or reuse) every stage and measure the final comparison on this machine.

    `say` receives one line per stage; `progress` shows the stages' progress bars.
    """
    from .export import export_model, measure_latency  # noqa: PLC0415
    from .flops import count_flops  # noqa: PLC0415
    from .latency import LatencyTable, ProfileSettings, device_name, profile  # noqa: PLC0415
    from .search.evolve import EvolveOptions, evolve  # noqa: PLC0415
    from .search.selection import pick_best  # noqa: PLC0415
    from .supernet import load_supernet  # noqa: PLC0415

    o = options.effective()
    root = Path(o.out)
    if o.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    if o.threads:
        torch.set_num_threads(o.threads)
    threads = torch.get_num_threads()
    space_path = o.space
    if o.quick:
        quick_yaml = _quick_space(space_path)
        space_path = str(root / "quick.yaml")
        Path(space_path).write_text(quick_yaml)
    reused: list[str] = []
    redo = False  # once a stage is redone, every later one is too

    # 1. latency table of this machine
    res = tuple((r, r) for r in o.resolutions)
    ps = ProfileSettings(
        device="cpu",
        resolutions=res,
        threads=threads,
        repeats=o.profile_repeats,
        rounds=o.profile_rounds,
        head="seg",
        num_classes=4,
        seed=o.seed,
        calibration=2 if o.quick else 6,
        quiet=not o.quick,
        max_wait_s=120.0,
    )
    table_stage = _Stage(root, "table", {"space": Path(space_path).read_text(), **asdict(ps)}, "table.json")
    if table_stage.done():
        reused.append("latency table")
    else:
        redo = True
        table_stage.dir.mkdir(parents=True, exist_ok=True)  # keeps a partial profile: the profiler resumes it
        table_stage.product.unlink(missing_ok=True)
        say(
            f"[1/4] profiling {Path(space_path).name} on this CPU ({threads} threads) at {', '.join(str(r) for r in o.resolutions)}"
        )
        from .progress import progress_bar  # noqa: PLC0415

        with progress_bar(desc="profile", unit="entry", enabled=progress) as bar:

            def on_start(done: int, total: int) -> None:
                bar.total, bar.n = total, done
                bar.refresh()

            profile(space_path, ps, table_stage.product, on_start=on_start, on_entry=lambda *a: bar.update(1))
        table_stage.finish()
    table = LatencyTable.load(table_stage.product)

    # 2. supernet
    from .adapt import AdaptOptions, adapt  # noqa: PLC0415

    ao = AdaptOptions(
        space=space_path,
        data=o.data,
        out=str(root / "adapt"),
        steps=o.steps,
        batch=o.batch,
        lr=o.lr,
        sampler="sandwich",
        distill=True,
        seed=o.seed,
        val_samples=o.val_samples,
        num_classes=4,
        device="cpu",
        ckpt_every=max(1, o.steps // 4),
    )
    adapt_stage = _Stage(root, "adapt", {"space": Path(space_path).read_text(), **ao.to_dict()}, "supernet.pt")
    if adapt_stage.done() and not redo:
        reused.append("supernet")
    else:
        redo = True
        say(f"[2/4] adapting a supernet: {o.steps} steps, sandwich sampling + in-place distillation")
        try:  # a run killed part-way resumes from its last.pt; one with other settings is refused and redone
            if not (adapt_stage.dir / "last.pt").is_file() or (adapt_stage.dir / "stamp.json").exists():
                raise SparseSearchError("nothing to resume")
            adapt(ao, resume=True, progress=progress, log=say)
        except SparseSearchError:
            adapt_stage.reset()
            adapt(ao, progress=progress, log=say)
        adapt_stage.finish()
    supernet = str(adapt_stage.product)

    # 3. search
    eo = EvolveOptions(
        supernet=supernet,
        table=str(table_stage.product),
        latency=o.latency,
        out=str(root / "search"),
        val_samples=o.val_samples,
        algorithm=o.algorithm,
        population=o.population,
        generations=o.generations,
        seed=o.seed,
        overwrite=True,
    )
    search_stage = _Stage(root, "search", asdict(eo), "best.json")
    if search_stage.done() and not redo:
        reused.append("search")
    else:
        redo = True
        search_stage.reset()
        say(
            f"[3/4] searching under a budget of {o.latency} ({o.algorithm}, population {o.population}, {o.generations} generations)"
        )
        from .progress import progress_bar  # noqa: PLC0415

        with progress_bar(o.generations, desc="evolve", unit="gen", enabled=progress) as bar:

            def on_generation(rec: dict[str, Any]) -> None:
                bar.n = min(int(rec.get("generation", 0)), o.generations)
                if "best_accuracy" in rec:  # set_postfix refreshes the bar
                    bar.set_postfix(best=f"{rec['best_accuracy']:.2f}", ms=f"{rec['best_latency_ms']:.2f}")
                else:
                    bar.refresh()

            evolve(eo, on_generation=on_generation)
        search_stage.finish()
    best = json.loads(search_stage.product.read_text())
    pareto = json.loads((search_stage.dir / "pareto.json").read_text())

    # 4. export
    ex_stage = _Stage(root, "export", {"best": best["config"], "supernet": supernet}, "card.json")
    if ex_stage.done() and not redo:
        reused.append("export")
    else:
        ex_stage.reset()
        say("[4/4] exporting the searched model (weights, config, model card, ONNX)")
        export_model(supernet, search_stage.product, ex_stage.dir, table=table_stage.product, measure=False, onnx=True)
        ex_stage.finish()

    # the comparison, measured now on this machine
    say("measuring the final comparison on this machine")
    model, space, meta = load_supernet(supernet)
    base = pareto["baselines"]
    picks: list[tuple[str, dict[str, Any], float]] = []
    dense_cfg = space.densest()
    from .search.evolve import make_supernet_evaluator  # noqa: PLC0415

    acc = make_supernet_evaluator(supernet, None, o.val_samples, 16, "cpu")
    picks.append(("dense", dense_cfg.to_dict(), acc(dense_cfg)))
    tie = float(best.get("pick", {}).get("tie_margin", 0.0))
    for label, points in (("uniform sparsity", base["uniform_sparsity"]), ("uniform resize", base["uniform_resize"])):
        pick = pick_best([p["latency_ms"] for p in points], [p["accuracy"] for p in points], best["budget_ms"], tie)
        if pick is not None:  # the same rule that chose the searched config
            p = points[pick.index]
            picks.append((f"{label} ({p['label']})", p["config"], p["accuracy"]))
    picks.append(("searched", best["config"], best["accuracy"]))
    rows = []
    for name, cfg_dict, accuracy in picks:
        cfg = SparsityConfig.from_dict(cfg_dict)
        r = tuple(cfg.resolution or space.resolutions[0])
        model.set_config(cfg)
        ms = measure_latency(model, r, repeats=5 if o.quick else 20)
        rows.append(
            DemoRow(
                name,
                cfg_dict,
                float(table.predict(cfg) if r in table.resolutions else table.dense_latency(r)),
                ms,
                float(accuracy),
                count_flops(model, r, cfg).gflops,
            )
        )
    model.set_config(None)
    summary = DemoSummary(
        rows,
        best.get("metric", "mIoU"),
        float(best["budget_ms"]),
        root,
        reused,
        f"{device_name('cpu')}, {threads} threads",
    )
    atomic_write_text(root / "summary.json", json.dumps(asdict(summary), indent=1, default=str) + "\n")
    return summary
