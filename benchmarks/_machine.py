"""Shared by the benchmarks: describe the machine a figure came from."""
from __future__ import annotations

import platform

import torch


def machine_line() -> str:
    """One line: CPU or GPU model, threads, torch (and triton) versions."""
    if torch.cuda.is_available():
        dev = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    else:
        dev = _cpu_name()
    try:
        import triton  # noqa: PLC0415

        tri = f", triton {triton.__version__}"
    except ImportError:
        tri = ""
    return f"{dev}; {torch.get_num_threads()} threads; torch {torch.__version__}{tri}; Python {platform.python_version()}"


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
