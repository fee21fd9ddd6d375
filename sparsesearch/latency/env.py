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
    "fingerprint",
    "fingerprint_hash",
    "machine_slug",
    "fingerprint_diff",
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
        "fingerprint": fingerprint(dev),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info["capability"] = f"{props.major}.{props.minor}"
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


# ---- hardware fingerprint ----------------------------------------------------------------------------------------
#: /proc/cpuinfo flags that decide which kernels torch runs (x86 "flags", ARM "Features")
_VECTOR_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimdhp",
    "sve",
    "sve2",
    "bf16",
    "i8mm",
)
#: fingerprint fields that are settings or software rather than hardware: shown, compared, not hashed
_NOT_HASHED = ("torch_threads", "driver")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[dict[str, str], int | None]:
    """(the first processor's fields of /proc/cpuinfo, number of distinct (package, core) pairs or None)."""
    text = _read("/proc/cpuinfo") or ""
    first: dict[str, str] = {}
    cores: set[tuple[str, str]] = set()
    package = core = None
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
        if not fields:
            continue
        first = first or fields
        package, core = fields.get("physical id"), fields.get("core id")
        if package is not None and core is not None:
            cores.add((package, core))
    return first, (len(cores) or None)


def _caches() -> dict[str, str]:
    """{'L1d': '32K', 'L1i': '32K', 'L2': '512K', 'L3': '32768K'} of cpu0 (sysfs), empty where unknown."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    out: dict[str, str] = {}
    try:
        names = sorted(n for n in os.listdir(root) if n.startswith("index"))
    except OSError:
        return out
    for name in names:
        level, kind, size = (_read(f"{root}/{name}/{f}") for f in ("level", "type", "size"))
        if level and size:
            suffix = {"Data": "d", "Instruction": "i"}.get(kind or "", "")
            out[f"L{level}{suffix}"] = size
    return out


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (ValueError, OSError, AttributeError):
        return None


def _cpu_capability() -> str | None:
    """The vector ISA torch's CPU kernels dispatch to ('AVX2', 'AVX512', 'DEFAULT', ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return None


def _cpu_fingerprint() -> dict[str, Any]:
    info, physical = _cpuinfo()
    flags = set((info.get("flags") or info.get("features") or "").split())
    return {
        "cpu": info.get("model name") or _cpu_model_name(),
        "vendor": info.get("vendor_id") or info.get("cpu implementer"),
        "family": info.get("cpu family") or info.get("cpu architecture"),
        "model": info.get("model") or info.get("cpu part"),
        "stepping": info.get("stepping") or info.get("cpu revision"),
        "physical_cores": physical,
        "threads": os.cpu_count(),
        "caches": _caches(),
        "vector": sorted(flags & set(_VECTOR_FLAGS)),
        "torch_capability": _cpu_capability(),
        "hypervisor": "hypervisor" in flags,
        "memory_gib": _memory_gib(),
        "torch_threads": torch.get_num_threads(),
    }


@lru_cache(maxsize=4)
def _gpu_query(index: int) -> dict[str, str]:
    """Driver and maximum clocks of GPU `index` from nvidia-smi ({} where it is missing)."""
    keys = ("driver_version", "clocks.max.sm", "clocks.max.mem")
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(keys)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    line = out.stdout.strip().splitlines()
    if out.returncode != 0 or not line:
        return {}
    return dict(zip(keys, (v.strip() for v in line[0].split(","))))


def _gpu_fingerprint(dev: torch.device) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(dev)
    q = _gpu_query(dev.index if dev.index is not None else torch.cuda.current_device())
    return {
        "gpu": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "gpu_memory_gib": round(props.total_memory / 2**30),
        "max_sm_clock_mhz": q.get("clocks.max.sm"),
        "max_mem_clock_mhz": q.get("clocks.max.mem"),
        "driver": q.get("driver_version"),
    }


def fingerprint(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What the hardware running `device` is, in enough detail to tell apart two machines with one marketing name.

    CPU: model name, vendor, family/model/stepping, physical cores and logical threads, cache sizes, the vector
    extensions present (/proc/cpuinfo) and the one torch dispatches to, hypervisor, memory (GiB) and torch's
    thread count. CUDA adds, under "gpu": name, compute capability, SM count, memory, maximum clocks, driver.
    Read from /proc, sysfs and os.sysconf (nvidia-smi for the GPU's clocks and driver); unknown fields are None.
    """
    dev = torch.device(device)
    out = _cpu_fingerprint()
    if dev.type == "cuda" and torch.cuda.is_available():
        out["gpu"] = _gpu_fingerprint(dev)
    return out


def _hashed(fp: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in fp.items() if k not in _NOT_HASHED}
    if isinstance(out.get("gpu"), dict):
        out["gpu"] = {k: v for k, v in out["gpu"].items() if k not in _NOT_HASHED}
    return out


def fingerprint_hash(fp: dict[str, Any]) -> str:
    """8 hex digits identifying the hardware of a fingerprint (settings and driver left out)."""
    import hashlib  # noqa: PLC0415
    import json  # noqa: PLC0415

    return hashlib.sha256(json.dumps(_hashed(fp), sort_keys=True, default=str).encode()).hexdigest()[:8]


def machine_slug(device: str | torch.device = "cpu", fp: dict[str, Any] | None = None) -> str:
    """The folder of this machine's tables under latency_tables/: '<device-slug>-<fingerprint hash>',
    e.g. 'amd-epyc-3f09a2c1'."""
    fp = fp if fp is not None else fingerprint(device)
    gpu = fp.get("gpu")
    name = gpu["gpu"] if isinstance(gpu, dict) else fp.get("cpu") or "unknown"
    return f"{slugify(str(name))}-{fingerprint_hash(fp)}"


def _flatten(fp: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in fp.items():
        if isinstance(v, dict) and k in ("gpu", "caches"):
            out.update(_flatten(v, f"{prefix}{k}." if k == "gpu" else prefix))
        else:
            out[f"{prefix}{k}"] = v
    return out


def fingerprint_diff(
    table_fp: dict[str, Any], here: dict[str, Any], ignore: tuple[str, ...] = ("torch_threads",)
) -> list[str]:
    """'field: table value -> this machine's value' for every field that differs (fields either side lacks,
    and `ignore`d ones, are not compared)."""
    a, b = _flatten(table_fp), _flatten(here)
    out = []
    for key in a:
        if key in b and key not in ignore and a[key] != b[key]:
            va, vb = a[key], b[key]
            if isinstance(va, list) and isinstance(vb, list):
                gone, new = sorted(set(va) - set(vb)), sorted(set(vb) - set(va))
                out.append(f"{key}: " + ", ".join([*(f"-{x}" for x in gone), *(f"+{x}" for x in new)]))
            else:
                out.append(f"{key}: {va} -> {vb}")
    if isinstance(table_fp.get("gpu"), dict) and not isinstance(here.get("gpu"), dict):
        out.append(f"gpu: {table_fp['gpu'].get('gpu')} -> none")
    return out
