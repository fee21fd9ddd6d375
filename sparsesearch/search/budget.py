"""Latency budgets: `30ms`, `30 ms`, `0.03s`, `30000us`, or `0.6x` (a fraction of the dense model's latency)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BudgetError

__all__ = ["Budget", "parse_budget"]

_UNITS = {"ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3}
_PATTERN = re.compile(r"^\s*((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(ms|s|us|µs|x)\s*$")


@dataclass(frozen=True)
class Budget:
    """A latency budget, absolute (milliseconds) or relative to the dense model (ratio)."""

    value: float
    relative: bool = False
    text: str = ""

    def resolve(self, dense_ms: float, min_ms: float, max_ms: float) -> float:
        """Milliseconds of this budget; raises BudgetError if no config of the space can meet it."""
        ms = self.value * dense_ms if self.relative else self.value
        if ms < min_ms:
            shown = f"{self.text} ({ms:.2f} ms)" if self.relative else self.text
            raise BudgetError(
                f"budget {shown} is below the fastest config of the space ({min_ms:.2f} ms); achievable range "
                f"{min_ms:.2f}-{max_ms:.2f} ms, or {min_ms / dense_ms:.2f}x-{max_ms / dense_ms:.2f}x of dense"
            )
        return ms

    def __str__(self) -> str:
        return self.text or (f"{self.value:g}x" if self.relative else f"{self.value:g}ms")


def parse_budget(text: str) -> Budget:
    """Parse a budget string; raises BudgetError with the accepted forms otherwise."""
    m = _PATTERN.match(str(text))
    if not m:
        raise BudgetError(
            f"cannot read latency budget {text!r}: write a time like 30ms, '30 ms', 0.03s or 30000us, "
            "or a fraction of the dense latency like 0.6x"
        )
    number = float(m.group(1))
    unit = m.group(2)
    if number <= 0:
        raise BudgetError(f"latency budget {text!r} must be positive")
    if unit == "x":
        if number > 10:
            raise BudgetError(f"relative budget {text!r} is over 10x the dense latency; did you mean ms?")
        return Budget(number, relative=True, text=str(text).strip())
    return Budget(number * _UNITS[unit], relative=False, text=str(text).strip())
