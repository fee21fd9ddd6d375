"""Sparsity configs: one sparsity per block, one window size per stage, optionally an input resolution."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .fileio import atomic_write_text

__all__ = ["SparsityConfig", "read_structured"]

_KEYS = ("sparsity", "window_size", "resolution")


def _per_stage(window_size: int | Sequence[int], stages: int) -> list[int]:
    """One window size per stage: an int is repeated for every stage."""
    return [window_size] * stages if isinstance(window_size, int) else list(window_size)


def read_structured(path: str | os.PathLike, error: type[Exception] = ConfigError) -> Any:
    """Parse a JSON or YAML file (chosen by suffix; YAML otherwise), raising `error` with the path on failure."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise error(f"{path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {first}") from None


def _as_resolution(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"resolution must be a positive int or [height, width], got {value!r}")


@dataclass
class SparsityConfig:
    """A point of the search space, as plain data.

    Attributes:
        sparsity: per stage, per block, the fraction of windows pruned, each in [0, 1).
        window_size: per stage, the (square, nominal) window size.
        resolution: optional (height, width) of the input this config is meant for.
    """

    sparsity: list[list[float]]
    window_size: list[int]
    resolution: tuple[int, int] | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.sparsity, (list, tuple)) or not all(isinstance(s, (list, tuple)) for s in self.sparsity):
            raise ConfigError("sparsity must be a list (one per stage) of lists (one float per block)")
        sparsity: list[list[float]] = []
        for i, stage in enumerate(self.sparsity):
            row = []
            for j, p in enumerate(stage):
                if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
                    raise ConfigError(f"sparsity[{i}][{j}] must be a number in [0, 1), got {p!r}")
                if not 0.0 <= p < 1.0:
                    raise ConfigError(f"sparsity[{i}][{j}] = {p} is outside [0, 1): a block keeps at least one window")
                row.append(float(p))
            sparsity.append(row)
        self.sparsity = sparsity
        if isinstance(self.window_size, int) and not isinstance(self.window_size, bool):
            self.window_size = [self.window_size] * len(sparsity)
        if not isinstance(self.window_size, (list, tuple)):
            raise ConfigError(f"window_size must be a list of ints (one per stage), got {self.window_size!r}")
        for i, w in enumerate(self.window_size):
            if isinstance(w, bool) or not isinstance(w, int) or w < 1:
                raise ConfigError(f"window_size[{i}] must be a positive int, got {w!r}")
        self.window_size = [int(w) for w in self.window_size]
        if len(self.window_size) != len(sparsity):
            raise ConfigError(
                f"window_size has {len(self.window_size)} entries but sparsity has {len(sparsity)} stages"
            )
        self.resolution = _as_resolution(self.resolution)

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def dense(
        cls, depths: Sequence[int], window_size: int | Sequence[int] = 7, resolution: Any = None
    ) -> SparsityConfig:
        """All-zero sparsity for a model with these stage depths."""
        return cls([[0.0] * d for d in depths], _per_stage(window_size, len(depths)), resolution)

    @classmethod
    def uniform(
        cls, p: float, depths: Sequence[int], window_size: int | Sequence[int] = 7, resolution: Any = None
    ) -> SparsityConfig:
        """The same sparsity p for every block."""
        return cls([[p] * d for d in depths], _per_stage(window_size, len(depths)), resolution)

    # ---- validation --------------------------------------------------------------------------------------
    def validate(self, depths: Sequence[int], max_window: Sequence[int]) -> None:
        """Raise ConfigError unless this config fits a model with these stage depths and max windows."""
        if len(self.sparsity) != len(depths):
            raise ConfigError(f"config has {len(self.sparsity)} stages but the model has {len(depths)}")
        for i, (row, d) in enumerate(zip(self.sparsity, depths)):
            if len(row) != d:
                raise ConfigError(f"sparsity[{i}] has {len(row)} values but stage {i} of the model has {d} blocks")
        for i, (w, m) in enumerate(zip(self.window_size, max_window)):
            if w > m:
                raise ConfigError(
                    f"window_size[{i}] = {w} does not fit: stage {i}'s position table allows at most {m} "
                    "(create the model with a larger max_window_size)"
                )

    # ---- serialisation -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"sparsity": [list(r) for r in self.sparsity], "window_size": list(self.window_size)}
        if self.resolution is not None:
            d["resolution"] = list(self.resolution)
        return d

    @classmethod
    def from_dict(cls, data: Any) -> SparsityConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping with keys {', '.join(_KEYS)}, got {type(data).__name__}")
        if "config" in data and isinstance(data["config"], dict) and "sparsity" not in data:
            data = data["config"]  # files written by `evolve` wrap the config with its figures
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(map(repr, unknown))}: allowed are {', '.join(_KEYS)}")
        for key in ("sparsity", "window_size"):
            if key not in data:
                raise ConfigError(f"config is missing {key!r}")
        return cls(data["sparsity"], data["window_size"], data.get("resolution"))

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON (.json) or YAML (anything else), atomically."""
        path = Path(path)
        if path.suffix.lower() == ".json":
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        else:
            text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SparsityConfig:
        try:
            return cls.from_dict(read_structured(path))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}" if str(path) not in str(e) else str(e)) from None

    # ---- views -------------------------------------------------------------------------------------------
    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(r) for r in self.sparsity)

    def flat(self) -> list[float]:
        """Block sparsities in model order."""
        return [p for row in self.sparsity for p in row]

    def mean_sparsity(self) -> float:
        flat = self.flat()
        return sum(flat) / len(flat)

    def key(self) -> str:
        """A canonical string, usable as a cache key."""
        return json.dumps(self.to_dict(), sort_keys=True)
