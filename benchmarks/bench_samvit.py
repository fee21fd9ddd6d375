"""Latency of a window-pruned SAM ViT image encoder at uniform sparsity, as ratios to dense measured in one run.

    .venv/bin/python benchmarks/bench_samvit.py [--model samvit_base_patch16] [--resolution 1024]
        [--sparsity 0 0.3 0.5 0.7] [--threads 2] [--rounds 2] [--repeats 1] [--flops]

A lighter sibling of bench_model.py for models whose forward takes seconds on a CPU: each round runs every config
`repeats` times after one warm-up call (configs interleaved, so drift hits them alike); the median over rounds is
reported. `--flops` adds fvcore counts (slow at 1024x1024: a traced forward per config).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparsesearch as ss  # noqa: E402
from sparsesearch.flops import count_flops  # noqa: E402

from _machine import machine_line  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="samvit_base_patch16")
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--flops", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ss.create_model(args.model, head=None, img_size=args.resolution).eval()
    x = torch.randn(1, 3, args.resolution, args.resolution)
    configs = [ss.SparsityConfig.uniform(p, model.depths, model.default_window_size) for p in args.sparsity]
    times: dict[float, list[float]] = {p: [] for p in args.sparsity}
    with torch.inference_mode():
        for cfg in configs:  # warm-up: allocator, index tables
            model(x, cfg)
        for _ in range(args.rounds):
            for p, cfg in zip(args.sparsity, configs):
                model.set_config(cfg)
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    model(x)
                    times[p].append((time.perf_counter() - t) * 1e3)
    dense = statistics.median(times[args.sparsity[0]])
    rows = []
    dense_flops = count_flops(model, args.resolution, configs[0]).total if args.flops else None
    for p, cfg in zip(args.sparsity, configs):
        ms = statistics.median(times[p])
        row = [p, f"{ms:.0f}", f"{ms / dense:.3f}"]
        if dense_flops:
            fl = count_flops(model, args.resolution, cfg).total
            row += [f"{fl / 1e9:.1f}", f"{fl / dense_flops:.3f}"]
        rows.append(row)
    print(
        f"# {args.model} backbone (neck output), {args.resolution}x{args.resolution}, batch 1, torch path (CPU), "
        f"{args.threads} threads, {args.rounds} rounds x {args.repeats}"
    )
    print(f"# machine: {machine_line()}")
    headers = ["sparsity", "ms", "x dense"] + (["GFLOPs", "FLOPs x dense"] if dense_flops else [])
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
