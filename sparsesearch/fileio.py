"""Atomic file writes (a reader, or a resumed run, never sees a half-written file) and plain, serialisable data."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_text", "atomic_torch_save", "set_aside", "to_plain"]


def _default_mode() -> int:
    """0666 less the umask: what open() would have given (mkstemp alone gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], Any], binary: bool = True) -> None:
    """Call `write(f)` on a temp file in `path`'s folder, fsync it, then `os.replace` it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` atomically."""
    import torch  # noqa: PLC0415

    atomic_write(path, lambda f: torch.save(obj, f))


def set_aside(path: str | os.PathLike, suffix: str = ".corrupt") -> Path:
    """Rename `path` to `<path><suffix>` (replacing an older file of that name) and return the new path, so that
    a file the program cannot use is kept for inspection instead of being overwritten."""
    path = Path(path)
    target = path.with_name(path.name + suffix)
    os.replace(path, target)
    return target


def to_plain(value: Any) -> Any:
    """Tuples -> lists and mapping keys -> str, recursively: a value that survives YAML, JSON and
    ``weights_only`` pickles unchanged."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value
