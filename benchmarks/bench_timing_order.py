"""Does the order of configs within a pass change how well a run ranks them? (RESULTS.md, latency tables)

    .venv/bin/python benchmarks/bench_timing_order.py --table T [--n 20] [--passes 48] [--runs 3]

The validation configs of table T (`latency.validation_genomes`) are timed as `latency validate` times them
(one untimed forward of a config, then one timed), passes alternating between the validation order (A) and the
order of predicted time, every other such pass reversed (B), so both see the same machine. Each run is a fresh
process. Printed per order: how the runs rank the configs against each other and against the mean of every
pass of every run (Kendall tau), the two halves of each run against each other, the table against each run;
then how much consecutive forwards' deviations correlate (what order B makes use of).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_line  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", required=True, help="a latency table of this machine")
    ap.add_argument("--n", type=int, default=20, help="random configs besides dense and the uniform ones")
    ap.add_argument("--passes", type=int, default=48, help="passes per order and run")
    ap.add_argument("--runs", type=int, default=3, help="fresh processes")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one run, JSON to this path
    return ap.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One run: (configs, passes) forward times in ms for order A and order B, written as JSON to --worker."""
    import torch  # noqa: PLC0415
    from sparsesearch.latency import LatencyTable, tune_malloc  # noqa: PLC0415
    from sparsesearch.latency.measure import serpentine  # noqa: PLC0415
    from sparsesearch.latency.validate import table_model, validation_genomes  # noqa: PLC0415
    from sparsesearch.models.family import prunable  # noqa: PLC0415
    from sparsesearch.scoped import torch_threads as num_threads  # noqa: PLC0415

    table = LatencyTable.load(args.table)
    if table.meta.get("malloc"):
        tune_malloc()
    genomes = validation_genomes(table, args.n, 0)
    predicted = table.predict_many(np.stack([g for _, g in genomes]))
    model, images = table_model(table)
    net, space = prunable(model), table.space
    runs = [
        (
            functools.partial(net.set_config, space.decode(g)),
            functools.partial(model, images[space.resolutions[int(g[-1])]]),
        )
        for _, g in genomes
    ]
    n = len(runs)
    times = {"A": np.zeros((n, args.passes)), "B": np.zeros((n, args.passes))}
    by_time = [int(i) for i in np.argsort(predicted, kind="stable")]

    def one(i: int) -> float:
        setup, call = runs[i]
        setup()
        call()
        t0 = time.perf_counter()
        call()
        return (time.perf_counter() - t0) * 1e3

    with num_threads(int(table.meta["threads"])), torch.inference_mode():
        for setup, call in runs:
            setup()
            call()
            call()
        for p in range(args.passes):
            for i in range(n):
                times["A"][i, p] = one(i)
            for i in serpentine(by_time, p):
                times["B"][i, p] = one(i)
    out = {"predicted": predicted.tolist(), "labels": [lbl for lbl, _ in genomes]}
    out.update({k: v.tolist() for k, v in times.items()})
    Path(args.worker).write_text(json.dumps(out))


def tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-b, as `latency validate` reports it."""
    from sparsesearch.latency.validate import kendall_tau_b  # noqa: PLC0415

    return float(kendall_tau_b([float(v) for v in a], [float(v) for v in b]))


def lag_correlations(a: np.ndarray, lags: tuple[int, ...] = (1, 2, 5)) -> dict[int, float]:
    """(configs, passes) times of order A -> correlation of the relative deviations of forwards `lag` apart."""
    flat = (a / np.median(a, axis=1, keepdims=True)).T.reshape(-1)  # time order: pass by pass
    return {lag: float(np.corrcoef(flat[:-lag], flat[lag:])[0, 1]) for lag in (*lags, a.shape[0])}


def report(results: list[dict]) -> None:
    pred = np.array(results[0]["predicted"])
    pooled = np.mean([np.hstack([r["A"], r["B"]]) for r in results], axis=0).mean(axis=1)
    print(f"{len(pred)} configs, {len(results)} runs; {machine_line()}")
    for key, name in (("A", "validation order"), ("B", "predicted-time order, alternating")):
        t = [np.array(r[key]) for r in results]
        means = [x.mean(axis=1) for x in t]
        half = [tau(x[:, : x.shape[1] // 2].mean(1), x[:, x.shape[1] // 2 :].mean(1)) for x in t]
        cross = [tau(a, b) for a, b in itertools.combinations(means, 2)]
        print(f"{key} ({name}):")
        print(f"  runs vs each other  {np.round(cross, 3).tolist()}")
        print(f"  runs vs all passes  {np.round([tau(pooled, m) for m in means], 3).tolist()}")
        print(f"  halves of a run     {np.round(half, 3).tolist()}")
        print(f"  table vs run        {np.round([tau(pred, m) for m in means], 3).tolist()}")
    corr = lag_correlations(np.array(results[0]["A"]))
    print(
        "correlation of consecutive forwards' deviations (lag: r): "
        + ", ".join(f"{k}: {v:.2f}" for k, v in corr.items())
    )
    a = np.array(results[0]["A"])
    print(f"a single forward's coefficient of variation: {float(np.median(a.std(1) / a.mean(1))):.3f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.runs):
            out = Path(tmp) / f"run{r}.json"
            cmd = [sys.executable, __file__, "--table", args.table, "--n", str(args.n), "--passes", str(args.passes)]
            subprocess.run([*cmd, "--worker", str(out)], check=True)
            results.append(json.loads(out.read_text()))
            print(f"run {r + 1}/{args.runs} done", flush=True)
    report(results)


if __name__ == "__main__":
    main()
