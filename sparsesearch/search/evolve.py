"""`evolve` end to end: supernet + latency table + budget -> searched configs, baselines and outputs."""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import SparsityConfig
from ..fileio import atomic_write_text
from ..errors import SparseSearchError
from .accuracy import AccuracyCache, SerialEvaluator
from .budget import parse_budget
from .engine import ALGORITHMS, run_search
from .report import Baselines, Point, uniform_resize_baseline, uniform_sparsity_baseline, write_outputs

__all__ = ["EvolveOptions", "EvolveSummary", "evolve", "make_supernet_evaluator"]


@dataclass
class EvolveOptions:
    """Everything `sparsesearch evolve` takes (see its --help)."""

    supernet: str
    table: str
    latency: str
    out: str
    space: str | None = None
    data: str | None = None
    val_samples: int = 64
    batch: int = 16
    device: str = "cpu"
    algorithm: str = "ga"
    population: int = 32
    generations: int = 12
    workers: int = 1
    ray: str | None = None
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    allow_foreign_table: bool = False
    refine: bool = True
    table_check: bool = True  # an absolute budget first runs the table's speed check (latency.ensure_table_speed)
    rescale_table: bool = False  # scale the table's predictions by the check's measured/predicted factor


@dataclass
class EvolveSummary:
    """What evolve found, for printing."""

    budget_ms: float
    dense: Point
    best: Point
    front: list[Point]
    baselines: Baselines
    metric: str
    evaluated: int
    new_evaluations: int
    out: Path
    extra: dict[str, Any] = field(default_factory=dict)


def make_supernet_evaluator(supernet: str, data: str | None, val_samples: int, batch: int, device: str) -> Callable[[SparsityConfig], float]:
    """Load a supernet and its validation subset once; return `fn(config) -> accuracy` (percent).

    A config with a resolution other than the data's runs on resized inputs (predictions scored at the labels'
    size). Module-level and built from plain arguments, so Ray can ship it to workers.
    """
    from ..evaluate import Evaluator  # noqa: PLC0415
    from ..supernet import build_eval_dataset, load_supernet  # noqa: PLC0415

    model, _, meta = load_supernet(supernet, device=device)
    dataset = build_eval_dataset(meta, data)
    ev = Evaluator(model, dataset, val_samples, batch=batch, device=device)
    size = tuple(meta.image_size)

    def fn(config: SparsityConfig) -> float:
        res = config.resolution if config.resolution and tuple(config.resolution) != size else None
        return float(ev(config, res).value)

    fn.metric = "mIoU" if meta.task == "seg" else "top1"  # type: ignore[attr-defined]
    return fn


def _fingerprint(opts: EvolveOptions, table_meta: dict[str, Any]) -> dict[str, Any]:
    """What the cached accuracies depend on: a resumed search must match it."""
    st = os.stat(opts.supernet)
    h = hashlib.sha256()
    with open(opts.supernet, "rb") as f:
        h.update(f.read(1 << 20))
    return {
        "supernet": os.path.abspath(opts.supernet),
        "supernet_size": st.st_size,
        "supernet_head_sha256": h.hexdigest()[:16],
        "data": opts.data,
        "val_samples": opts.val_samples,
        "table": os.path.abspath(opts.table),
        "table_date": table_meta.get("date"),
        "latency": opts.latency,
        "algorithm": opts.algorithm,
        "seed": opts.seed,
    }


def _prepare_out(opts: EvolveOptions, fp: dict[str, Any]) -> Path:
    out = Path(opts.out)
    meta_path = out / "search_meta.json"
    if opts.resume:
        if not meta_path.is_file():
            raise SparseSearchError(f"--resume: {out} holds no search (no search_meta.json); start without --resume")
        old = json.loads(meta_path.read_text())
        diff = [k for k in fp if k not in ("supernet_size",) and old.get(k) != fp[k]]
        if diff:
            raise SparseSearchError(
                f"--resume: the search in {out} was run with other settings ({', '.join(diff)}); use another --out or --overwrite"
            )
    elif meta_path.exists() and not opts.overwrite:
        raise SparseSearchError(f"{out} already holds a search: add --resume to continue it or --overwrite to start over")
    elif opts.overwrite:
        for name in ("accuracy_cache.jsonl", "history.jsonl", "search_state.pkl", "optuna.journal"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta_path, json.dumps(fp, indent=1) + "\n")
    return out


def evolve(opts: EvolveOptions, on_generation: Callable[[dict[str, Any]], None] | None = None,
           on_evaluated: Callable[[int], None] | None = None) -> EvolveSummary:
    """Run the whole search; raises SparseSearchError subclasses for every input problem."""
    from ..flops import count_flops  # noqa: PLC0415
    from ..latency import LatencyTable, ensure_table_speed  # noqa: PLC0415
    from ..space import SearchSpace  # noqa: PLC0415
    from ..supernet import load_supernet  # noqa: PLC0415
    from .parallel import RayEvaluator  # noqa: PLC0415

    if opts.algorithm not in ALGORITHMS:
        raise SparseSearchError(f"unknown --algorithm {opts.algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
    budget = parse_budget(opts.latency)
    if not Path(opts.supernet).is_file():
        raise SparseSearchError(f"supernet {opts.supernet} does not exist (train one with `sparsesearch adapt`)")
    table = LatencyTable.load(opts.table)
    if not opts.allow_foreign_table:
        table.check_compatible()
    model, space, meta = load_supernet(opts.supernet, device=opts.device)
    if opts.space is not None:
        user_space = SearchSpace.load(opts.space)
        from ..supernet import same_space  # noqa: PLC0415

        if not same_space(user_space, space):
            raise SparseSearchError(f"--space {opts.space} is not the space the supernet was trained on ({space.name})")
    table.check_space(space)
    res = space.resolutions  # the table may hold more resolutions (for the resize baseline) than the space
    if not opts.rescale_table:  # a budget no config can meet is bad input: say so before timing anything
        budget.resolve(table.dense_latency(res[0]), table.min_latency(res), table.max_latency(res))
    table, speed = ensure_table_speed(table, None if budget.relative else budget.value, check=opts.table_check,
                                      rescale=opts.rescale_table, resolutions=res)
    budget_ms = budget.resolve(table.dense_latency(res[0]), table.min_latency(res), table.max_latency(res))
    out = _prepare_out(opts, _fingerprint(opts, table.meta))

    factory = functools.partial(make_supernet_evaluator, opts.supernet, opts.data, opts.val_samples, opts.batch, opts.device)
    local_fn = make_supernet_evaluator(opts.supernet, opts.data, opts.val_samples, opts.batch, opts.device)
    metric = getattr(local_fn, "metric", "accuracy")
    ray_eval = None
    if (opts.workers > 1 or opts.ray) and opts.algorithm != "tune":
        ray_eval = RayEvaluator(factory, workers=max(1, opts.workers), address=opts.ray)
    evaluator = ray_eval if ray_eval is not None else SerialEvaluator(local_fn)
    cache = AccuracyCache(space, evaluator, out / "accuracy_cache.jsonl", on_evaluated=on_evaluated)

    def latency_fn(X):
        return table.predict_many(X, space)

    try:
        run = run_search(
            space, latency_fn, cache, budget_ms, algorithm=opts.algorithm, population=opts.population,
            generations=opts.generations, seed=opts.seed, out_dir=out, resume=opts.resume, on_generation=on_generation,
            refine=opts.refine, seeds=space.encode(table.min_config(res))[None], evaluator_factory=factory,
            workers=max(1, opts.workers), address=opts.ray,
        )
        base = Baselines(uniform_sparsity_baseline(space, latency_fn, cache, budget_ms), budget_ms=budget_ms)
        dense_cfg = space.densest()
        base.uniform_resize = uniform_resize_baseline(
            table.resolutions, table.dense_latency, lambda r: local_fn(SparsityConfig(dense_cfg.sparsity, dense_cfg.window_size, r)),
            dense_cfg, budget_ms,
        )
    finally:
        if ray_eval is not None:
            ray_eval.close()

    res = space.resolutions[0]
    flops_model = model

    @functools.lru_cache(maxsize=None)
    def flops_of(key: str) -> float:
        cfg = SparsityConfig.from_dict(json.loads(key))
        return float(count_flops(flops_model, cfg.resolution or res, cfg).total)

    def flops_fn(cfg: SparsityConfig) -> float:
        return flops_of(cfg.key())

    run_meta = {"supernet": opts.supernet, "table": opts.table, "budget": str(budget), "device": table.meta.get("device"),
                "val_samples": opts.val_samples, "table_check": speed.record(opts.rescale_table) if speed else None}
    best, front = write_outputs(out, space, run, base, metric=metric, flops_fn=flops_fn, meta=run_meta)
    dense = Point(dense_cfg.to_dict(), table.dense_latency(res), local_fn(dense_cfg), flops_fn(dense_cfg) / 1e9, "dense")
    return EvolveSummary(budget_ms, dense, best, front, base, metric, len(run.genes), cache.n_new, out,
                         {"table_check": speed} if speed else {})
