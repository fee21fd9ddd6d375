"""Search benchmarks: table-only throughput, and searched configs vs SparseViT's baselines at equal budgets.

    .venv/bin/python benchmarks/bench_search.py [--supernet runs/demo/adapt/supernet.pt]
        [--table runs/demo/table/table.json] [--budgets 0.5x 0.6x 0.7x 0.8x] [--val-samples 48] [--test-samples 96]

1. Throughput (one core): GA generations over the demo space with latency from the table and a closed-form
   accuracy, i.e. everything but the network: candidates scored per second.
2. Quality: for each budget, the GA's best config (selected on the first --val-samples val scenes) against the
   best uniform sparsity and the best uniform resize (dense model at a lower profiled resolution) within the
   same budget. All three are then scored on --test-samples scenes of the *test* split, which the search never
   saw, so the comparison carries no selection bias. Run `make demo` first for the default supernet and table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparsesearch.config import SparsityConfig  # noqa: E402
from sparsesearch.evaluate import Evaluator  # noqa: E402
from sparsesearch.latency import LatencyTable  # noqa: E402
from sparsesearch.search import AccuracyCache, SerialEvaluator, parse_budget, run_search  # noqa: E402
from sparsesearch.search.report import uniform_resize_baseline, uniform_sparsity_baseline  # noqa: E402
from sparsesearch.supernet import build_eval_dataset, load_supernet  # noqa: E402

from _machine import machine_line  # noqa: E402


def throughput(table: LatencyTable, n_candidates: int = 10_000) -> tuple[float, float, int]:
    """(seconds for n candidates through a GA, predict_many configs/s, distinct configs scored)."""
    space = table.space
    X = space.sample_genes(0, n=100_000)
    t = time.perf_counter()
    table.predict_many(X)
    per_s = len(X) / (time.perf_counter() - t)
    weights = np.linspace(1.0, 2.0, len(space.genes))

    class Proxy:  # accuracy without a network: penalise sparsity, weighted per gene
        def __call__(self, configs):
            return [100.0 - float(np.dot(weights, space.encode(c)[: len(weights)])) for c in configs]

    budget = 0.5 * (table.min_latency(space.resolutions) + table.max_latency(space.resolutions))
    pop = 100
    t = time.perf_counter()
    run = run_search(
        space,
        lambda G: table.predict_many(G, space),
        AccuracyCache(space, Proxy()),
        budget,
        algorithm="ga",
        population=pop,
        generations=n_candidates // pop,
        seed=0,
        refine=False,
    )
    elapsed = time.perf_counter() - t
    return elapsed, per_s, len(run.genes)


def _budget_row(
    text: str,
    args: argparse.Namespace,
    space: Any,
    table: LatencyTable,
    cache: AccuracyCache,
    latency: Callable[[Any], Any],
    val_score: Callable[[SparsityConfig], float],
    test_score: Callable[[SparsityConfig], float],
) -> tuple[list[str], bool]:
    """One budget: search, the best uniform-sparsity and uniform-resize baselines within it, all scored on the
    test scenes; (table row, searched >= both)."""
    dense = space.densest()
    dense_ms = table.dense_latency(space.resolutions[0])
    budget = parse_budget(text).resolve(
        dense_ms, table.min_latency(space.resolutions), table.max_latency(space.resolutions)
    )
    t = time.perf_counter()
    run = run_search(
        space, latency, cache, budget, algorithm="ga", population=args.population, generations=args.generations, seed=0
    )
    searched = space.decode(run.genes[run.best_index()])
    us = [p for p in uniform_sparsity_baseline(space, latency, cache, budget) if p.latency_ms <= budget]
    ub = max(us, key=lambda p: p.accuracy) if us else None
    rs = uniform_resize_baseline(
        table.resolutions,
        table.dense_latency,
        lambda r: val_score(SparsityConfig(dense.sparsity, dense.window_size, r)),
        dense,
        budget,
    )
    rb = max(rs, key=lambda p: p.accuracy) if rs else None
    s_test = test_score(searched)
    u_test = test_score(SparsityConfig.from_dict(ub.config)) if ub else float("nan")
    r_test = test_score(SparsityConfig.from_dict(rb.config)) if rb else float("nan")
    ok = s_test >= max(u_test if ub else -1, r_test if rb else -1)
    row = [
        text,
        f"{budget:.2f}",
        f"{float(latency(space.encode(searched)[None])[0]):.2f}",
        f"{s_test:.2f}",
        f"{u_test:.2f} ({ub.label})" if ub else "none fits",
        f"{r_test:.2f} ({rb.label})" if rb else "none fits",
        "yes" if ok else "NO",
        f"{time.perf_counter() - t:.0f}",
    ]
    return row, ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernet", default="runs/demo/adapt/supernet.pt")
    ap.add_argument("--table", default="runs/demo/table/table.json")
    ap.add_argument("--budgets", nargs="+", default=["0.5x", "0.6x", "0.7x", "0.8x"])
    ap.add_argument("--val-samples", type=int, default=48)
    ap.add_argument("--test-samples", type=int, default=96)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()

    table = LatencyTable.load(args.table)
    torch.set_num_threads(1)
    secs, per_s, unique = throughput(table)
    print(f"# machine: {machine_line()}")
    print(
        f"table-only search: 10,000 candidates through the GA in {secs:.2f} s on one core "
        f"({unique} distinct feasible configs scored); predict_many: {per_s:,.0f} configs/s"
    )
    if args.skip_quality:
        return
    torch.set_num_threads(2)

    model, space, meta = load_supernet(args.supernet)
    val = Evaluator(model, build_eval_dataset(meta, split="val"), args.val_samples)
    test = Evaluator(model, build_eval_dataset(meta, split="test"), args.test_samples)
    size = tuple(meta.image_size)

    def score(ev: Evaluator, cfg: SparsityConfig) -> float:
        res = cfg.resolution if cfg.resolution and tuple(cfg.resolution) != size else None
        return float(ev(cfg, res).value)

    cache = AccuracyCache(space, SerialEvaluator(lambda c: score(val, c)))

    def latency(X):
        return table.predict_many(X, space)

    dense = space.densest()
    dense_ms = table.dense_latency(space.resolutions[0])
    rows = [["dense", "-", f"{dense_ms:.2f}", f"{score(test, dense):.2f}", "", "", "", ""]]
    wins = 0
    for text in args.budgets:
        row, ok = _budget_row(
            text, args, space, table, cache, latency, lambda c: score(val, c), lambda c: score(test, c)
        )
        rows.append(row)
        wins += ok
    print(
        f"# {meta.architecture} supernet {args.supernet}, mIoU on {args.test_samples} test scenes "
        f"(search selected on {args.val_samples} val scenes), latency predicted by {args.table}"
    )
    print(
        tabulate(
            rows,
            headers=[
                "budget",
                "ms",
                "searched ms",
                "searched",
                "uniform sparsity",
                "uniform resize",
                "searched >= both",
                "search s",
            ],
            tablefmt="github",
        )
    )
    print(f"searched config at or above both baselines at {wins}/{len(args.budgets)} budgets")


if __name__ == "__main__":
    main()
