"""Context managers that change a process-wide setting for one call and put it back after it.

Library code never leaves a process-wide setting changed (CONTRIBUTING.md, Conventions): torch's thread count,
a random generator, a logger's verbosity. These are the ways to change one for the length of a `with` block.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import SparseSearchError

__all__ = ["torch_threads", "quiet_logger"]


@contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run the body with `torch.set_num_threads(n)` (None: leave the count as it is); the previous count is
    restored after it, also when the body raises. Yields the count the body runs with."""
    previous = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise SparseSearchError(f"the thread count must be at least 1, got {n}")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


class _ThreadLevelFilter(logging.Filter):
    """Drops records below `level` that loggers under `prefix` emit on thread `thread`."""

    def __init__(self, prefix: str, level: int, thread: int) -> None:
        super().__init__()
        self.prefix, self.level, self.thread = prefix, level, thread

    def filter(self, record: logging.LogRecord) -> bool:
        under = record.name == self.prefix or record.name.startswith(self.prefix + ".")
        return not (under and record.levelno < self.level and record.thread == self.thread)


@contextmanager
def quiet_logger(name: str, level: int = logging.WARNING) -> Iterator[None]:
    """Drop the records below `level` that logger `name` (and the loggers under it) emit on the calling thread
    while the body runs.

    No logger's level changes: other threads log as before, and nothing is left behind after the body. The filter
    sits on the logger itself and on every handler a record of it reaches (a record that propagates from a child
    logger is checked by the handlers only).
    """
    filt = _ThreadLevelFilter(name, level, threading.get_ident())
    logger: logging.Logger | None = logging.getLogger(name)
    targets: list[logging.Filterer] = [logging.getLogger(name)]
    while logger is not None:
        targets.extend(logger.handlers)
        logger = logger.parent if logger.propagate else None
    for t in targets:
        t.addFilter(filt)
    try:
        yield
    finally:
        for t in targets:
            t.removeFilter(filt)
