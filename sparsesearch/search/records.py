"""The typed records a search hands to its readers (the CLI, the demo, export): written and read by the same code.

`Candidate` is one config with its figures; `MeasuredRow` / `Measured` are the finalists' timing on this machine
(`search.finalists`); `BestRecord` is best.json and `ParetoRecord` pareto.json. Each has `to_dict` (the file's
JSON) and `from_dict`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from ..config import SparsityConfig
from ..fileio import atomic_write_text

__all__ = ["BestRecord", "Candidate", "Measured", "MeasuredRow", "ParetoRecord"]


def _config(value: SparsityConfig | Mapping[str, Any]) -> SparsityConfig:
    return value if isinstance(value, SparsityConfig) else SparsityConfig.from_dict(dict(value))


@dataclass
class Candidate:
    """A config with its figures: predicted latency (ms), accuracy (the caller's metric), GFLOPs if counted."""

    config: SparsityConfig
    latency_ms: float
    accuracy: float
    gflops: float | None = None
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "latency_ms": self.latency_ms,
            "accuracy": self.accuracy,
            "gflops": self.gflops,
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        gflops = d.get("gflops")
        return cls(
            _config(d["config"]),
            float(d["latency_ms"]),
            float(d["accuracy"]),
            None if gflops is None else float(gflops),
            str(d.get("label", "")),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON (config plus figures); `SparsityConfig.load` reads the config back."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")


@dataclass
class MeasuredRow:
    """One config the finalists timed: its predicted and measured latency, the measured ratio to dense with its
    standard error over the timing's rounds, and whether the measured rule admits it (`within_budget`)."""

    label: str
    config: SparsityConfig
    accuracy: float
    predicted_ms: float
    measured_ms: float
    measured_x_dense: float
    measured_x_dense_se: float
    measured_on_table_ms: float
    within_budget: bool

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MeasuredRow:
        kw = {f.name: d[f.name] for f in fields(cls)}
        return cls(**{**kw, "config": _config(d["config"]), "within_budget": bool(d["within_budget"])})


@dataclass
class Measured:
    """The finalists' timing on this machine (`Finalists.choose`): every row, and what it did to the pick."""

    finalists: int
    baselines_timed: int
    dense_measured_ms: float
    dense_predicted_ms: float
    guard: float
    rows: list[MeasuredRow]
    outcome: str = ""
    measured_x_dense: float | None = None  # the pick's, when a finalist measured within the budget
    sitting_se: float = 0.0  # the guard's allowance for another sitting (`Finalists.sitting_se`); 0 in old records

    def row(self, config: SparsityConfig | Mapping[str, Any]) -> MeasuredRow | None:
        """The timing of `config`, if the finalists timed it."""
        key = _config(config).key()
        return next((r for r in self.rows if r.config.key() == key), None)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["rows"] = [r.to_dict() for r in self.rows]
        if self.measured_x_dense is None:
            del d["measured_x_dense"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measured:
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        return cls(**{**kw, "rows": [MeasuredRow.from_dict(r) for r in d.get("rows", [])]})


def _optional(d: Mapping[str, Any] | None) -> Candidate | None:
    return Candidate.from_dict(d) if d else None


#: the search's header, in best.json and pareto.json alike
_HEADER = ("metric", "budget_ms", "algorithm", "space", "evaluated")


def _header(d: Mapping[str, Any]) -> dict[str, Any]:
    """The header fields of a best.json / pareto.json document, typed."""
    return {
        "metric": str(d["metric"]),
        "budget_ms": float(d["budget_ms"]),
        "algorithm": str(d["algorithm"]),
        "space": str(d["space"]),
        "evaluated": int(d["evaluated"]),
    }


R = TypeVar("R", bound="_JsonFile")


class _JsonFile:
    """`load` / `save` of a record that has `to_dict` and `from_dict` (written atomically)."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        record: R = cls.from_dict(json.loads(Path(path).read_text()))
        return record

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")


@dataclass
class BestRecord(_JsonFile):
    """best.json: the config to deploy with its figures (a loadable `SparsityConfig` file), the search's header,
    how it was picked (`pick`, a `selection.Pick`), the best baseline of each kind within the budget, and the
    caller's extra fields (`meta`: the budget's text, the supernet, the table...)."""

    best: Candidate
    metric: str
    budget_ms: float
    algorithm: str
    space: str
    evaluated: int
    pick: Any  # selection.Pick (typed loosely: selection imports this module)
    uniform_sparsity: Candidate | None = None
    uniform_resize: Candidate | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        header = {k: getattr(self, k) for k in _HEADER}
        return {
            **self.best.to_dict(),
            **header,
            **self.meta,
            "pick": self.pick.to_dict(),
            "baselines": {
                "uniform_sparsity": self.uniform_sparsity.to_dict() if self.uniform_sparsity else None,
                "uniform_resize": self.uniform_resize.to_dict() if self.uniform_resize else None,
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BestRecord:
        from .selection import Pick  # noqa: PLC0415  (selection imports this module)

        own = {"config", "latency_ms", "accuracy", "gflops", "label", "pick", "baselines", *_HEADER}
        base = d.get("baselines") or {}
        return cls(
            best=Candidate.from_dict(d),
            **_header(d),
            pick=Pick.from_dict(d["pick"]),
            uniform_sparsity=_optional(base.get("uniform_sparsity")),
            uniform_resize=_optional(base.get("uniform_resize")),
            meta={k: v for k, v in d.items() if k not in own},
        )

    @property
    def measured(self) -> Measured | None:
        """The finalists' timing on this machine (None when the search ran without finalists)."""
        m = self.pick.measured
        return m if isinstance(m, Measured) else None

    def within_budget(self, config: SparsityConfig | Mapping[str, Any]) -> bool | None:
        """Whether the search's measured rule (the one its pick had to pass: measured ratio to dense plus
        `guard` standard errors within the budget) admits `config`; None when its finalists did not time it."""
        row = self.measured.row(config) if self.measured is not None else None
        return None if row is None else row.within_budget


@dataclass
class ParetoRecord(_JsonFile):
    """pareto.json: the accuracy/latency front within the budget and every baseline evaluated."""

    metric: str
    budget_ms: float
    algorithm: str
    space: str
    evaluated: int
    front: list[Candidate]
    uniform_sparsity: list[Candidate]
    uniform_resize: list[Candidate]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in _HEADER},
            **self.meta,
            "front": [p.to_dict() for p in self.front],
            "baselines": {
                "uniform_sparsity": [p.to_dict() for p in self.uniform_sparsity],
                "uniform_resize": [p.to_dict() for p in self.uniform_resize],
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParetoRecord:
        base = d.get("baselines") or {}
        own = {"front", "baselines", *_HEADER}
        return cls(
            **_header(d),
            front=[Candidate.from_dict(p) for p in d.get("front", [])],
            uniform_sparsity=[Candidate.from_dict(p) for p in base.get("uniform_sparsity", [])],
            uniform_resize=[Candidate.from_dict(p) for p in base.get("uniform_resize", [])],
            meta={k: v for k, v in d.items() if k not in own},
        )
