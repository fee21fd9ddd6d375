"""Per-block time of a pruned Swin model against the dense one on the same work, as ratios measured in one run.

    .venv/bin/python benchmarks/bench_blocks.py [--model swin_nano] [--model-kwargs JSON] [--resolution 256]
        [--sparsity 0.5] [--threads 2] [--passes 60]

Four forwards, interleaved forward by forward (each timed forward after an untimed one of its own; tuned
allocator), timed per part with forward hooks (embedding, each patch merge, each block):
  dense   the model without a config, on the full image;
  half    the dense model on an image whose width is (1 - sparsity) of it: each stage's map keeps that share of
          its windows (exact when the widths tile; FLOPs (1 - p)x);
  pruned  the model at uniform sparsity p;
  fixed   the same, each block's kept windows chosen once and reused: no scoring and no selection, the gather,
          attention, MLP and write-back as in `pruned`.
Printed: the dense ms of each part and each variant's median per-pass ratio to it. "pruned - fixed" is the cost of
choosing the windows, "fixed - half" the cost of gathering and writing back, "half - (1 - p)" the dense path's own
scaling on this machine (RESULTS.md, speed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparsesearch as ss  # noqa: E402
from sparsesearch import ops  # noqa: E402
from sparsesearch.models.pruned_path import fused_pruned_forward, kept_tokens, token_scores, window_scores  # noqa: E402
from sparsesearch.models.swin import SwinBlock  # noqa: E402

from _machine import machine_line  # noqa: E402

VARIANTS = ("dense", "half", "pruned", "fixed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="swin_nano")
    ap.add_argument("--model-kwargs", type=json.loads,
                    default={"embed_dim": 48, "window_size": [8, 8, 8, 4], "num_heads": [2, 4, 8, 16]})  # fmt: skip
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=60)
    args = ap.parse_args(argv)
    if not 0.0 < args.sparsity < 1.0:
        ap.error(f"--sparsity {args.sparsity}: give a value in (0, 1)")
    return args


def fixed_windows(blk: SwinBlock) -> Callable[..., torch.Tensor]:
    """A stand-in for `blk._forward_fused` that scores and selects once, then reuses those windows."""
    kept: dict[tuple[int, ...], tuple[torch.Tensor, Any, Any]] = {}

    def forward(x: torch.Tensor, g: ops.WindowGeometry, k: int, owns_input: bool, carry: Any) -> torch.Tensor:
        key = tuple(x.shape)
        if key not in kept:
            idx = ops.select_windows(window_scores(token_scores(x).reshape(x.shape[0], -1), g), k)
            kept[key] = (idx, ops.shift_mask(g, x.device), kept_tokens(g, idx))
        idx, mask, kt = kept[key]
        rows = idx.reshape(-1)
        if carry is not None:
            carry.set(None, None)
        return fused_pruned_forward(x, g, kt, blk, lambda y: blk.attn(y, g.wh, g.ww, mask, rows), owns_input)

    return forward


def hook_parts(model: Any, into: dict[str, float]) -> list[str]:
    """Time the embedding, each merge and each block of `model` into `into` (name -> seconds); the names."""
    parts: dict[str, torch.nn.Module] = {"embed": model.patch_embed}
    for i, stage in enumerate(model.stages):
        if not isinstance(stage.downsample, torch.nn.Identity):
            parts[f"merge {i}"] = stage.downsample
        for j, blk in enumerate(stage.blocks):
            parts[f"stage {i + 1} block {j}"] = blk
    start: dict[str, float] = {}
    for name, mod in parts.items():
        mod.register_forward_pre_hook(lambda m, a, n=name: start.__setitem__(n, time.perf_counter()))
        mod.register_forward_hook(lambda m, a, o, n=name: into.__setitem__(n, time.perf_counter() - start[n]))
    return list(parts)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    malloc = ss.latency.tune_malloc()
    torch.manual_seed(0)
    model = ss.create_model(args.model, head=None, **args.model_kwargs).eval()
    blocks = [m for m in model.modules() if isinstance(m, SwinBlock)]
    if not blocks:
        sys.exit(f"{args.model} has no Swin blocks: this benchmark times Swin models only")
    fixed = {id(b): fixed_windows(b) for b in blocks}
    cfg = model.uniform_config(args.sparsity)
    R = args.resolution
    images = {"full": torch.randn(1, 3, R, R), "half": torch.randn(1, 3, R, round(R * (1 - args.sparsity)))}
    timed: dict[str, float] = {}
    names = hook_parts(model, timed)

    def run(variant: str) -> dict[str, float]:
        model.set_config(None if variant in ("dense", "half") else cfg)
        for b in blocks:
            if variant == "fixed":
                b._forward_fused = fixed[id(b)]  # type: ignore[method-assign]
            else:
                b.__dict__.pop("_forward_fused", None)
        x = images["half" if variant == "half" else "full"]
        model(x)  # untimed: the timed forward follows one of its own
        t0 = time.perf_counter()
        model(x)
        return dict(timed, total=time.perf_counter() - t0)

    samples: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    with torch.inference_mode():
        for i in range(args.passes):
            for v in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
                samples[v].append(run(v))
    rows = []
    for n in [*names, "total"]:
        dense = [s[n] for s in samples["dense"]]
        ratios = [statistics.median(s[n] / d for s, d in zip(samples[v], dense)) for v in VARIANTS[1:]]
        rows.append([n, f"{statistics.median(dense) * 1e3:.3f}", *(f"{r:.3f}" for r in ratios)])
    print(f"# {args.model} {json.dumps(args.model_kwargs)} at {R}x{R}, uniform {args.sparsity}, batch 1, fp32 CPU, "
          f"{args.passes} passes; x dense per part (median of per-pass ratios)")  # fmt: skip
    print(f"# machine: {machine_line()}; malloc: {malloc or 'default'}")
    print(tabulate(rows, headers=["part", "dense ms", *VARIANTS[1:]], tablefmt="github"))


if __name__ == "__main__":
    main()
