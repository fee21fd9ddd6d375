"""Options declared once: a settings dataclass's field holds the default and the help; the CLI is built from it.

    @dataclass
    class MySettings:
        population: int = option(32, help="configs per generation")

`sparsesearch.cli._base.add_options(parser, MySettings)` then adds ``--population`` (type, default and help from
the field); `with_overrides(settings, overrides)` applies keyword arguments to a settings object, refusing a name
that is not one of its fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import SparseSearchError

__all__ = ["option", "settings_from", "with_overrides"]

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, *, help: str, **cli: Any) -> Any:
    """A dataclass field with its help text (and how the CLI spells it) in its metadata.

    Args:
        default: the default (a list or dict default is copied per instance).
        help: what the option does, as `--help` prints it.
        **cli: how the command line differs from the field: ``flag`` (default ``--field-name``), ``metavar``,
            ``choices``, ``type`` (an argparse converter; default: the field's own type), ``nargs``,
            ``required``, ``exclusive`` (options sharing this name are mutually exclusive), or ``cli=False``
            for a setting the command line does not offer.
    """
    metadata = {"help": help, **cli}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def with_overrides(settings: T, overrides: Mapping[str, Any], what: str = "settings") -> T:
    """`settings` with the fields named in `overrides` replaced; a name that is no field raises SparseSearchError
    naming the known ones (a silently ignored setting is a wrong experiment)."""
    if not overrides:
        return settings
    names = [f.name for f in dataclasses.fields(settings)]  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise SparseSearchError(f"{what}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return dataclasses.replace(settings, **overrides)  # type: ignore[type-var]


def settings_from(cls: type[T], settings: T | None, overrides: Mapping[str, Any], what: str = "settings") -> T:
    """`settings` with `overrides` applied (`with_overrides`), or, without settings, a `cls` made of the
    overrides (its defaults for the rest); an unknown name or a missing required one raises SparseSearchError."""
    if settings is not None:
        return with_overrides(settings, overrides, what)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = [f.name for f in fields]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise SparseSearchError(f"{what}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    missing = [
        f.name
        for f in fields
        if f.name not in overrides and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SparseSearchError(f"{what}: {', '.join(missing)} must be given")
    return cls(**overrides)
