"""Latency-constrained search with accuracies evaluated in parallel on Ray workers.

    .venv/bin/python examples/ray_evolve.py --supernet runs/demo/adapt/supernet.pt \
        --table runs/demo/table/table.json [--workers 2 | --address auto] [--algorithm ga|tune]

Each worker loads the supernet and its validation subset once and scores the configs it is sent; a local Ray
instance is started when no --address is given. With --algorithm tune the configs are proposed by a Ray Tune
searcher (optuna's TPE behind Tune's OptunaSearch), evaluated on the same workers. Run `make demo` first for the
default inputs.
"""

from __future__ import annotations

import argparse

from sparsesearch.search.evolve import EvolveOptions, evolve
from tabulate import tabulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--supernet", default="runs/demo/adapt/supernet.pt")
    ap.add_argument("--table", default="runs/demo/table/table.json")
    ap.add_argument("--latency", default="0.6x")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--address", default=None, help="an existing Ray cluster, e.g. auto")
    ap.add_argument("--algorithm", default="ga", choices=["ga", "nsga2", "tune"])
    ap.add_argument("--out", default="runs/ray_evolve")
    args = ap.parse_args()

    summary = evolve(
        EvolveOptions(
            supernet=args.supernet,
            table=args.table,
            latency=args.latency,
            out=args.out,
            algorithm=args.algorithm,
            workers=args.workers,
            ray_address=args.address,
            population=12,
            generations=4,
            val_samples=32,
            overwrite=True,
        ),
        on_generation=lambda rec: print(
            f"generation {rec.get('generation')}: {rec.get('evaluated')} evaluated, "
            f"best {rec.get('best_accuracy', float('nan')):.2f}"
        ),
    )
    rows = [
        [p.label or "searched", f"{p.latency_ms:.2f}", f"{p.accuracy:.2f}"]
        for p in [summary.dense, *summary.baselines.uniform_sparsity[-1:], summary.best]
    ]
    print(tabulate(rows, headers=["config", "pred. ms", summary.metric], tablefmt="github"))


if __name__ == "__main__":
    main()
