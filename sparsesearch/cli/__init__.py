"""The `sparsesearch` command line. Each module of this package defines `COMMANDS`, a list of Command classes;
they are discovered automatically. Commands parse, call the library, and print; nothing else prints or exits."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import TextIO

from ..errors import SparseSearchError, SparseSearchWarning
from ._base import Command, CommandError

__all__ = ["main", "build_parser", "Command", "CommandError"]


def _commands() -> list[type[Command]]:
    found: list[type[Command]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.extend(getattr(module, "COMMANDS", []))
    return sorted(found, key=lambda c: c.name)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="sparsesearch",
        description="Prune attention windows of windowed ViTs with a hardware-aware layerwise sparsity search.",
    )
    parser.add_argument("--version", action="version", version=f"sparsesearch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cls in _commands():
        cmd = cls()
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


@contextlib.contextmanager
def _one_line_warnings(command: str) -> Iterator[None]:
    """Print the library's warnings (`SparseSearchWarning`) as `sparsesearch CMD: warning: ...` (one line, once
    each); other warnings go to the handler that was installed."""
    previous = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, SparseSearchWarning):
            print(f"sparsesearch {command}: warning: {message}", file=sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("default", SparseSearchWarning)
        warnings.showwarning = show
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (2 for any user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        with _one_line_warnings(args.command):
            return int(args._run(args) or 0)
    except (SparseSearchError, CommandError) as e:
        print(f"sparsesearch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sparsesearch {args.command}: interrupted (long-running commands resume with --resume)", file=sys.stderr)
        return 130
