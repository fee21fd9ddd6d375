"""The GPU check: every step time-boxed, all output under $OUT, a Markdown summary at the end.

    python3 benchmarks/gpu/run.py [--out DIR] [--budget 470] [--cpu-dry-run] [--only STEP ...]

Called by run.sh (which installs the carried wheels and sets PYTHONPATH); see README.md beside this file. Steps,
in order (a step that fails or runs out of time is recorded and the next one runs):

  tests     tests/test_kernels.py on CUDA with the compiled kernels (fp32/fp16/bf16, forward and backward)
  kernels   benchmarks/bench_kernels.py: score+gather and scatter vs the torch path, Swin-T stage shapes at
            1024x1024, batch 1/4/8, fp16, with the device copy bandwidth of the same run
  model     benchmarks/bench_model.py: Swin-T 1024x1024 fp16 batch 4, dense vs uniform 0.3/0.5/0.7, Triton and torch
  profile   `sparsesearch profile` of a reduced Swin-T space (space_swin_t_gpu.yaml) at 1024, fp16, batch 4
  validate  `sparsesearch latency validate` of that table on 20 random configs (plus dense and uniform ones)
  adapt     `sparsesearch adapt` for 20 steps with --amp (fp16 + GradScaler), DDP over NCCL with one process
  compile   torch.compile (inductor) of Swin-T at uniform 0.5 (last: the least predictable in time)

--cpu-dry-run runs the same steps on CPU with tiny shapes and counts, the kernels interpreted
(TRITON_INTERPRET=1), to prove the commands, imports and argument parsing before a device minute is spent.
Files written to --out: gpu_results.md, gpu_run.log (every step's output), figures.json (all figures), and the
latency table with its validation report (JSON, PNG).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import summary  # noqa: E402

SPACE = HERE / "space_swin_t_gpu.yaml"
TABLE = "swin_t_gpu_1024x1024_fp16_b4.json"
MODEL = "swin_tiny_patch4_window7_224"


@dataclass
class Step:
    """One time-boxed command. `box`: its most seconds; `env`: variables to set (None: unset)."""

    name: str
    argv: list[str]
    box: float
    env: dict[str, str | None] = field(default_factory=dict)
    status: str = "not run"
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    tail: str = ""


def _py() -> list[str]:
    return [sys.executable]


def build_steps(out: Path, work: Path, dry: bool) -> list[Step]:
    """The commands of the check: the GPU ones, or their tiny CPU versions with --cpu-dry-run."""
    py = _py()
    table = out / (f"dry_{TABLE}" if dry else TABLE)
    interp = {"TRITON_INTERPRET": "1"} if dry else {"TRITON_INTERPRET": None}
    k = ["-k", "canary or (bit_exact and 8x8-w4-n-b1 and 24) or pruned_block_triton_equals_torch"] if dry else []
    tests = py + ["-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "tests/test_kernels.py", *k]
    kern = py + ["benchmarks/bench_kernels.py", "--skip-backbone", "--json", str(work / "kernels.json")]
    kern += (["--resolution", "32", "--stages", "0", "--batch", "1", "--triton-on-cpu", "--warmup", "1",
              "--repeats", "1", "--copy-mib", "4"]
             if dry else ["--resolution", "1024", "--batch", "1", "4", "8", "--dtype", "fp16"])  # fmt: skip
    model = py + ["benchmarks/bench_model.py", "--model", MODEL, "--no-flops", "--backend", "triton", "torch"]
    model_size = (["--resolution", "32", "--batch", "1", "--dtype", "fp32", "--device", "cpu", "--min-time", "0.01",
                   "--rounds", "1"] if dry else
                  ["--resolution", "1024", "--batch", "4", "--dtype", "fp16", "--device", "cuda", "--warmup", "5",
                   "--repeats", "20", "--rounds", "3"])  # fmt: skip
    prof = py + [
        "-m",
        "sparsesearch",
        "profile",
        "--space",
        str(SPACE),
        "--out",
        str(table),
        "--fresh",
        "--no-progress",
    ]
    prof += (["--device", "cpu", "--dtype", "fp32", "--batch", "1", "--resolution", "32x32", "--threads", "1",
              "--warmup", "0", "--repeats", "1", "--rounds", "1", "--calibration", "2"] if dry else
             ["--device", "cuda", "--dtype", "fp16", "--batch", "4"])  # fmt: skip
    val = py + ["-m", "sparsesearch", "latency", "validate", "--table", str(table), "--no-progress",
                "--report", str(table.with_suffix(".validation.json"))]  # fmt: skip
    val += ["--n", "2", "--warmup", "0", "--repeats", "1", "--rounds", "1"] if dry else ["--n", "20"]
    adapt = py + ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "sparsesearch", "adapt",
                  "--space", "search_spaces/demo.yaml", "--amp", "--val-samples", "0", "--out", str(work / "adapt"),
                  "--overwrite", "--quiet"]  # fmt: skip
    adapt += (["--device", "cpu", "--data", "synthetic:8", "--steps", "2", "--batch", "2", "--image-size", "64"] if dry
              else ["--device", "cuda", "--data", "synthetic:160", "--steps", "20", "--batch", "8"])  # fmt: skip
    comp = model[:2] + ["--model", MODEL, "--no-flops", "--sparsity", "0.5", "--backend", "auto", "--compile", "0.5",
                        "--json", str(work / "compile.json")] + model_size  # fmt: skip
    comp += ["--compile-backend", "eager"] if dry else []
    return [
        Step("tests", tests, 150, {**interp, "SPARSESEARCH_TEST_DEVICE": "cpu" if dry else "cuda"}),
        Step("kernels", kern, 110, dict(interp)),
        Step(
            "model",
            model
            + model_size
            + [
                "--sparsity",
                *(["0", "0.5"] if dry else ["0", "0.3", "0.5", "0.7"]),
                "--json",
                str(work / "model.json"),
            ],
            90,
            dict(interp),
        ),
        Step("profile", prof, 130, dict(interp)),
        Step("validate", val, 70, dict(interp)),
        Step("adapt", adapt, 100, dict(interp)),
        Step("compile", comp, 150, dict(interp)),
    ]


def run_step(step: Step, timeout: float, log: Any) -> None:
    """Run one step in its own process group, output to the log; kill the group when its time is up."""
    env = dict(os.environ)
    for key, value in step.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    log.write(f"\n{'=' * 100}\n== {step.name}: {' '.join(step.argv)}\n== env: {step.env}  timeout {timeout:.0f} s\n")
    log.flush()
    t0 = time.monotonic()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
        step.status = "passed" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        output, _ = proc.communicate()
        step.status = f"timed out after {timeout:.0f} s"
    step.seconds = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    step.cpu_seconds = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    log.write(output or "")
    log.write(f"\n== {step.name}: {step.status} in {step.seconds:.1f} s ({step.cpu_seconds:.1f} s CPU)\n")
    log.flush()
    step.tail = "\n".join((output or "").strip().splitlines()[-12:])


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the step's process group (torchrun's workers, pytest's subprocesses), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _no_gpu() -> str | None:
    """Why the GPU steps cannot run here (None when they can)."""
    try:
        import torch  # noqa: PLC0415
    except ImportError as e:
        return f"cannot import torch ({e}); is this the GPU image?"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device; for a check on CPU pass --cpu-dry-run"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_out"), help="default: $OUT")
    ap.add_argument("--budget", type=float, default=470.0, help="seconds for all steps together (default 470)")
    ap.add_argument("--cpu-dry-run", action="store_true", help="every step on CPU, tiny, kernels interpreted")
    ap.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps (names as above)")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))  # intermediate files: figures.json keeps what matters
    problem = None if args.cpu_dry_run else _no_gpu()
    if problem:
        (out / "gpu_results.md").write_text(f"# GPU check: not run\n\n{problem}\n")
        print(f"run.py: {problem}", file=sys.stderr)
        return 2
    steps = build_steps(out, work, args.cpu_dry_run)
    unknown = set(args.only or []) - {s.name for s in steps}
    if unknown:
        ap.error(f"unknown step(s) {', '.join(sorted(unknown))}: use {', '.join(s.name for s in steps)}")
    reserve = 15.0  # for the summary
    with open(out / "gpu_run.log", "a") as log:
        now = dt.datetime.now(dt.timezone.utc)
        log.write(f"# run.py {'--cpu-dry-run ' if args.cpu_dry_run else ''}started {now:%Y-%m-%d %H:%M:%S} UTC\n")
        for step in steps:
            if args.only and step.name not in args.only:
                step.status = "skipped (--only)"
                continue
            left = args.budget - (time.monotonic() - t_start) - reserve
            if left < 20:
                step.status = "not run: out of time"
                continue
            run_step(step, min(step.box, left), log)
            print(f"[{time.monotonic() - t_start:6.0f} s] {step.name:<9} {step.status} ({step.seconds:.0f} s, "
                  f"{step.cpu_seconds:.0f} s CPU)", flush=True)  # fmt: skip
    figures = summary.collect(steps, out / (f"dry_{TABLE}" if args.cpu_dry_run else TABLE), work)
    text = summary.render(steps, figures, args.cpu_dry_run, time.monotonic() - t_start)
    (out / "figures.json").write_text(json.dumps(figures, indent=1, default=str) + "\n")
    (out / "gpu_results.md").write_text(text)
    shutil.rmtree(work, ignore_errors=True)
    print(text)
    return 0 if all(s.status in ("passed", "skipped (--only)") for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
