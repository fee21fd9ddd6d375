"""Progress bars that suit where the output goes: a live tqdm bar on a terminal, a plain line every few percent
elsewhere (CI logs, `make demo > log`), never a stream of carriage returns in a file."""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

__all__ = ["progress_bar", "LINE_EVERY"]

#: When the output is not a terminal: one line per this fraction of the total (or per this many seconds when
#: the total is unknown).
LINE_EVERY = 0.05
LINE_SECONDS = 30.0


class _Lines:
    """A text stream for tqdm that turns its carriage-return redraws into whole lines, dropping repeats."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line and line != self.last:
            self.stream.write(line + "\n")
            self.last = line
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(
    total: int | None = None,
    *,
    desc: str | None = None,
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
    file: IO[str] | None = None,
) -> tqdm:
    """A tqdm bar on `file` (default: stderr). On a terminal it redraws in place; otherwise it prints one line
    per `LINE_EVERY` of `total` (per `LINE_SECONDS` when the total is unknown) and a last line when closed.
    `enabled=False` gives a bar that prints nothing (its counters still work)."""
    stream = file if file is not None else sys.stderr
    kw: dict[str, Any] = dict(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled)
    if _is_terminal(stream):
        return tqdm(file=stream, dynamic_ncols=True, **kw)
    if total:
        kw.update(miniters=max(1, int(total * LINE_EVERY)), mininterval=0.0, maxinterval=float("inf"))
    else:
        kw.update(mininterval=LINE_SECONDS, maxinterval=float("inf"))
    return tqdm(file=_Lines(stream), ncols=100, **kw)
