"""Accuracy of configs for the search: evaluators (serial or Ray) behind a persistent cache keyed by genome."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from ..config import SparsityConfig
from ..space import SearchSpace

__all__ = ["BatchEvaluator", "SerialEvaluator", "AccuracyCache"]


class BatchEvaluator(Protocol):
    """Anything that scores a batch of configs (higher is better)."""

    def __call__(self, configs: Sequence[SparsityConfig]) -> list[float]: ...


class SerialEvaluator:
    """Evaluate configs one after another in this process with `fn(config) -> accuracy`."""

    def __init__(self, fn: Callable[[SparsityConfig], float]) -> None:
        self.fn = fn

    def __call__(self, configs: Sequence[SparsityConfig]) -> list[float]:
        return [float(self.fn(c)) for c in configs]


def _key(genes: np.ndarray) -> str:
    return ",".join(str(int(g)) for g in genes)


class AccuracyCache:
    """Accuracy per genome, computed once: in memory and, with `path`, appended to a JSONL file that a resumed
    search reads back (a torn last line from a killed run is ignored).

    `on_evaluated(n)` is called after each batch of new evaluations (progress bars).
    """

    def __init__(
        self,
        space: SearchSpace,
        evaluator: BatchEvaluator,
        path: str | os.PathLike | None = None,
        on_evaluated: Callable[[int], None] | None = None,
    ) -> None:
        self.space = space
        self.evaluator = evaluator
        self.path = Path(path) if path is not None else None
        self.on_evaluated = on_evaluated
        self.values: dict[str, float] = {}
        self.n_new = 0
        if self.path is not None and self.path.is_file():
            text = self.path.read_text()
            if text and not text.endswith("\n"):  # torn write of a killed run: drop the partial line
                text = text[: text.rfind("\n") + 1]
                with open(self.path, "r+") as f:
                    f.truncate(len(text.encode()))
            for line in text.splitlines():
                try:
                    rec = json.loads(line)
                    self.values[rec["genes"]] = float(rec["accuracy"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue

    def __len__(self) -> int:
        return len(self.values)

    def lookup(self, genes: np.ndarray) -> float | None:
        return self.values.get(_key(genes))

    def evaluate(self, X: np.ndarray) -> np.ndarray:
        """(n, n_var) genomes -> (n,) accuracies, evaluating only genomes never seen before (each once)."""
        X = np.atleast_2d(X)
        keys = [_key(x) for x in X]
        todo = list(dict.fromkeys(k for k in keys if k not in self.values))
        if todo:
            rows = np.stack([X[keys.index(k)] for k in todo])
            scores = self.evaluator([self.space.decode(r) for r in rows])
            if len(scores) != len(todo):
                raise RuntimeError(f"evaluator returned {len(scores)} scores for {len(todo)} configs")
            self.record(rows, scores)
        return np.array([self.values[k] for k in keys], dtype=np.float64)

    def record(self, X: np.ndarray, scores: Sequence[float]) -> None:
        """Store accuracies computed elsewhere (e.g. by Ray Tune trials): (n, n_var) genomes, n scores."""
        new = [(_key(x), float(s)) for x, s in zip(np.atleast_2d(X), scores) if _key(x) not in self.values]
        if not new:
            return
        self.values.update(new)
        self.n_new += len(new)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write("\n".join(json.dumps({"genes": k, "accuracy": s}) for k, s in new) + "\n")
                f.flush()
                os.fsync(f.fileno())
        if self.on_evaluated is not None:
            self.on_evaluated(len(new))

    def items(self) -> list[tuple[np.ndarray, float]]:
        """Every evaluated genome with its accuracy."""
        return [(np.array([int(v) for v in k.split(",")], dtype=np.int64), a) for k, a in self.values.items()]
