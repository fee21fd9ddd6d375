"""torch eager vs ONNX Runtime (fp32 and dynamic int8) of the exported models, dense vs pruned, in one table.

    .venv/bin/python benchmarks/bench_onnx.py [--model demo demo_backbone swin_t_512 samvit_nano]
        [--sparsity 0.5 0.7] [--config best.json] [--threads 1 2] [--isolate process|passive] [--ort-spin]
        [--rounds 3] [--min-time 1.0] [--repeat 1] [--no-int8] [--no-malloc] [--json out.json]

Models (--model): "demo" is the demo space's model (search_spaces/demo.yaml: swin_nano, embed 48, windows 8/8/8/4,
FPN segmentation head, 4 classes) at 256x256, "demo_backbone" the same model without its head; "swin_t_512" the
Swin-T backbone at 512x512; "samvit_nano" the samvit_nano backbone at 192x192. Weights are random (seed 0): the kept
windows follow the input, not the weights, so the work per config is what a trained model does. Configs: dense,
uniform --sparsity (the demo's with its space's windows 8/8/8/4, the others with the model's default windows), and
with --config a config file (e.g. a search's best.json) on the models it fits, at its own resolution when it carries
one. Each worker tunes glibc malloc as `sparsesearch profile` does (--no-malloc keeps the defaults): with the
defaults, torch's large activations are fresh mmaps page-faulted in every forward, which ONNX Runtime's arena
never pays.

Each config is exported as `sparsesearch export --onnx` exports it (`export_onnx_file`: the "export" kernel backend,
dynamic batch axis, opset 18) and quantised as `--quantize dynamic` does (`quantize_onnx`); ONNX Runtime runs it on
the CPU provider with every graph optimisation, the row's intra-op threads, one inter-op thread and thread spinning
off (`latency.runtime.ort_session`); torch runs the model in eager inference (`torch.inference_mode`), batch 1.
--ort-spin runs ONNX Runtime with its default threading instead: threads spinning between operators, one pool shared
by the worker's sessions (as a process serving one model runs it); torch's OpenMP threads spin between operators by
default either way. With spinning off, every operator ONNX Runtime splits across threads first wakes a sleeping
thread (about 10 us at 2 threads on the AMD EPYC VM), which a pruned graph, with its score and write-back operators,
pays more often than the dense one.

Timing: within a process the configs are timed interleaved forward by forward, each timed call right after an
untimed one of its own (as bench_model.py; --rounds x about --min-time seconds of passes per config); "x dense" is
the median of the per-pass ratios to the dense call of the same pass. --isolate process (the default) times each
runtime in its own process, one after the other, so the thread pools of torch and ONNX Runtime never meet; the
ORT/torch ratios then compare medians of separate processes. --isolate passive times all runtimes interleaved in one
process with both pools passive (OMP_WAIT_POLICY=PASSIVE for torch, no spinning for ONNX Runtime); ORT/torch is then
also a median of per-pass ratios. The output says which. --repeat N runs the processes N times, one after the other,
and pools their passes: a process caught in a slow spell of the machine then moves the figures less.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparsesearch as ss  # noqa: E402

from _machine import machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: model presets: how each is built and the input side
MODELS: dict[str, dict[str, Any]] = {
    "demo": {"space": "search_spaces/demo.yaml", "kwargs": {"head": "seg", "num_classes": 4}, "side": 256},
    "demo_backbone": {"space": "search_spaces/demo.yaml", "kwargs": {"head": None}, "side": 256},
    "swin_t_512": {"name": "swin_tiny_patch4_window7_224", "kwargs": {"head": None}, "side": 512},
    "samvit_nano": {"name": "samvit_nano", "kwargs": {"head": None}, "side": 192},
}
RUNTIMES = ("torch", "ort_fp32", "ort_int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", choices=sorted(MODELS), default=["demo"])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7], help="uniform sparsities (and dense)")
    ap.add_argument("--config", type=Path, default=None, help="also a config file (e.g. best.json) where it fits")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--isolate", choices=["process", "passive"], default="process",
                    help="each runtime in its own process, or all in one with passive thread pools")  # fmt: skip
    ap.add_argument("--ort-spin", action="store_true",
                    help="ORT's default spinning threads, one pool per worker (with --isolate process)")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3, help="rounds of interleaved passes")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per config per round (about)")
    ap.add_argument("--repeat", type=int, default=1, help="run each model's worker processes this many times")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 models")
    ap.add_argument("--no-malloc", action="store_true", help="keep glibc malloc defaults in the workers")
    ap.add_argument("--json", type=Path, help="also write the figures here (JSON)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: a job file (see `run_worker`)
    return ap.parse_args(argv)


def build(preset: str) -> tuple[Any, int]:
    """(model in eval mode with seed-0 weights, input side) of a preset."""
    spec = MODELS[preset]
    if "space" in spec:
        model = ss.SearchSpace.load(ROOT / spec["space"]).create_model(seed=0, **spec["kwargs"])
    else:
        torch.manual_seed(0)
        model = ss.create_model(spec["name"], **spec["kwargs"])
    return model.eval(), int(spec["side"])


def uniform(preset: str, model: Any, p: float) -> ss.SparsityConfig | None:
    """Uniform sparsity p (None: dense) with the preset's windows: a space's first window choice per stage (the
    demo's 8/8/8/4, which tile its 256x256 maps exactly), else the model's defaults."""
    spec = MODELS[preset]
    if "space" not in spec:
        return model.uniform_config(p) if p > 0 else None
    space = ss.SearchSpace.load(ROOT / spec["space"])
    return space.uniform(p) if p > 0 else space.densest()


def configs(preset: str, model: Any, args: argparse.Namespace) -> dict[str, ss.SparsityConfig | None]:
    """name -> config: dense, uniform at each --sparsity, and --config where the model takes it."""
    out: dict[str, ss.SparsityConfig | None] = {"dense": uniform(preset, model, 0.0)}
    for p in sorted(set(args.sparsity) - {0.0}):
        out[f"uniform {p:g}"] = uniform(preset, model, p)
    if args.config is not None:
        cfg = ss.SparsityConfig.load(args.config)
        try:
            model.set_config(cfg)
        except ss.SparseSearchError as e:
            print(f"# --config does not fit {type(model).__name__}: {str(e).splitlines()[0]}", file=sys.stderr)
        else:
            out[args.config.name] = cfg
        model.set_config(None)
    return out


def _resolution(cfg: ss.SparsityConfig | None, side: int) -> tuple[int, int]:
    """The input size of a config: its own resolution (a searched config may carry one), else the preset's."""
    if cfg is not None and cfg.resolution is not None:
        return int(cfg.resolution[0]), int(cfg.resolution[1])
    return side, side


def export_all(preset: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Export every config of `preset` (fp32, and int8 unless --no-int8) and the weights into `folder`; the job
    description the workers read."""
    from sparsesearch.export import export_onnx_file, quantize_onnx  # noqa: PLC0415

    model, side = build(preset)
    cfgs = configs(preset, model, args)
    files: dict[str, dict[str, str]] = {}
    for i, (name, cfg) in enumerate(cfgs.items()):
        model.set_config(cfg)
        fp32 = folder / f"{preset}_{i}.onnx"
        export_onnx_file(model, fp32, torch.randn(1, 3, *_resolution(cfg, side)))
        files[name] = {"ort_fp32": str(fp32)}
        if not args.no_int8:
            int8 = folder / f"{preset}_{i}.int8.onnx"
            quantize_onnx(fp32, int8)
            files[name]["ort_int8"] = str(int8)
    model.set_config(None)
    return {
        "preset": preset,
        "configs": {name: (cfg.to_dict() if cfg is not None else None) for name, cfg in cfgs.items()},
        "files": files,
    }


def _callers(job: dict[str, Any], runtime: str, threads: int) -> tuple[dict[str, Callable[[], object]], Any]:
    """config name -> a zero-argument call of `runtime` on that config (torch: the model with the config set first;
    ONNX Runtime: its session), and the model (None for ONNX Runtime)."""
    model, side = build(job["preset"])
    cfgs = {n: (ss.SparsityConfig.from_dict(c) if c is not None else None) for n, c in job["configs"].items()}
    gen = torch.Generator().manual_seed(1)
    xs = {n: torch.randn(1, 3, *_resolution(c, side), generator=gen) for n, c in cfgs.items()}
    if runtime == "torch":

        def torch_call(cfg: ss.SparsityConfig | None, x: torch.Tensor) -> Callable[[], object]:
            def call() -> object:
                model.set_config(cfg)
                return model(x)

            return call

        return {n: torch_call(c, xs[n]) for n, c in cfgs.items()}, model
    from sparsesearch.latency.runtime import OrtCall, ort_session  # noqa: PLC0415

    out: dict[str, Callable[[], object]] = {}
    for name, files in job["files"].items():
        sess = OrtCall(ort_session(Path(files[runtime]).read_bytes(), threads, spinning=bool(job["ort_spin"])))
        xn = xs[name].numpy()
        out[name] = lambda s=sess, xn=xn: s(xn)  # type: ignore[misc]
    return out, None


def interleaved(calls: list[Callable[[], object]], rounds: int, min_time: float) -> list[list[float]]:
    """Per-call lists of ms, one per pass: every pass runs each call untimed then timed, call after call; `rounds`
    x about `min_time` seconds of passes (at least 5 passes a round)."""
    for call in calls:
        for _ in range(2):
            call()
    t0 = time.perf_counter()
    for call in calls:
        call()
    per_pass = 2 * (time.perf_counter() - t0)
    passes = max(5, math.ceil(min_time * len(calls) / max(per_pass, 1e-6)))
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds * passes):
        for call, got in zip(calls, samples):
            call()
            t = time.perf_counter_ns()
            call()
            got.append((time.perf_counter_ns() - t) / 1e6)
    return samples


def run_worker(job_file: Path) -> None:
    """Time the job's runtimes (all interleaved) at its thread count; print {runtime: {config: [ms, ...]}} as JSON."""
    job = json.loads(job_file.read_text())
    threads = int(job["threads"])
    torch.set_num_threads(threads)
    if job["malloc"]:  # large tensors from the heap, not fresh mmaps page-faulted in every forward (as the tables)
        ss.latency.tune_malloc()
    keys: list[tuple[str, str]] = []
    calls: list[Callable[[], object]] = []
    with torch.inference_mode():
        for runtime in job["runtimes"]:
            made, _ = _callers(job, runtime, threads)
            for name, call in made.items():
                keys.append((runtime, name))
                calls.append(call)
        samples = interleaved(calls, int(job["rounds"]), float(job["min_time"]))
    out: dict[str, dict[str, list[float]]] = {}
    for (runtime, name), got in zip(keys, samples):
        out.setdefault(runtime, {})[name] = got
    print(json.dumps(out))


def run_job(job: dict[str, Any], runtimes: list[str], threads: int, args: argparse.Namespace, folder: Path) -> dict:
    """Run one worker process on `runtimes` at `threads`; its samples."""
    path = folder / f"job_{job['preset']}_{threads}_{'_'.join(runtimes)}.json"
    path.write_text(json.dumps({**job, "runtimes": runtimes, "threads": threads, "rounds": args.rounds,
                                "min_time": args.min_time, "malloc": not args.no_malloc,
                                "ort_spin": args.ort_spin}))  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if args.isolate == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    proc = subprocess.run([sys.executable, __file__, "--worker", str(path)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_onnx: the worker for {runtimes} at {threads} threads failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _samples(job: dict[str, Any], runtimes: list[str], threads: int, args: argparse.Namespace, folder: Path) -> dict:
    """{runtime: {config: [ms per pass]}} of one run: a process per runtime (--isolate process) or one for all."""
    if args.isolate == "process":
        return {rt: run_job(job, [rt], threads, args, folder)[rt] for rt in runtimes}
    return run_job(job, runtimes, threads, args, folder)


def _pooled(runs: list[dict[str, dict[str, list[float]]]]) -> dict[str, dict[str, list[float]]]:
    """The passes of several runs, run after run (pass i of every config still comes from one pass)."""
    out: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for rt, by_cfg in run.items():
            for name, got in by_cfg.items():
                out.setdefault(rt, {}).setdefault(name, []).extend(got)
    return out


def _ratio(a: list[float], b: list[float]) -> float:
    """Median of per-pass ratios a/b."""
    return statistics.median(x / y for x, y in zip(a, b))


def rows_of(preset: str, threads: int, samples: dict[str, dict[str, list[float]]], passive: bool) -> list[dict]:
    """One record per config: ms per runtime, ORT/torch (per-pass in one process, else of medians), x dense."""
    recs = []
    for name in samples["torch"]:
        rec: dict[str, Any] = {"model": preset, "threads": threads, "config": name}
        for rt, by_cfg in samples.items():
            got, dense = by_cfg[name], by_cfg["dense"]
            rec[f"{rt}_ms"] = statistics.median(got)
            rec[f"{rt}_x_dense"] = _ratio(got, dense)
            if rt != "torch":
                torch_got = samples["torch"][name]
                rec[f"{rt}_x_torch"] = (
                    _ratio(got, torch_got) if passive else rec[f"{rt}_ms"] / statistics.median(torch_got)
                )
        recs.append(rec)
    return recs


def _fmt(rec: dict[str, Any], key: str, digits: int) -> str:
    return f"{rec[key]:.{digits}f}" if key in rec else ""


def print_table(records: list[dict], args: argparse.Namespace) -> None:
    import onnxruntime as ort  # noqa: PLC0415

    if args.isolate == "process":
        how = "each runtime in its own process (ORT/torch: ratio of medians)"
    else:
        how = "all runtimes interleaved in one process, both thread pools passive (ORT/torch: per-pass ratios)"
    spin = "spinning threads, one pool per worker" if args.ort_spin else "no spinning"
    print(
        f"# torch eager vs ONNX Runtime {ort.__version__} (CPU provider, ORT_ENABLE_ALL, {spin}), batch 1, "
        f"configs interleaved forward by forward; {how}; {args.rounds} rounds of about {args.min_time} s per config"
        + (f", {args.repeat} runs of the processes pooled" if args.repeat > 1 else "")
    )
    malloc = "glibc defaults" if args.no_malloc else "glibc tuned as `sparsesearch profile` tunes it"
    print(
        f"# machine: {machine_line().split('; ')[0]}; {os.cpu_count()} CPUs visible; torch {torch.__version__}; "
        f"malloc in the workers: {malloc}"
    )
    headers = ["model", "threads", "config", "torch ms", "ORT fp32 ms", "ORT int8 ms", "fp32 / torch",
               "int8 / torch", "x dense torch", "x dense fp32", "x dense int8"]  # fmt: skip
    rows = [[r["model"], r["threads"], r["config"], _fmt(r, "torch_ms", 2), _fmt(r, "ort_fp32_ms", 2),
             _fmt(r, "ort_int8_ms", 2), _fmt(r, "ort_fp32_x_torch", 3), _fmt(r, "ort_int8_x_torch", 3),
             _fmt(r, "torch_x_dense", 3), _fmt(r, "ort_fp32_x_dense", 3), _fmt(r, "ort_int8_x_dense", 3)]
            for r in records]  # fmt: skip
    print(tabulate(rows, headers=headers, tablefmt="github"))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        run_worker(args.worker)
        return
    if args.ort_spin and args.isolate != "process":
        sys.exit("bench_onnx: --ort-spin times ONNX Runtime in a process of its own: use it with --isolate process")
    runtimes = [rt for rt in RUNTIMES if not (args.no_int8 and rt == "ort_int8")]
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        folder = Path(tmp)
        for preset in args.model:
            print(f"# exporting {preset} ...", file=sys.stderr, flush=True)
            job = export_all(preset, args, folder)
            for threads in args.threads:
                print(f"# timing {preset} at {threads} threads ...", file=sys.stderr, flush=True)
                samples = _pooled([_samples(job, runtimes, threads, args, folder) for _ in range(args.repeat)])
                records += rows_of(preset, threads, samples, args.isolate == "passive")
    print_table(records, args)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine_line(), "isolate": args.isolate, "ort_spin": args.ort_spin, "rows": records},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
