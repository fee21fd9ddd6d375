"""Base class of CLI commands and shared argument helpers."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Collection
from typing import Any


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


_TYPES = {"int": int, "float": float, "str": str}


def _field_type(f: dataclasses.Field[Any]) -> str:
    """The first type of a field's annotation ("int" of "int | None")."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return text.split("|")[0].strip()


def add_options(
    parser: argparse.ArgumentParser | Any,
    settings: type,
    *,
    exclude: Collection[str] = (),
    suppress_defaults: bool = False,
) -> None:
    """Add one flag per field of the dataclass `settings` (declared with `sparsesearch.options.option`): its
    name, type, default and help come from the field, so each option is declared once.

    A bool field is a ``--flag/--no-flag`` switch; a field whose metadata says ``cli=False``, or named in
    `exclude`, is left out. `suppress_defaults`: unset flags stay absent from the namespace (so a config file's
    values are overridden only by flags actually given); the help still states the field's default.
    """
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        meta = dict(f.metadata)
        if f.name in exclude or not meta.get("cli", True) or "help" not in meta:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        kw: dict[str, Any] = {"help": _help(meta["help"], default).replace("%", "%%")}
        kind = _field_type(f)
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = meta.get("type", _TYPES.get(kind, str))
            if kw["type"] is int:
                kw["metavar"] = "N"
            for key in ("metavar", "choices", "nargs"):
                if key in meta:
                    kw[key] = meta[key]
        if meta.get("required"):
            kw["required"] = True
        else:
            kw["default"] = argparse.SUPPRESS if suppress_defaults else default
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        target = parser
        if "exclusive" in meta:
            if meta["exclusive"] not in groups:
                groups[meta["exclusive"]] = parser.add_mutually_exclusive_group()
            target = groups[meta["exclusive"]]
        target.add_argument(flag, dest=f.name, **kw)


def _help(text: str, default: Any) -> str:
    """The field's help, with its default appended unless the text speaks of it or there is none to state."""
    if default is None or default is False or "default" in text:
        return text
    shown = "on" if default is True else default
    return f"{text} (default {shown})"


def options_from_args(settings: type, args: argparse.Namespace, **extra: Any) -> Any:
    """An instance of the dataclass `settings` from the parsed flags (fields absent from `args` keep their
    defaults) and `extra`."""
    names = [f.name for f in dataclasses.fields(settings)]
    values = {k: getattr(args, k) for k in names if hasattr(args, k)}
    return settings(**{**values, **extra})


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
        help="a pretrained model instead of a supernet (a name `sparsesearch models` lists); "
        "needs --checkpoint and --space",
    )
    g.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="the --model's weights: timm's layout or the model's original release, a supernet, or an export folder",
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
