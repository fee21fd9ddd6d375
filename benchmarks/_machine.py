"""Shared by the benchmarks: describe the machine a figure came from, and time calls on it."""

from __future__ import annotations

import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def machine_line() -> str:
    """One line: CPU or GPU model, threads, torch (and triton) versions."""
    if torch.cuda.is_available():
        dev = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}, driver {gpu_driver() or '?'})"
    else:
        dev = _cpu_name()
    tri = f", triton {v}" if (v := triton_version()) else ""
    return (
        f"{dev}; {torch.get_num_threads()} threads; torch {torch.__version__}{tri}; Python {platform.python_version()}"
    )


def machine_info() -> dict[str, Any]:
    """The same as plain data, for JSON results."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "triton": triton_version(),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
    }
    if torch.cuda.is_available():
        prop = torch.cuda.get_device_properties(0)
        info.update(gpu=prop.name, gpu_memory_gib=round(prop.total_memory / 2**30, 1), sms=prop.multi_processor_count,
                    capability=f"{prop.major}.{prop.minor}", cuda=torch.version.cuda, driver=gpu_driver())  # fmt: skip
    return info


def triton_version() -> str | None:
    try:
        import triton  # noqa: PLC0415
    except ImportError:
        return None
    return str(triton.__version__)


def gpu_driver() -> str | None:
    """The NVIDIA driver version (from nvidia-smi), or None."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


@dataclass
class Timing:
    """Median milliseconds of one call: eager (Python calls) and, when capture worked, CUDA graph replay."""

    eager: float
    graph: float | None = None

    @property
    def best(self) -> float:
        return self.graph if self.graph is not None else self.eager


class Timer:
    """Median-of-repeats timer: CUDA events on a GPU, perf_counter on CPU; always after warm-up."""

    def __init__(self, device: torch.device, warmup: int, repeats: int, use_graphs: bool) -> None:
        self.cuda = device.type == "cuda"
        self.warmup = warmup
        self.repeats = repeats
        self.use_graphs = use_graphs and self.cuda
        self.graph_failures: list[str] = []

    def _eager(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        if not self.cuda:
            samples = []
            for _ in range(self.repeats):
                t0 = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(samples)
        torch.cuda.synchronize()
        events = []
        for _ in range(self.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in events)

    def _graph(self, fn: Callable[[], object], inner: int) -> float | None:
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(inner):
                    fn()
        except Exception as exc:  # noqa: BLE001  (report, fall back to eager timings)
            self.graph_failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            torch.cuda.synchronize()
            return None
        for _ in range(max(2, self.warmup // inner)):
            graph.replay()
        torch.cuda.synchronize()
        samples = []
        for _ in range(self.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / inner)
        del graph
        return statistics.median(samples)

    def __call__(self, fn: Callable[[], object], inner: int = 10) -> Timing:
        eager = self._eager(fn)
        graph = self._graph(fn, inner) if self.use_graphs else None
        return Timing(eager, graph)
