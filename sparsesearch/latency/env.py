"""What a latency table was measured on: device name and slug, driver, library versions, dtype names."""
from __future__ import annotations

import os
import platform
import re
import subprocess
from functools import lru_cache
from importlib import metadata
from typing import Any

import torch

from ..errors import LatencyTableError

__all__ = [
    "DTYPES",
    "parse_dtype",
    "device_type",
    "device_name",
    "slugify",
    "device_slug",
    "environment",
    "code_hash",
    "kernel_backend",
]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    """'fp32' | 'fp16' | 'bf16' -> torch dtype."""
    if name not in DTYPES:
        raise LatencyTableError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def device_type(device: str | torch.device) -> str:
    """'cpu', 'cuda' (from 'cuda:1' too); raises LatencyTableError for anything else or a missing GPU."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise LatencyTableError(f"unknown device {device!r}: use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise LatencyTableError(f"device {device!r} is not supported: use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LatencyTableError("--device cuda was asked for but torch sees no CUDA device here")
    return dev.type


@lru_cache(maxsize=1)
def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def device_name(device: str | torch.device = "cpu") -> str:
    """The CPU model name (/proc/cpuinfo) or the CUDA device name."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return _cpu_model_name()


def slugify(text: str) -> str:
    """'Intel(R) Xeon(R) Processor @ 2.6GHz' -> 'intel-xeon-processor-2-6ghz' (lower case, [a-z0-9-])."""
    text = re.sub(r"\((r|tm|c)\)", "", text, flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "unknown-device"


def device_slug(device: str | torch.device = "cpu") -> str:
    """The folder name of this device's tables under latency_tables/."""
    return slugify(device_name(device))


@lru_cache(maxsize=1)
def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.stdout.strip().splitlines()
    return first[0].strip() if out.returncode == 0 and first else None


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def code_hash() -> str:
    """'sha256:<16 hex>' of the model and window-op sources: a table measured with other code may be stale."""
    import hashlib  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    root = Path(__file__).resolve().parents[1]
    files = sorted([*root.joinpath("ops").glob("*.py"), *root.joinpath("models").glob("*.py")])
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return "sha256:" + h.hexdigest()[:16]


def kernel_backend(device: str | torch.device) -> str | None:
    """The window-op backend the dispatch picks for tensors on `device` ('torch' or 'triton')."""
    try:
        from ..ops import resolve_backend  # noqa: PLC0415

        return resolve_backend(torch.empty(1, device=torch.device(device)))
    except Exception:  # noqa: BLE001 - informational only
        return None


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The facts that make a measurement reproducible on `device` (no timing-related settings)."""
    dev = torch.device(device)
    info: dict[str, Any] = {
        "device_type": dev.type,
        "device": device_name(dev),
        "device_slug": slugify(device_name(dev)),
        "host_cpu": _cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "triton": _package_version("triton"),
        "numpy": _package_version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda if dev.type == "cuda" else None,
        "driver": _driver_version() if dev.type == "cuda" else None,
        "kernels_env": os.environ.get("SPARSESEARCH_KERNELS"),
        "kernel_backend": kernel_backend(dev),
        "code_hash": code_hash(),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info["capability"] = f"{props.major}.{props.minor}"
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info
