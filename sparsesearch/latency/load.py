"""A quiet machine to measure on: how many cores other processes use (`LoadMonitor`), and the most foreign load
a CPU measurement starts under (`default_max_load`)."""

from __future__ import annotations

import os
import time

import torch

__all__ = ["LoadMonitor", "default_max_load"]


class LoadMonitor:
    """How many cores' worth of CPU other processes use (Linux: /proc/stat minus this process); None elsewhere.

    `wait_quiet` lets a measurement start only when the machine is quiet enough, so that profiles and
    validations taken on a shared machine see the same conditions.
    """

    def __init__(self) -> None:
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._read()
        self.waited_s = 0.0
        self.busy = 0

    @staticmethod
    def _read() -> tuple[float, int, int] | None:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        busy = sum(v) - v[3] - (v[4] if len(v) > 4 else 0)  # all but idle and iowait (steal counts as busy)
        if len(v) > 8:  # guest time is also counted in user time
            busy -= sum(v[8:10])
        return time.monotonic(), busy, int(fields[11]) + int(fields[12])

    def foreign_load(self) -> float | None:
        """Average cores used by other processes since the previous call (or construction)."""
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[0] - last[0] <= 0:
            return None
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / self._hz / (now[0] - last[0]))

    def wait_quiet(self, max_load: float | None, window_s: float = 0.25, budget_s: float = 600.0) -> float | None:
        """Judge the foreign load since the previous call (what ran during the last measurement); while it is
        above `max_load` cores, sleep in windows of `window_s` and judge again.

        Waiting stops for good once this monitor has waited `budget_s` in all (a machine that stays busy
        should not stall a profile forever); a measurement that then starts on a busy machine is counted in
        `busy`. Costs nothing on a quiet machine. Returns the last load judged (None: no limit, not
        measurable, or less than `window_s` since the previous judgement, which is left to the next call).
        """
        if max_load is None or self._last is None or time.monotonic() - self._last[0] < window_s:
            return None
        load = self.foreign_load()
        start = time.monotonic()
        while load is not None and load > max_load and self.waited_s + time.monotonic() - start < budget_s:
            time.sleep(window_s)
            load = self.foreign_load()
        self.waited_s += time.monotonic() - start
        if load is not None and load > max_load:
            self.busy += 1
        return load


def default_max_load(device: torch.device | str, threads: int | None) -> float | None:
    """The most foreign CPU load a CPU measurement starts under: the cores this process leaves free, plus a
    quarter core (then nobody needs to share our cores). None (no gate) for CUDA and when unknown."""
    if torch.device(device).type != "cpu" or not os.path.exists("/proc/stat"):
        return None
    cores = os.cpu_count() or 1
    used = threads or torch.get_num_threads()
    return max(0.25, cores - used + 0.25)
