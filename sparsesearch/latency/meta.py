"""What a table records about how it was measured: the machine and software (`env.environment`), the settings,
the runtime the parts ran in (`runtime`, `runtime_version`: "torch" and its version, or "onnxruntime" and
onnxruntime's), the statistic, the timer, how long it waited for a quiet machine, the allocator setting and the
space."""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

from .env import machine_slug
from .runtime import EXPORT_FORM
from .structure import space_hash

if TYPE_CHECKING:
    from .profile import Profiler

__all__ = ["profile_meta"]


def profile_meta(profiler: Profiler, threads: int, duration_s: float) -> dict[str, Any]:
    """The `meta` of the table `profiler` measured, with the torch thread count it ran with and how long it took."""
    s = profiler.settings
    env = profiler.environment
    space = profiler.space
    return {
        **{
            k: env[k]
            for k in (
                "device",
                "device_type",
                "device_slug",
                "driver",
                "cuda",
                "torch",
                "triton",
                "numpy",
                "python",
            )
        },
        "host_cpu": env["host_cpu"],
        "platform": env["platform"],
        "kernels_env": env["kernels_env"],
        "kernel_backend": env["kernel_backend"],
        "code_hash": env["code_hash"],
        "fingerprint": env["fingerprint"],
        "machine": machine_slug(fp=env["fingerprint"]),
        "threads": threads,
        "dtype": s.dtype,
        "batch": s.batch,
        "resolutions": [list(r) for r in profiler.resolutions],
        "head": s.head,
        "num_classes": s.num_classes,
        "warmup": s.warmup,
        "repeats": s.repeats,
        "rounds": s.rounds,
        "statistic": profiler.statistic,
        "statistic_note": (
            f"per round, the mean of the middle {100 - 200 * s.trim:g}% of samples (trim {s.trim:g} each side); "
            "per entry, the mean of its rounds"
            if profiler.statistic == "mean"
            else "the fastest sample of all rounds (the speed when nothing else interferes)"
        ),
        "trim": s.trim,
        "timer": (
            "cuda events"
            if profiler.device.type == "cuda"
            else "time.thread_time_ns"
            if s.clock == "thread"
            else "time.perf_counter_ns"
        ),
        "max_k_points": s.max_k_points,
        "calibration": s.calibration,
        "in_model": s.in_model_pass,
        "runtime": s.runtime,
        "runtime_version": profiler.runtime_version,
        **({"export_form": EXPORT_FORM} if s.runtime == "onnxruntime" else {}),
        "flush_bytes": profiler.flush_bytes,
        "max_foreign_load": profiler.max_load,
        "waited_s": round(profiler.monitor.waited_s, 1),
        "busy_measurements": profiler.monitor.busy,
        "clock": s.clock,
        "malloc": profiler.malloc,
        "seed": s.seed,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 1),
        "space": {
            "name": space.name,
            "architecture": space.architecture,
            "source": space.source,
            "hash": space_hash(space),
        },
        "sparsesearch": _package_version(),
    }


def _package_version() -> str:
    from .. import __version__  # noqa: PLC0415

    return __version__
