"""Base class of CLI commands and shared argument helpers."""

from __future__ import annotations

import argparse
from pathlib import Path


class CommandError(Exception):
    """A usage problem found by a command (bad combination of flags, missing file); one line, exit 2."""


class Command:
    """A subcommand: `name`, `help`, arguments, and `run(args) -> exit code`."""

    name: str = ""
    help: str = ""
    description: str = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:  # pragma: no cover - interface
        pass

    def run(self, args: argparse.Namespace) -> int:  # pragma: no cover - interface
        raise NotImplementedError


def existing_file(value: str) -> Path:
    """argparse type: a path that must exist."""
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value} does not exist")
    return path


def resolution(value: str) -> tuple[int, int]:
    """argparse type: '512' or '512x1024' -> (H, W)."""
    try:
        parts = [int(v) for v in value.lower().replace("*", "x").split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution {value!r} must look like 512 or 512x1024") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"resolution {value!r} must look like 512 or 512x1024")
    return parts[0], parts[1]


def add_model_source(parser: argparse.ArgumentParser, space: bool = True) -> None:
    """The model a command works on: ``--supernet CKPT`` (from `adapt`), or a pretrained ``--model NAME
    --checkpoint PATH`` with ``--space FILE`` (no training needed); `head` picks a pretrained model's head."""
    g = parser.add_argument_group("model (a supernet, or a pretrained model with --space)")
    g.add_argument(
        "--supernet", default=None, metavar="CKPT", help="supernet checkpoint written by `sparsesearch adapt`"
    )
    g.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="a pretrained model instead of a supernet (e.g. samvit_base_patch16; `sparsesearch models` lists them); "
        "needs --checkpoint and --space",
    )
    g.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="the --model's weights: timm or Microsoft Swin, timm samvit or SAM, a supernet, or an export folder",
    )
    g.add_argument(
        "--head",
        choices=["auto", "none"],
        default="auto",
        help="the --model's head: auto (the checkpoint's segmentation or classification head, if it has one), or "
        "none (the backbone's features, e.g. SAM's neck embedding)",
    )
    if space:
        g.add_argument(
            "--space", default=None, metavar="FILE", help="search space (needed with --model; default: the supernet's)"
        )
