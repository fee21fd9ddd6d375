"""Resuming a profile: the rounds measured so far live in `<table>.partial` (written atomically after every
measurement) under a hash of the machine, software and settings; a rerun with the same hash measures only what is
missing, and one that cannot use the file says why in one line."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import LatencyTableError, SparseSearchWarning
from ..fileio import atomic_write_text, set_aside
from ..space import SearchSpace
from .measure import Stat
from .plan import Entry, ProfileSettings
from .structure import space_hash

__all__ = ["PartialProfileWarning", "partial_path", "settings_hash", "PartialResults"]


class PartialProfileWarning(SparseSearchWarning):
    """The partial results of an earlier profile run cannot be resumed (corrupt, or other settings)."""


def partial_path(out: str | os.PathLike) -> Path:
    """Where a profile's partial results live until the table is complete."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def settings_hash(
    environment: Mapping[str, Any],
    settings: ProfileSettings,
    resolutions: Sequence[tuple[int, int]],
    space: SearchSpace,
) -> str:
    """Identifies measurements that can be reused by a resumed run (same machine, software and settings)."""
    env = {k: v for k, v in environment.items() if k not in ("platform",)}
    s = asdict(settings)
    if s["runtime"] == "torch":  # the default: a partial file written before the runtime existed still resumes
        del s["runtime"]
    s["resolutions"] = [list(r) for r in resolutions]
    text = json.dumps({"env": env, "settings": s, "space": space_hash(space)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PartialResults:
    """The rounds of every entry measured so far for the table at `out` (`done`: entry key -> one Stat per
    round; an in-model entry's parts and plain forward under `key|part`), saved to `partial_path(out)`."""

    def __init__(self, out: str | os.PathLike, settings_hash: str) -> None:
        self.path = partial_path(out)
        self.settings_hash = settings_hash
        self.done: dict[str, list[Stat]] = {}

    def resume(self, entries: Sequence[Entry], rounds: int) -> int:
        """Take over an earlier run's rounds of these entries (at most `rounds` each; the parts of a round whose
        total was not saved are dropped). Returns the number of (round, entry) pairs already measured."""
        keys = {e.key for e in entries}
        done = {k: v[:rounds] for k, v in self.load().items() if k.split("|")[0] in keys}
        for k in [k for k in done if "|" in k]:
            done[k] = done[k][: len(done.get(k.split("|")[0], []))]
        self.done = done
        return sum(len(v) for k, v in done.items() if "|" not in k)

    def todo(self, entries: Sequence[Entry], round_index: int) -> list[Entry]:
        """The entries not yet measured in round `round_index`."""
        return [e for e in entries if len(self.done.setdefault(e.key, [])) <= round_index]

    def load(self) -> dict[str, list[Stat]]:
        """Per entry, the rounds measured by an earlier run with the same settings (empty if none).

        A partial file that cannot be read is renamed to `<partial>.corrupt` and reported with a
        `PartialProfileWarning`; one from other settings, another machine or other software is reported the same
        way and left in place (the first measurement of this run replaces it). Either way measuring starts over.
        """
        path = self.path
        if not path.is_file():
            return {}
        try:
            text = path.read_bytes()
        except OSError as e:
            raise LatencyTableError(
                f"cannot read the partial profile {path} ({e.strerror}); "
                "fix its permissions, or delete it to start over"
            ) from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            if data.get("settings_hash") != self.settings_hash:
                warnings.warn(
                    f"ignoring the partial profile {path}: it was measured with other settings, on another machine "
                    "or with other software; measuring starts over and replaces it",
                    PartialProfileWarning,
                    stacklevel=4,
                )
                return {}
            return {str(k): [Stat.from_dict(v) for v in rounds] for k, rounds in (data.get("entries") or {}).items()}
        except (ValueError, TypeError, AttributeError, KeyError, LatencyTableError) as e:
            kept = set_aside(path)
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            warnings.warn(
                f"the partial profile {path} is corrupt ({reason}); kept it as {kept.name}, measuring starts over",
                PartialProfileWarning,
                stacklevel=4,
            )
            return {}

    def record(self, entry: Entry, result: Stat | dict[str, Stat]) -> Stat:
        """Add one round of `entry` and save: an in-model result's total under the entry's key and each of its
        parts (and the plain forward) under `key|part`. Returns the entry's own Stat."""
        if isinstance(result, dict):
            for name, part_stat in result.items():
                if name != "total":
                    self.done.setdefault(f"{entry.key}|{name}", []).append(part_stat)
            result = result["total"]
        self.done.setdefault(entry.key, []).append(result)
        payload = {
            "settings_hash": self.settings_hash,
            "entries": {k: [s.to_dict() for s in v] for k, v in self.done.items() if v},
        }
        atomic_write_text(self.path, json.dumps(payload))
        return result

    def remove(self) -> None:
        """The table is complete: the partial file goes."""
        self.path.unlink(missing_ok=True)
