"""Backbone latency of a window-pruned model at uniform sparsity, as ratios to dense measured in one run.

    .venv/bin/python benchmarks/bench_model.py [--model swin_tiny_patch4_window7_224] [--model-kwargs JSON]
        [--resolution 512] [--batch 1] [--sparsity 0 0.3 0.5 0.7] [--device cpu|cuda] [--dtype fp32|fp16|bf16]
        [--backend torch triton] [--compile 0.5 [--compile-backend inductor] [--compile-dense]] [--floor]
        [--json out.json]

Any registered model (`sparsesearch models`), backbone only (head=None). Dense is the model without a config;
every other sparsity runs once per kernel backend named by --backend ("torch": the torch path, "triton": the
Triton kernels, "auto": dispatch). On CPU the configs are timed interleaved forward by forward (each pass times
every config once; --rounds x about --min-time seconds of passes), and "x dense" is the median of the per-pass
ratios to the dense forward of the same pass: a shared VM's speed drifts by +-20% over seconds (RESULTS.md,
latency tables), which that ratio cancels; "fastest" compares the fastest forwards. On CUDA, CUDA events (--warmup,
--repeats per config and round) in --rounds interleaved rounds, the median round.
--floor (Swin models) adds a "floor" row per sparsity: every pruned block replaced by the dense block run on
a strip of as many whole windows as it keeps (no scoring, selection, gather or write-back; the map passes on
unchanged), the embedding and patch merges as they are: what the same work costs the dense path on this
machine, so "pruned - floor" is the pruned path's own cost and "floor - FLOPs" the hardware's (small GEMMs,
per-op costs). Its FLOP column is the pruned config's (the strip holds whole windows, so where the pruned path
skips padded tokens the floor does a little more).
--compile P also times torch.compile of the config at sparsity P
(first call = compile time; then as above), under torch.no_grad (the in-place scatter is traced, not run).
FLOPs come from fvcore (--no-flops skips them: tracing every config costs seconds).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparsesearch as ss  # noqa: E402
from sparsesearch.models.swin import SwinBlock  # noqa: E402

from _machine import DTYPES, Timer, machine_info, machine_line  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="swin_tiny_patch4_window7_224", help="a registered model name")
    ap.add_argument(
        "--model-kwargs", type=json.loads, default={}, help="JSON keyword arguments, e.g. '{\"img_size\": 1024}'"
    )
    ap.add_argument("--resolution", default="512", help="input side N or HxW (default 512)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--backend", nargs="+", choices=["torch", "triton", "auto"], default=None,
                    help="kernel backends of the pruned configs "
                         "(default: torch triton on CUDA, torch on CPU)")  # fmt: skip
    ap.add_argument("--compile", type=float, default=None, metavar="P", help="also time torch.compile at sparsity P")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (e.g. max-autotune-no-cudagraphs)")
    ap.add_argument("--compile-dense", action="store_true",
                    help="with --compile, also compile the dense model and give compiled x compiled dense")  # fmt: skip
    ap.add_argument("--floor", action="store_true",
                    help="also time dense blocks on the kept windows' work only (Swin; see above)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--min-time", type=float, default=2.0, help="CPU: seconds per config per round")
    ap.add_argument("--warmup", type=int, default=10, help="CUDA: untimed calls per config and round")
    ap.add_argument("--repeats", type=int, default=30, help="CUDA: timed calls per config and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median round is reported")
    ap.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP counts")
    ap.add_argument("--no-malloc", action="store_true",
                    help="CPU: keep glibc malloc defaults (default: tuned as `sparsesearch profile` does)")  # fmt: skip
    ap.add_argument("--json", type=Path, help="also write the figures here (JSON)")
    args = ap.parse_args(argv)
    try:
        parts = [int(v) for v in args.resolution.lower().split("x")]
    except ValueError:
        ap.error(f"--resolution {args.resolution!r}: give N or HxW")
    args.resolution = (parts[0], parts[-1])
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.dtype = args.dtype or ("fp16" if args.device.type == "cuda" else "fp32")
    args.backend = args.backend or (["torch", "triton"] if args.device.type == "cuda" else ["torch"])
    if 0.0 not in args.sparsity:
        args.sparsity = [0.0, *args.sparsity]
    args.sparsity = sorted(set(args.sparsity))
    return args


def make_clock(args: argparse.Namespace) -> Callable[[Callable[[], object]], float]:
    """CUDA: fn -> milliseconds per call (CUDA events: --warmup, then --repeats calls)."""
    timer = Timer(args.device, args.warmup, args.repeats, use_graphs=False)
    return lambda fn: timer(fn).eager


def _floor_forward(blk: SwinBlock) -> Callable[..., torch.Tensor]:
    """A stand-in for `blk.forward` that does the work of its kept windows on the dense path: the dense block on
    a (B, wh, k*ww, C) strip (k = the windows it keeps; a view of the map's first rows when they suffice), output
    discarded, the map returned unchanged. A shifted block keeps its map's shift on the strip (a roll along both
    dimensions and a shift mask in every window; `WindowGeometry.create` on the strip itself would drop the shift
    along its height, which is one window, and at k = 1 along both)."""

    def forward(x: torch.Tensor, owns_input: bool = False, carry: Any = None) -> torch.Tensor:
        B, H, W, C = x.shape
        g = blk.geometry(H, W)
        k = ss.ops.keep_count(blk.sparsity, g.num_windows) if blk.sparsity > 0 else g.num_windows
        if k == g.num_windows:
            return blk._forward_dense(x, g)
        n = B * g.wh * k * g.ww
        flat = x.reshape(-1, C)
        strip = (flat[:n] if n <= flat.shape[0] else flat.new_zeros(n, C)).view(B, g.wh, k * g.ww, C)
        blk._forward_dense(strip, ss.ops.WindowGeometry(g.wh, k * g.ww, g.wh, g.ww, g.sh, g.sw))
        return x

    return forward


def _set_floor(model: Any, on: bool) -> None:
    """Swap every Swin block's forward for `_floor_forward` (on) or back to the class's (off)."""
    for blk in model.modules():
        if isinstance(blk, SwinBlock):
            if on:
                blk.forward = _floor_forward(blk)  # type: ignore[method-assign]
            else:
                blk.__dict__.pop("forward", None)


def _setups(model: Any, runs: list[tuple[float, str]]) -> list[Callable[[], None]]:
    def setup(p: float, path: str) -> None:
        cfg = None if path == "dense" else model.uniform_config(p)
        model.set_config(cfg)
        model.set_kernel_backend(None if path in ("dense", "auto", "floor") else path)
        _set_floor(model, path == "floor")

    return [functools.partial(setup, p, path) for p, path in runs]


def interleaved(
    runs: list[tuple[Callable[[], object], Callable[[], object]]], args: argparse.Namespace
) -> list[list[float]]:
    """(setup, forward) pairs -> per-run lists of ms, one per pass: every pass runs each setup, an untimed forward
    and a timed one, run after run; --rounds x about --min-time seconds of passes. The caller picks the grad mode.

    Interleaved forward by forward, so a ratio of two runs' samples of the same pass compares two forwards a few
    milliseconds apart: this VM's speed drifts by +-20% over seconds (RESULTS.md, latency tables), which blocks of
    calls per config (even in interleaved rounds) put into the ratios. Each timed forward follows an untimed one of
    its own: right after another config a forward runs 2-9% slower, dense more than sparse (RESULTS.md, latency tables),
    and a deployed model repeats its config.
    """
    for setup, forward in runs:
        setup()
        for _ in range(2):
            forward()
    t0 = time.perf_counter()
    runs[-1][1]()
    passes = max(5, math.ceil(args.min_time / (2 * (time.perf_counter() - t0))))
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(args.rounds * passes):
        for (setup, forward), got in zip(runs, samples):
            setup()
            forward()  # untimed: the timed forward follows one of its own config, as in deployment
            t0 = time.perf_counter_ns()
            forward()
            got.append((time.perf_counter_ns() - t0) / 1e6)
    return samples


def ratio(a: list[float], b: list[float]) -> float:
    """Median of the per-pass ratios of two runs of `interleaved`."""
    return statistics.median(x / y for x, y in zip(a, b))


def time_configs_cpu(model: Any, x: torch.Tensor, runs: list[tuple[float, str]], args: argparse.Namespace) -> dict:
    """(sparsity, path) -> (ms, x dense, fastest x dense), configs interleaved forward by forward (`interleaved`).
    ms and x dense are medians over all passes (x dense: of the per-pass ratios); "fastest" is fastest over
    fastest."""
    with torch.inference_mode():
        samples = interleaved([(setup, lambda: model(x)) for setup in _setups(model, runs)], args)
    model.set_config(None)
    model.set_kernel_backend(None)
    _set_floor(model, False)
    dense = samples[runs.index((0.0, "dense"))]
    return {r: (statistics.median(got), ratio(got, dense), min(got) / min(dense)) for r, got in zip(runs, samples)}


def time_configs(model: Any, x: torch.Tensor, runs: list[tuple[float, str]], clock: Callable, rounds: int) -> dict:
    """CUDA: (sparsity, path) -> (ms, x dense, fastest x dense), configs interleaved in rounds of CUDA-event
    timings; the median round."""
    times: dict[tuple[float, str], list[float]] = {r: [] for r in runs}
    with torch.inference_mode():
        for _ in range(rounds):  # interleave configs so drift hits all of them alike
            for setup, r in zip(_setups(model, runs), runs):
                setup()
                times[r].append(clock(lambda: model(x)))
    model.set_config(None)
    model.set_kernel_backend(None)
    ms = {r: statistics.median(v) for r, v in times.items()}
    dense = ms[0.0, "dense"]
    return {r: (v, v / dense, min(times[r]) / min(times[0.0, "dense"])) for r, v in ms.items()}


def time_compiled(model: Any, x: torch.Tensor, p: float, args: argparse.Namespace, clock: Callable) -> dict[str, Any]:
    """torch.compile of the model at uniform sparsity p: compile seconds, compiled and eager ms; with
    --compile-dense the dense model compiled too. On CPU every forward is timed interleaved (`interleaved`: the
    compiled and eager models, sparse and dense), on CUDA in alternating rounds of the CUDA-event clock."""
    model.set_config(model.uniform_config(p))
    model.set_kernel_backend(None)
    compiled = torch.compile(model, backend=args.compile_backend, mode=args.compile_mode)
    with torch.no_grad():
        compile_s = _first_call_s(compiled, x)
        diff = (compiled(x).float() - model(x).float()).abs()
        dense = _compiled_dense(model, x, args) if args.compile_dense else None
        fns = [compiled, model, *(dense[:2] if dense else [])]
        if x.is_cuda:
            times = [[clock(lambda f=f: f(x)) for f in fns] for _ in range(args.rounds)]  # type: ignore[misc]
            samples = [list(col) for col in zip(*times)]
        else:
            samples = interleaved([(_nothing, lambda f=f: f(x)) for f in fns], args)  # type: ignore[misc]
    model.set_config(None)
    ms = [statistics.median(got) for got in samples]
    # fused kernels round differently; a window kept by one and not the other (near-tied scores) shows as a
    # large max with a small mean
    out = {"sparsity": p, "backend": args.compile_backend, "mode": args.compile_mode, "compile_s": compile_s,
           "compiled_ms": ms[0], "eager_ms": ms[1], "speedup": ratio(samples[1], samples[0]),
           "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
           "matches_eager": bool(float(diff.mean()) <= 2e-2)}  # fmt: skip
    if dense:
        out.update(dense_compile_s=dense[2], compiled_dense_ms=ms[2], eager_dense_ms=ms[3],
                   compiled_x_compiled_dense=ratio(samples[0], samples[2]),
                   eager_x_eager_dense=ratio(samples[1], samples[3]),
                   compiled_dense_speedup=ratio(samples[3], samples[2]))  # fmt: skip
    return out


def _nothing() -> None:
    return None


def _first_call_s(fn: Callable, x: torch.Tensor) -> float:
    """Seconds of fn(x), CUDA synchronised: a compiled function's first call compiles it."""
    t0 = time.perf_counter()
    fn(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _compiled_dense(model: Any, x: torch.Tensor, args: argparse.Namespace) -> list:
    """[compiled dense, eager dense, compile seconds]: a dense copy of the model (switching one compiled module's
    config would recompile it), compiled."""
    dense = copy.deepcopy(model)
    dense.set_config(None)
    compiled_dense = torch.compile(dense, backend=args.compile_backend, mode=args.compile_mode)
    return [compiled_dense, dense, _first_call_s(compiled_dense, x)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = None if args.no_malloc or args.device.type != "cpu" else ss.latency.tune_malloc()
    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    model = ss.create_model(args.model, head=None, **args.model_kwargs).eval().to(device=args.device, dtype=dtype)
    x = torch.randn(args.batch, 3, *args.resolution, device=args.device).to(dtype)
    if args.floor and not any(isinstance(m, SwinBlock) for m in model.modules()):
        sys.exit(f"--floor: {args.model} has no Swin blocks; the floor row exists for Swin models only")
    extra = ["floor"] if args.floor else []
    runs = [(p, path) for p in args.sparsity for path in (["dense"] if p == 0 else args.backend + extra)]
    clock = make_clock(args) if args.device.type == "cuda" else None
    if args.device.type == "cpu":
        timed = time_configs_cpu(model, x, runs, args)
    else:
        timed = time_configs(model, x, runs, clock, args.rounds)
    ms = {r: v[0] for r, v in timed.items()}
    dense_ms = ms[0.0, "dense"]
    flops: dict[float, float] = {}
    if not args.no_flops:
        from sparsesearch.flops import count_flops  # noqa: PLC0415

        for p in args.sparsity:
            cfg = model.uniform_config(p)
            flops[p] = count_flops(model, args.resolution, cfg, batch=args.batch).total
    rows, records = [], []
    for p, path in runs:
        rec = {"sparsity": p, "path": path, "ms": ms[p, path], "x_dense": timed[p, path][1],
               "fastest_x_dense": timed[p, path][2]}  # fmt: skip
        if flops:
            rec.update(gflops=flops[p] / 1e9, flops_x_dense=flops[p] / flops[0.0])
        records.append(rec)
        rows.append([p, path, f"{rec['ms']:.2f}", f"{rec['x_dense']:.3f}", f"{rec['fastest_x_dense']:.3f}",
                     f"{rec['gflops']:.1f}" if flops else "",
                     f"{rec['flops_x_dense']:.3f}" if flops else ""])  # fmt: skip
    res = "x".join(map(str, args.resolution))
    if args.device.type == "cuda":
        clock_name = f"CUDA events, median of {args.rounds} interleaved rounds"
    else:
        clock_name = "perf_counter, configs interleaved forward by forward, each after an untimed one of its own"
    print(f"# {args.model} backbone, {res}, batch {args.batch}, {args.dtype} on {args.device.type} ({clock_name})")
    print(f"# machine: {machine_line()}; malloc: {malloc or 'default'}")
    headers = ["sparsity", "path", "ms", "x dense", "x dense (fastest)", "GFLOPs", "FLOPs x dense"]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    compiled = None
    if args.compile is not None:
        compiled = time_compiled(model, x, args.compile, args, clock)
        print(f"\n# torch.compile ({args.compile_backend}) at uniform {args.compile}: "
              f"compile {compiled['compile_s']:.1f} s, "
              f"{compiled['compiled_ms']:.2f} ms vs eager {compiled['eager_ms']:.2f} ms "
              f"({compiled['speedup']:.2f}x; {compiled['compiled_ms'] / dense_ms:.3f}x eager dense); "
              f"outputs vs eager: mean |diff| {compiled['mean_abs_diff']:.2e}, "
              f"max {compiled['max_abs_diff']:.2e}")  # fmt: skip
        if args.compile_dense:
            print(f"# compiled dense: compile {compiled['dense_compile_s']:.1f} s, "
                  f"{compiled['compiled_dense_ms']:.2f} ms vs eager {compiled['eager_dense_ms']:.2f} ms "
                  f"({compiled['compiled_dense_speedup']:.2f}x); x dense at {args.compile}: compiled / compiled "
                  f"dense {compiled['compiled_x_compiled_dense']:.3f}, eager / eager dense "
                  f"{compiled['eager_x_eager_dense']:.3f} (the four interleaved)")  # fmt: skip
    if args.json:
        out = {"machine": machine_info(), "model": args.model, "model_kwargs": args.model_kwargs,
               "resolution": list(args.resolution), "batch": args.batch, "device": args.device.type,
               "dtype": args.dtype, "clock": clock_name, "malloc": malloc,
               "rows": records, "compile": compiled}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
