"""Window-op kernels (Triton vs the torch path) and the pruned swin_tiny backbone, as ratios measured in one run.

    .venv/bin/python benchmarks/bench_kernels.py [--resolution 1024] [--batch 1 4 8] [--keep-sparsity 0.5]
        [--sparsity 0 0.3 0.5 0.7] [--backbone-batch 1 4] [--dtype fp16] [--warmup 10] [--repeats 30]
        [--threads N] [--skip-ops] [--skip-backbone]

On CUDA, for every Swin-T stage shape at the given resolution (stage i: H = W = resolution / 2^(i+2),
C = 96 * 2^i, window 7, unshifted and shifted) and batch:
  - score + gather (k kept windows at --keep-sparsity) and scatter (out of place, and in place), Triton vs the
    torch path (ratio torch / Triton: above 1 means Triton is faster);
  - the bytes each op must move at least, divided by its time (GB/s), and that as a fraction of the device's
    device-to-device copy bandwidth (x.copy_(y) of a 512 MiB buffer, measured in this run).
  Times are medians of CUDA-event-timed repeats after warm-up. "graph" times replay the ops captured in a CUDA
  graph (GPU time only, no Python or launch overhead: the figure the bandwidth is computed from); "eager" times
  call them from Python one at a time, as a model forward does.
and the whole swin_tiny backbone (head=None) at uniform sparsity: Triton kernels vs torch path vs dense.

Without CUDA it says so, measures the torch path only, on small shapes (resolution 256 unless given), so the
script stays checkable on a CPU machine; `TRITON_INTERPRET=1 ... --triton-on-cpu --resolution 64` also runs the
comparison code with interpreted kernels (meaningless times; for checking the script).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparsesearch as ss  # noqa: E402
from sparsesearch import ops  # noqa: E402
from sparsesearch.ops import WindowGeometry, keep_count  # noqa: E402

from _machine import DTYPES, Timer, Timing, machine_info, machine_line  # noqa: E402


def copy_bandwidth(device: torch.device, timer: Timer, mib: int) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written per second) of a `mib` MiB buffer."""
    n = mib * 2**20 // 2
    src = torch.randn(n, device=device).to(torch.float16) if device.type == "cuda" else torch.randn(n).half()
    dst = torch.empty_like(src)
    t = timer(lambda: dst.copy_(src), inner=5)
    return 2 * src.numel() * src.element_size() / (t.best * 1e-3) / 1e9


def _score_gather(x: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry, backend: str) -> torch.Tensor:
    """Score the windows of x (B, H, W, C), then gather the windows `idx`: what the pruned block runs first."""
    ops.score_windows(x, geom, backend)
    return ops.gather_windows(x, idx, geom, backend)


def _fmt(ms: float | None) -> str:
    if ms is None:
        return "n/a"
    return f"{ms * 1e3:.1f}us" if ms < 1 else f"{ms:.3f}ms"


def bench_ops(
    args: argparse.Namespace, device: torch.device, timer: Timer, copy_gbs: float, records: list[dict[str, Any]]
) -> None:
    """Print the three op tables; append one record per (shape, op) to `records` (times in ms)."""
    dtype = DTYPES[args.dtype]
    es = torch.tensor([], dtype=dtype).element_size()
    compare = device.type == "cuda" or args.triton_on_cpu
    backends = ["torch", "triton"] if compare else ["torch"]
    tables: dict[str, list[list[object]]] = {"sg": [], "scatter": [], "inplace": []}
    for stage in args.stages:
        side = args.resolution // 2 ** (stage + 2)
        C = 96 * 2**stage
        for shifted in (False, True):
            geom = WindowGeometry.create(side, side, 7, shifted)
            k = keep_count(args.keep_sparsity, geom.num_windows)
            for B in args.batch:
                gen = torch.Generator(device=device).manual_seed(stage * 100 + B)
                x = torch.randn(B, side, side, C, device=device, generator=gen).to(dtype)
                idx = ops.select_windows(ops.score_windows(x, geom, "torch"), k)
                kept_valid = int((ops.token_index(geom, device)[idx] < side * side).sum())
                win = torch.randn(B * k, geom.window_area, C, device=device, generator=gen).to(dtype)
                bytes_score_gather = (B * side * side * C + kept_valid * C + B * k * geom.window_area * C) * es
                bytes_scatter = 2 * B * side * side * C * es
                bytes_inplace = 2 * kept_valid * C * es
                t: dict[tuple[str, str], Timing] = {}
                with torch.inference_mode():
                    for be in backends:
                        y = x.clone()
                        # the timer calls each function right away: binding the loop's values is for clarity
                        t["sg", be] = timer(functools.partial(_score_gather, x, idx, geom, be))
                        t["scatter", be] = timer(functools.partial(ops.scatter_windows, x, win, idx, geom, be))
                        t["inplace", be] = timer(
                            functools.partial(ops.scatter_windows, y, win, idx, geom, be, inplace=True)
                        )
                shape = [stage, f"{side}x{side}x{C}", "s" if shifted else "-", B, f"{k}/{geom.num_windows}"]
                for op, nbytes in (("sg", bytes_score_gather), ("scatter", bytes_scatter), ("inplace", bytes_inplace)):
                    tt = t[op, "torch"]
                    rec: dict[str, Any] = {
                        "op": op, "stage": stage, "side": side, "C": C, "shifted": shifted, "batch": B, "k": k,
                        "num_windows": geom.num_windows, "bytes": nbytes, "torch_ms": tt.best,
                        "torch_eager_ms": tt.eager,
                    }  # fmt: skip
                    records.append(rec)
                    if not compare:
                        tables[op].append(shape + [_fmt(tt.best), f"{nbytes / (tt.best * 1e-3) / 1e9:.1f}"])
                        continue
                    tr = t[op, "triton"]
                    gbs = nbytes / (tr.best * 1e-3) / 1e9
                    rec.update(triton_ms=tr.best, triton_eager_ms=tr.eager, speedup=tt.best / tr.best,
                               speedup_eager=tt.eager / tr.eager, gbs=gbs, copy_fraction=gbs / copy_gbs)  # fmt: skip
                    row = shape + [_fmt(tt.best), _fmt(tr.best), f"{tt.best / tr.best:.2f}", _fmt(tt.eager),
                                   _fmt(tr.eager), f"{tt.eager / tr.eager:.2f}", f"{gbs:.0f}",
                                   f"{gbs / copy_gbs:.0%}"]  # fmt: skip
                    if op == "inplace":
                        row.append(f"{t['scatter', 'torch'].best / tr.best:.2f}")
                    tables[op].append(row)
    titles = {
        "sg": "score + gather (one read of x; the kept windows written once)",
        "scatter": "scatter, out of place (every token written once)",
        "inplace": "scatter, in place (only the kept tokens are touched)",
    }
    common = f"{args.dtype}, {args.resolution}x{args.resolution} input, window 7, k at sparsity {args.keep_sparsity}"
    if compare:
        clock = "CUDA-graph replay" if timer.use_graphs else "eager"
        print(f"\n# window ops, {common}. Times per call, median; 'torch'/'Triton': {clock} times; x = torch / "
              "Triton (> 1: Triton faster); GB/s: minimum bytes the op must move / Triton's time; '% copy': of the "
              f"{copy_gbs:.0f} GB/s device copy bandwidth")  # fmt: skip
        head = ["st", "map", "shift", "B", "k/nW", "torch", "Triton", "x", "torch eager", "Triton eager", "x eager",
                "GB/s", "% copy"]  # fmt: skip
    else:
        print(f"\n# window ops, torch path only (no GPU), {common}")
        head = ["st", "map", "shift", "B", "k/nW", "torch", "GB/s"]
    for op, rows in tables.items():
        print(f"\n## {titles[op]}")
        extra = ["x vs torch out of place"] if compare and op == "inplace" else []
        print(tabulate(rows, headers=head + extra, tablefmt="github"))


def bench_backbone(args: argparse.Namespace, device: torch.device, timer: Timer, records: list[dict[str, Any]]) -> None:
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    model = ss.create_model("swin_tiny_patch4_window7_224", head=None).eval().to(device=device, dtype=dtype)
    compare = device.type == "cuda" or args.triton_on_cpu
    backends = ["triton", "torch"] if compare else ["torch"]
    rows = []
    for B in args.backbone_batch:
        x = torch.randn(B, 3, args.resolution, args.resolution, device=device).to(dtype)
        times: dict[tuple[float, str], Timing] = {}
        with torch.inference_mode():
            for p in args.sparsity:
                model.set_config(ss.SparsityConfig.uniform(p, model.depths))
                for be in ["dense"] if p == 0 else backends:
                    model.set_kernel_backend(None if be == "dense" else be)
                    times[p, be] = timer(functools.partial(model, x), inner=1)
        dense = times[args.sparsity[0], "dense"] if args.sparsity[0] == 0 else None
        for p in args.sparsity:
            if p == 0:
                t = times[p, "dense"]
                rows.append([B, p, "dense", _fmt(t.eager), _fmt(t.graph), "1.000", "", ""])
                continue
            for be in backends:
                t = times[p, be]
                records.append({"batch": B, "sparsity": p, "path": be, "eager_ms": t.eager, "graph_ms": t.graph,
                                "x_dense": t.eager / dense.eager if dense else None})  # fmt: skip
                vs_dense = f"{t.eager / dense.eager:.3f}" if dense else ""
                vs_dense_g = f"{t.graph / dense.graph:.3f}" if dense and t.graph and dense.graph else ""
                vs_torch = f"{times[p, 'torch'].eager / t.eager:.2f}" if be == "triton" else ""
                rows.append([B, p, be, _fmt(t.eager), _fmt(t.graph), vs_dense, vs_dense_g, vs_torch])
    model.set_config(None)
    what = "Triton kernels vs torch path vs dense" if compare else "torch path vs dense (no GPU)"
    print(f"\n## swin_tiny backbone, {args.resolution}x{args.resolution}, {args.dtype}, uniform sparsity: {what}")
    print("x dense: latency / dense latency (eager, and CUDA-graph replay); x torch: torch path / Triton (eager)")
    head = ["B", "sparsity", "path", "eager", "graph", "x dense", "x dense (graph)", "x torch"]
    print(tabulate(rows, headers=head, tablefmt="github"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=None, help="input side (default 1024 on CUDA, 256 on CPU)")
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="batches of the op table (1 4 8; CPU: 1)")
    ap.add_argument("--keep-sparsity", type=float, default=0.5, help="sparsity giving k in the op table")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    ap.add_argument("--backbone-batch", type=int, nargs="+", default=None, help="(1 4; CPU: 1)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=None, help="default 30 on CUDA, 5 on CPU")
    ap.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph timings")
    ap.add_argument("--copy-mib", type=int, default=512, help="buffer size of the copy-bandwidth reference")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument(
        "--stages", type=int, nargs="+", choices=range(4), default=[0, 1, 2, 3], help="stages of the op table"
    )
    ap.add_argument("--skip-ops", action="store_true")
    ap.add_argument("--skip-backbone", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures here (JSON)")
    ap.add_argument("--triton-on-cpu", action="store_true",
                    help="without a GPU, also run the Triton kernels (TRITON_INTERPRET=1): checks this script's "
                         "comparison code; the times are meaningless")  # fmt: skip
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    args.resolution = args.resolution or (1024 if cuda else 256)
    args.batch = args.batch or ([1, 4, 8] if cuda else [1])
    args.backbone_batch = args.backbone_batch or ([1, 4] if cuda else [1])
    args.dtype = args.dtype or ("fp16" if cuda else "fp32")
    args.repeats = args.repeats or (30 if cuda else 5)
    if not cuda:
        args.warmup = min(args.warmup, 2)
        args.copy_mib = min(args.copy_mib, 128)
    if args.resolution % 32:
        ap.error("--resolution must be a multiple of 32 (patch 4, three 2x merges)")
    if 0.0 not in args.sparsity:
        args.sparsity = [0.0, *args.sparsity]
    args.sparsity = sorted(set(args.sparsity))

    print(f"# machine: {machine_line()}")
    if cuda:
        prop = torch.cuda.get_device_properties(device)
        print(f"# GPU: {prop.name}, {prop.total_memory / 2**30:.0f} GiB, {prop.multi_processor_count} SMs")
        if ops.resolve_backend(torch.zeros(1, 1, 1, 1, device=device, dtype=DTYPES[args.dtype])) != "triton":
            print("# WARNING: the Triton kernels are not usable here: only the torch path can be compared")
    elif args.triton_on_cpu:
        if ops.resolve_backend(torch.zeros(1, 1, 1, 1), "triton") != "triton":  # raises unless interpreted
            ap.error("--triton-on-cpu needs TRITON_INTERPRET=1")
        print("# No CUDA device: Triton kernels INTERPRETED on CPU to check this script; the times mean nothing.")
    else:
        print("# No CUDA device: this run measured the torch path only (the Triton kernels need a GPU; "
              "the interpreter is for tests, not timing), "
              f"on small shapes ({args.resolution}x{args.resolution}).")  # fmt: skip
    timer = Timer(device, args.warmup, args.repeats, use_graphs=not args.no_graphs)
    copy_gbs = copy_bandwidth(device, timer, args.copy_mib)
    print(f"# device-to-device copy bandwidth: {copy_gbs:.0f} GB/s (read + write, {args.copy_mib} MiB, this run)")
    ops_rec: list[dict[str, Any]] = []
    backbone_rec: list[dict[str, Any]] = []
    if not args.skip_ops:
        bench_ops(args, device, timer, copy_gbs, ops_rec)
    if not args.skip_backbone:
        bench_backbone(args, device, timer, backbone_rec)
    if args.json:
        result = {"machine": machine_info(), "device": device.type, "dtype": args.dtype, "resolution": args.resolution,
                  "keep_sparsity": args.keep_sparsity, "copy_gbs": copy_gbs, "graphs": timer.use_graphs,
                  "triton_interpreted": device.type != "cuda" and args.triton_on_cpu, "ops": ops_rec,
                  "backbone": backbone_rec, "graph_failures": timer.graph_failures}  # fmt: skip
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if timer.graph_failures:
        print(f"\n# CUDA-graph capture failed {len(timer.graph_failures)} time(s), eager times used there; first: "
              f"{timer.graph_failures[0]}")  # fmt: skip


if __name__ == "__main__":
    main()
