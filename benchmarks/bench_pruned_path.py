"""The pruned block's path before/after a change, measured interleaved in one run: x dense latency and FLOPs.

    .venv/bin/python benchmarks/bench_pruned_path.py [--models swin_tiny_patch4_window7_224:512 swin_nano:192]
        [--sparsity 0.3 0.5 0.7] [--threads 2] [--min-time 1] [--rounds 5]

"before" runs norm2 + MLP on every position of a kept window, padding included (SwinBlock.skip_padded_tokens =
False); "after" runs them on the real tokens only. Dense is timed in the same rounds; each round times every
(config, variant) once, in a rotated order, and the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tabulate import tabulate
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparsesearch as ss  # noqa: E402
from sparsesearch.flops import count_flops  # noqa: E402
from sparsesearch.models.swin import SwinBlock  # noqa: E402

from _machine import machine_line  # noqa: E402


def _median(v: list[float]) -> float:
    return sorted(v)[len(v) // 2]


def bench(name: str, res: int, sparsities: list[float], threads: int, min_time: float, rounds: int) -> list[list]:
    torch.manual_seed(0)
    model = ss.create_model(name, head=None).eval()
    x = torch.randn(1, 3, res, res)
    cfgs = {p: ss.SparsityConfig.uniform(p, model.depths, model.default_window_size) for p in [0.0, *sparsities]}
    runs = [(0.0, True)] + [(p, skip) for p in sparsities for skip in (False, True)]
    times: dict[tuple[float, bool], list[float]] = {r: [] for r in runs}
    with torch.inference_mode():
        for i in range(rounds):
            for p, skip in runs[i % len(runs) :] + runs[: i % len(runs)]:
                SwinBlock.skip_padded_tokens = skip
                model.set_config(cfgs[p])
                model(x)
                t = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=threads)
                times[(p, skip)].append(t.blocked_autorange(min_run_time=min_time).median * 1e3)
    dense = _median(times[(0.0, True)])
    rows = []
    for p in sparsities:
        row: list = [f"{name} @{res}", p]
        for skip in (False, True):
            SwinBlock.skip_padded_tokens = skip
            fl = count_flops(model, res, cfgs[p]).total / count_flops(model, res, cfgs[0.0]).total
            row += [f"{_median(times[(p, skip)]) / dense:.3f}", f"{fl:.3f}"]
        rows.append(row)
    SwinBlock.skip_padded_tokens = True
    print(f"# {name} @{res}: dense {dense:.2f} ms", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["swin_tiny_patch4_window7_224:512", "swin_nano:192"])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.models:
        name, res = spec.split(":")
        rows += bench(name, int(res), args.sparsity, args.threads, args.min_time, args.rounds)
    print(f"# machine: {machine_line()}, {args.threads} threads, median of {args.rounds} interleaved rounds")
    print(
        tabulate(
            rows,
            headers=["model", "sparsity", "before x dense", "before FLOPs x", "after x dense", "after FLOPs x"],
            tablefmt="github",
        )
    )


if __name__ == "__main__":
    main()
