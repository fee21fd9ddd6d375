"""The pruned block's path before/after a change, measured interleaved in one run: x dense latency and FLOPs.

    .venv/bin/python benchmarks/bench_pruned_path.py [--models swin_tiny_patch4_window7_224:512 swin_nano:192]
        [--kwargs '{"swin_nano": {"embed_dim": 48}}'] [--sparsity 0.5 0.7]
        [--variants padded mlp fused] [--threads 2] [--min-time 1] [--rounds 5]

Variants (class-wide switches of `SwinBlock`, all exact):
    padded: norm2 + MLP on every slot of a kept window, padding included (skip_padded_tokens = False,
        fused_pruned_path = False);
    mlp: norm2 + MLP on the real tokens only, the rest through the window ops (fused_pruned_path = False);
    fused-rescore: the whole block on the real tokens of the kept windows (`models.pruned_path`), every block
        scoring its windows from the whole map (carry_scores = False);
    fused: the same, each block scoring from the token scores the previous block carried over (the default).
Dense is timed in the same rounds; each round times every (config, variant) once, in a rotated order, and the
median over rounds is reported. A model spec is NAME:RES or NAME:RES:LABEL (LABEL selects --kwargs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparsesearch as ss  # noqa: E402
from sparsesearch.flops import count_flops  # noqa: E402
from sparsesearch.models.swin import SwinBlock  # noqa: E402

from _machine import machine_line  # noqa: E402

VARIANTS = {
    "padded": {"skip_padded_tokens": False, "fused_pruned_path": False, "carry_scores": True},
    "mlp": {"skip_padded_tokens": True, "fused_pruned_path": False, "carry_scores": True},
    "fused-rescore": {"skip_padded_tokens": True, "fused_pruned_path": True, "carry_scores": False},
    "fused": {"skip_padded_tokens": True, "fused_pruned_path": True, "carry_scores": True},
}


def _median(v: list[float]) -> float:
    return sorted(v)[len(v) // 2]


def _use(variant: str) -> None:
    for attr, value in VARIANTS[variant].items():
        setattr(SwinBlock, attr, value)


def bench(spec: str, kwargs: dict[str, Any], args: argparse.Namespace) -> list[list]:
    name, res_s, *label = spec.split(":")
    res = int(res_s)
    torch.manual_seed(0)
    model = ss.create_model(name, head=None, **kwargs.get(label[0] if label else name, {})).eval()
    x = torch.randn(1, 3, res, res)
    cfgs = {p: ss.SparsityConfig.uniform(p, model.depths, model.default_window_size) for p in [0.0, *args.sparsity]}
    runs = [(0.0, "fused")] + [(p, v) for p in args.sparsity for v in args.variants]
    times: dict[tuple[float, str], list[float]] = {r: [] for r in runs}
    with torch.inference_mode():
        for i in range(args.rounds):
            for p, v in runs[i % len(runs) :] + runs[: i % len(runs)]:
                _use(v)
                model.set_config(cfgs[p])
                model(x)
                t = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=args.threads)
                times[(p, v)].append(t.blocked_autorange(min_run_time=args.min_time).median * 1e3)
    dense = _median(times[(0.0, "fused")])
    dense_flops = None if args.no_flops else count_flops(model, res, cfgs[0.0]).total
    rows = []
    for p in args.sparsity:
        row: list = [spec, p]
        for v in args.variants:
            _use(v)
            fl = "" if dense_flops is None else f"{count_flops(model, res, cfgs[p]).total / dense_flops:.3f}"
            row += [f"{_median(times[(p, v)]) / dense:.3f}", fl]
        rows.append(row)
    _use("fused")
    print(f"# {spec}: dense {dense:.2f} ms", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["swin_tiny_patch4_window7_224:512", "swin_nano:192"])
    ap.add_argument("--kwargs", type=json.loads, default={}, help="JSON: model name or label -> create_model kwargs")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["mlp", "fused-rescore", "fused"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP counts (fvcore not installed)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.models:
        rows += bench(spec, args.kwargs, args)
    print(f"# machine: {machine_line()}, {args.threads} threads, median of {args.rounds} interleaved rounds")
    headers = ["model", "sparsity"]
    for v in args.variants:
        headers += [f"{v} x dense", f"{v} FLOPs x"]
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
