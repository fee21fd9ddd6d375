"""The `sparsesearch` command line. Each module of this package defines `COMMANDS`, a list of Command classes;
they are discovered automatically. Commands parse, call the library, and print; nothing else prints or exits."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence

from ..errors import SparseSearchError
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (2 for any user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (SparseSearchError, CommandError) as e:
        print(f"sparsesearch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sparsesearch {args.command}: interrupted (long-running commands resume with --resume)", file=sys.stderr)
        return 130
