"""Backbone latency of a window-pruned Swin at uniform sparsity, as ratios to dense measured in one run.

    .venv/bin/python benchmarks/bench_model.py [--model swin_tiny_patch4_window7_224] [--resolution 512]
        [--sparsity 0 0.3 0.5 0.7] [--threads N] [--batch 1] [--min-time 2]

Each config is timed with torch.utils.benchmark (interleaved rounds, median), FLOPs with fvcore.
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

from _machine import machine_line  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="swin_tiny_patch4_window7_224")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per config per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median round is reported")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ss.create_model(args.model, head=None).eval()
    x = torch.randn(args.batch, 3, args.resolution, args.resolution)
    configs = [ss.SparsityConfig.uniform(p, model.depths, model.default_window_size) for p in args.sparsity]
    times: dict[float, list[float]] = {p: [] for p in args.sparsity}
    with torch.inference_mode():
        for _ in range(args.rounds):  # interleave configs so drift hits all of them alike
            for p, cfg in zip(args.sparsity, configs):
                model.set_config(cfg)
                model(x)
                t = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=args.threads)
                times[p].append(t.blocked_autorange(min_run_time=args.min_time).median * 1e3)
    dense_ms = sorted(times[args.sparsity[0]])[len(times[args.sparsity[0]]) // 2]
    dense_flops = count_flops(model, args.resolution, configs[0]).total
    rows = []
    for p, cfg in zip(args.sparsity, configs):
        ms = sorted(times[p])[len(times[p]) // 2]
        fl = count_flops(model, args.resolution, cfg).total
        rows.append([p, f"{ms:.1f}", f"{ms / dense_ms:.3f}", f"{fl / 1e9:.2f}", f"{fl / dense_flops:.3f}"])
    print(f"# {args.model} backbone, {args.resolution}x{args.resolution}, batch {args.batch}, torch path (CPU)")
    print(f"# machine: {machine_line()}")
    print(tabulate(rows, headers=["sparsity", "ms", "x dense", "GFLOPs", "FLOPs x dense"], tablefmt="github"))


if __name__ == "__main__":
    main()
