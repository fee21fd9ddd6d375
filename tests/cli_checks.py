"""Command-line helpers the tests share: a quick search's arguments and the one-line error check."""

from __future__ import annotations

from pathlib import Path

import pytest
from sparsesearch.cli import main


def quick_search_args(out: Path) -> list[str]:
    """The arguments of a search small enough for a CPU test (4 configs a generation, 2 generations) into `out`."""
    return ["--out", str(out), "--population", "4", "--generations", "2"]


def one_line_exit_2(args: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    """`sparsesearch ARGS` exits with 2 and prints one line on stderr, no traceback, holding each of `needles`."""
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
