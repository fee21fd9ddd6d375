"""Stopping a training run cleanly on SIGINT / SIGTERM: the first signal asks the run to stop after the current
step (its checkpoint written, so ``--resume`` continues it), a second one stops at once."""

from __future__ import annotations

import signal
import threading
from types import TracebackType
from typing import Any

__all__ = ["StopRequested", "StopSignals"]


class StopRequested(Exception):
    """Raised by the run after the step during which a stop was asked for (its checkpoint is written)."""


class StopSignals:
    """A context that routes SIGINT and SIGTERM to `requested` while the body runs, and puts the previous
    handlers back after it.

    Installed only in a single process on the main thread (`enabled` false, e.g. under DDP, where ranks could
    stop at different steps: the signals then act as they did before). A signal that arrives when a stop was
    already asked for raises KeyboardInterrupt.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:  # second signal: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopSignals:
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except (ValueError, OSError):
                pass
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)
        self._old = {}
