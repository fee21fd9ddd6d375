"""Latency-table prediction speed: configs per second of LatencyTable.predict_many (one process, numpy).

    .venv/bin/python benchmarks/bench_latency.py [TABLE ...]

Uses the shipped tables under latency_tables/ when no table is given. The search needs >= 100k configs/s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparsesearch.latency import LatencyTable  # noqa: E402

from _machine import machine_line  # noqa: E402


def rate(table: LatencyTable, n: int = 100_000, repeats: int = 5) -> tuple[float, float]:
    """(configs/s of predict_many on n random genomes (best of `repeats`), configs/s of predict)."""
    genomes = table.space.sample_genes(0, n)
    table.predict_many(genomes[:10])
    best = min(_timed(lambda: table.predict_many(genomes)) for _ in range(repeats))
    configs = [table.space.decode(g) for g in genomes[:2000]]
    single = _timed(lambda: [table.predict(c) for c in configs])
    return n / best, len(configs) / single


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[1]
    paths = [Path(p) for p in argv] or sorted(
        p for p in (root / "latency_tables").glob("*/*.json") if ".validation" not in p.name
    )
    print(machine_line())
    for path in paths:
        table = LatencyTable.load(path)
        many, single = rate(table)
        rel = path.relative_to(root) if path.is_relative_to(root) else path
        print(
            f"{rel}: predict_many {many / 1e6:.2f} M configs/s, predict {single / 1e3:.1f} k configs/s "
            f"({'meets' if many >= 1e5 else 'MISSES'} the 100k/s goal)"
        )
    return 0


if __name__ == "__main__":
    np.seterr(all="raise")
    raise SystemExit(main(sys.argv[1:]))
