"""The allocator setting latency tables are measured with on CPU (glibc `mallopt`): process-wide and
irreversible, so the library applies it only when a caller asks (`ProfileSettings.malloc`, or a call of
`tune_malloc`); the CLI commands that time (`profile`, `latency validate`, `latency check`) ask for their own
process."""

from __future__ import annotations

__all__ = ["tune_malloc", "malloc_tuned"]

#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_MALLOC_TUNED: str | None = None


def _mallopt(param: int, value: int) -> bool:
    """glibc's mallopt(param, value); False where it failed. Raises OSError/AttributeError where there is no glibc."""
    import ctypes  # noqa: PLC0415

    return bool(ctypes.CDLL("libc.so.6").mallopt(param, value) == 1)


def tune_malloc() -> str | None:
    """Keep freed memory in glibc's heap (mallopt: M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB), process-wide, for the
    rest of the process.

    By default glibc maps large blocks (feature maps of a high-resolution forward) fresh from the kernel and
    gives the heap top back after a pass, so every forward pays page faults whose number depends on the
    process's allocation history: on a 2-core VM a dense forward of a 28M-parameter model at 512x512 took ~20k
    faults, and whole-model times differed by several percent between processes. With this setting a warmed-up
    process runs without faults, as one with jemalloc/tcmalloc does. Returns a description of what was set, or
    None where it is not glibc (nothing is changed then). Idempotent.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED is not None:
        return _MALLOC_TUNED
    try:
        ok = _mallopt(_M_MMAP_MAX, 0) and _mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError):
        return None
    if ok:
        _MALLOC_TUNED = "glibc mallopt: M_MMAP_MAX=0, M_TRIM_THRESHOLD=2GiB"
    return _MALLOC_TUNED


def malloc_tuned() -> str | None:
    """What `tune_malloc` set in this process (None: the allocator is as glibc left it)."""
    return _MALLOC_TUNED
