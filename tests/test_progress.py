"""Progress output: whole lines every few percent when the output is not a terminal, a live bar when it is."""

from __future__ import annotations

import io

from sparsesearch.progress import progress_bar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gives_a_line_every_five_percent():
    out = io.StringIO()
    with progress_bar(200, desc="evolve", unit="gen", file=out) as bar:
        for _ in range(200):
            bar.update(1)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 15 <= len(lines) <= 23, lines  # about one per 5 % (plus the first and last)
    assert all(line.startswith("evolve:") for line in lines)
    assert "200/200" in lines[-1] and len(set(lines)) == len(lines)


def test_terminal_redraws_in_place_and_disabled_prints_nothing():
    tty = _Tty()
    with progress_bar(10, file=tty) as bar:
        for _ in range(10):
            bar.update(1)
    assert "\r" in tty.getvalue()
    quiet = io.StringIO()
    with progress_bar(10, file=quiet, enabled=False) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""


def test_unknown_total_prints_a_final_line():
    out = io.StringIO()
    with progress_bar(desc="profile", unit="entry", file=out) as bar:
        bar.update(7)
    assert out.getvalue().splitlines()[-1].startswith("profile: 7entry")
