"""Accuracy of configs for the search: evaluators (serial or Ray) behind a persistent cache keyed by genome,
the adapter that turns a user's `accuracy(model, config) -> float` into a checked config scorer, and the built-in
accuracies over an evaluator (`EvaluatorAccuracy`; `FidelityAccuracy` scores without labels)."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import numbers
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..config import SparsityConfig
from ..errors import SparseSearchError
from ..models.layers import config_applied
from ..space import SearchSpace

__all__ = [
    "AccuracyCache",
    "AccuracyFn",
    "AccuracyFunctionError",
    "BatchEvaluator",
    "ConfigScorer",
    "EvaluatorAccuracy",
    "FidelityAccuracy",
    "KeyedCache",
    "SerialEvaluator",
    "callable_name",
    "import_callable",
]

AccuracyFn = Callable[[Any, SparsityConfig], float]
"""`accuracy(model_with_config_applied, config) -> float`, higher is better."""


class AccuracyFunctionError(SparseSearchError):
    """A user's accuracy function raised, or returned something other than a finite number."""


class BatchEvaluator(Protocol):
    """Anything that scores a batch of configs (higher is better)."""

    def __call__(self, configs: Sequence[SparsityConfig]) -> list[float]: ...


class SerialEvaluator:
    """Evaluate configs one after another in this process with `fn(config) -> accuracy`.

    `incremental`: the cache records each result as it comes, so an error on the n-th config of a batch keeps
    the n - 1 before it.
    """

    incremental = True

    def __init__(self, fn: Callable[[SparsityConfig], float]) -> None:
        self.fn = fn

    def __call__(self, configs: Sequence[SparsityConfig]) -> list[float]:
        return [float(self.fn(c)) for c in configs]


def _key(genes: np.ndarray) -> str:
    return ",".join(str(int(g)) for g in genes)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of an append-only JSONL file; a torn last line (a killed write) is cut off the file."""
    if not path.is_file():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        with open(path, "r+") as f:
            f.truncate(len(text.encode()))
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _append_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Append records and fsync: a record written is a record kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(json.dumps(r) for r in records) + "\n")
        f.flush()
        os.fsync(f.fileno())


class AccuracyCache:
    """Accuracy per genome, computed once: in memory and, with `path`, appended to a JSONL file that a resumed
    search reads back (a torn last line from a killed run is ignored).

    `on_evaluated(n)` is called after each batch of new evaluations (progress bars). `canon` ((n, n_var) ->
    (n, n_var), e.g. `latency.structure.GenomeCanon`) maps genomes that run the same model to one, which is what
    is evaluated and recorded: the same model is never evaluated twice under two genomes.
    """

    def __init__(
        self,
        space: SearchSpace,
        evaluator: BatchEvaluator,
        path: str | os.PathLike | None = None,
        on_evaluated: Callable[[int], None] | None = None,
        canon: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.space = space
        self.canon = canon
        self.evaluator = evaluator
        self.path = Path(path) if path is not None else None
        self.on_evaluated = on_evaluated
        self.values: dict[str, float] = {}
        self.n_new = 0
        if self.path is not None:
            for rec in read_jsonl(self.path):
                try:
                    self.values[rec["genes"]] = float(rec["accuracy"])
                except (KeyError, TypeError, ValueError):
                    continue

    def __len__(self) -> int:
        return len(self.values)

    def evaluate(self, X: np.ndarray) -> np.ndarray:
        """(n, n_var) genomes -> (n,) accuracies, evaluating only genomes never seen before (each once)."""
        X = np.atleast_2d(X)
        if self.canon is not None:
            X = self.canon(X)
        keys = [_key(x) for x in X]
        todo = list(dict.fromkeys(k for k in keys if k not in self.values))
        if todo:
            rows = np.stack([X[keys.index(k)] for k in todo])
            chunks = (
                [rows[i : i + 1] for i in range(len(rows))] if getattr(self.evaluator, "incremental", False) else [rows]
            )
            for chunk in chunks:
                scores = self.evaluator([self.space.decode(r) for r in chunk])
                if len(scores) != len(chunk):
                    raise RuntimeError(f"evaluator returned {len(scores)} scores for {len(chunk)} configs")
                self.record(chunk, scores)
        return np.array([self.values[k] for k in keys], dtype=np.float64)

    def record(self, X: np.ndarray, scores: Sequence[float]) -> None:
        """Store accuracies computed elsewhere (e.g. by Ray Tune trials): (n, n_var) genomes, n scores."""
        X = np.atleast_2d(X) if self.canon is None else self.canon(np.atleast_2d(X))
        new = [(_key(x), float(s)) for x, s in zip(X, scores) if _key(x) not in self.values]
        if not new:
            return
        self.values.update(new)
        self.n_new += len(new)
        if self.path is not None:
            _append_jsonl(self.path, [{"genes": k, "accuracy": s} for k, s in new])
        if self.on_evaluated is not None:
            self.on_evaluated(len(new))

    def items(self) -> list[tuple[np.ndarray, float]]:
        """Every evaluated genome with its accuracy."""
        return [(np.array([int(v) for v in k.split(",")], dtype=np.int64), a) for k, a in self.values.items()]


class KeyedCache:
    """Accuracy per config (keyed by `SparsityConfig.key()`) for configs outside the space's genomes, e.g. the
    dense model at the table's other resolutions; persisted like AccuracyCache."""

    def __init__(self, fn: Callable[[SparsityConfig], float], path: str | os.PathLike | None = None) -> None:
        self.fn = fn
        self.path = Path(path) if path is not None else None
        self.values: dict[str, float] = {}
        if self.path is not None:
            for rec in read_jsonl(self.path):
                try:
                    self.values[str(rec["config"])] = float(rec["accuracy"])
                except (KeyError, TypeError, ValueError):
                    continue

    def __call__(self, config: SparsityConfig) -> float:
        key = config.key()
        if key not in self.values:
            self.values[key] = float(self.fn(config))
            if self.path is not None:
                _append_jsonl(self.path, [{"config": key, "accuracy": self.values[key]}])
        return self.values[key]


def callable_name(fn: Any) -> str:
    """`module:qualname` of a function (or of a callable object's class)."""
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', repr(target))}"


def _as_score(value: Any) -> float | None:
    """A finite float from a number (Python, numpy, or a one-element tensor); None for anything else."""
    if hasattr(value, "numel") and hasattr(value, "item") and callable(value.numel) and value.numel() == 1:
        value = value.item()
    elif isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


class ConfigScorer:
    """`fn(config) -> float` from a user's `accuracy(model, config)`: applies the config to `model` (restoring
    the previous one after), checks the result is a finite number, and turns any exception into an
    AccuracyFunctionError that names the config. Picklable when the model and function are (Ray workers).

    Args:
        model: the supernet (anything with `set_config`), or None: the function gets None and the config.
        accuracy: the user's function.
    """

    def __init__(self, model: Any, accuracy: AccuracyFn) -> None:
        if not callable(accuracy):
            raise AccuracyFunctionError(
                f"accuracy must be a function accuracy(model, config) -> float, got {type(accuracy).__name__}"
            )
        self.model = model
        self.accuracy = accuracy
        self.name = callable_name(accuracy)

    def __call__(self, config: SparsityConfig) -> float:
        model = self.model
        # models without set_config (a user's own) are scored as they are
        applied = config_applied(model, config) if hasattr(model, "set_config") else contextlib.nullcontext()
        try:
            with applied:
                value = self.accuracy(model, config)
        except SparseSearchError:
            raise
        except Exception as e:
            raise AccuracyFunctionError(
                f"the accuracy function {self.name} raised {type(e).__name__}: {e} "
                f"(config {json.dumps(config.to_dict())})"
            ) from e
        score = _as_score(value)
        if score is None:
            raise AccuracyFunctionError(
                f"the accuracy function {self.name} returned {value!r} ({type(value).__name__}) for config "
                f"{json.dumps(config.to_dict())}: it must return a finite number, higher is better"
            )
        return score


def import_callable(ref: str, what: str = "--accuracy") -> Callable[..., Any]:
    """`package.module:function` (or `module:Class.attr`) -> the callable; the working directory is importable.

    Raises AccuracyFunctionError (one line) for a malformed reference, a module that cannot be imported, a
    missing attribute or something that is not callable.
    """
    module_name, sep, attr = str(ref).partition(":")
    if not sep or not module_name or not attr:
        raise AccuracyFunctionError(f"{what} {ref!r}: write it as package.module:function")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise AccuracyFunctionError(
                f"{what} {ref!r}: no module named {e.name!r} (is it installed, or in the working directory {cwd}?)"
            ) from None
        raise AccuracyFunctionError(f"{what} {ref!r}: importing {module_name} failed: {e}") from None
    except Exception as e:  # the user's module raised while importing
        raise AccuracyFunctionError(f"{what} {ref!r}: importing {module_name} raised {type(e).__name__}: {e}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AccuracyFunctionError(f"{what} {ref!r}: module {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise AccuracyFunctionError(f"{what} {ref!r}: {attr} is a {type(obj).__name__}, not a function")
    return obj


class EvaluatorAccuracy:
    """An accuracy `fn(model, config) -> percent` over an `evaluate.Evaluator` on a fixed subset of images, with the
    noise the pick rule uses (`noise`, `noise_between`). Subclasses say how the evaluator is built (`_make`) and the
    data's own input size (`native_size`: a config with another resolution runs on resized inputs). Built from
    plain data, so it pickles to Ray workers; the evaluator (and its data) is built at the first call."""

    metric = "accuracy"
    native_size: tuple[int, int] | None = None

    def __init__(self) -> None:
        self._ev: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ev": None}

    def _make(self, model: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def prepare(self, model: Any) -> None:
        """Build the evaluator for `model` now (its data is read and checked; otherwise at the first call)."""
        if self._ev is None or self._ev.model is not model:
            self._ev = self._make(model)

    def __call__(self, model: Any, config: SparsityConfig) -> float:
        return float(self._result(model, config).value)

    def _result(self, model: Any, config: SparsityConfig) -> Any:
        self.prepare(model)
        size = self.native_size
        res = config.resolution if config.resolution and (size is None or tuple(config.resolution) != size) else None
        return self._ev(config, res)

    def noise(self, model: Any, config: SparsityConfig) -> float:
        """The standard error of `config`'s figure over the images (the noise of one figure)."""
        return float(self._result(model, config).stderr)

    def noise_between(self, model: Any, a: SparsityConfig, b: SparsityConfig) -> float:
        """The standard error of the difference between `a`'s and `b`'s figures, both scored on the same images
        (paired): differences below it are noise when two configs are compared."""
        from ..evaluate import paired_stderr  # noqa: PLC0415

        return paired_stderr(self._result(model, a), self._result(model, b))


class FidelityAccuracy(EvaluatorAccuracy):
    """Scoring without labels for a search: `fn(model, config)` -> how closely `model` under `config` reproduces
    the same model run dense, in percent (`sparsesearch.fidelity`), on the first `n` images of `data`.

        acc = ss.FidelityAccuracy("my_images/", space, n=64)
        result = ss.search(space, model=model, accuracy=acc, latency=table, budget="0.7x")

    Args:
        data: a folder of images (labels not needed; nested folders fine), a data spec ("synthetic:N"), a dataset
            of (image, anything) items, or a (N, 3, H, W) tensor of images.
        space: the model's search space: the dense reference is its densest config, and a folder is read at its
            largest resolution (None: give `image_size`; the reference is then the model's own dense config).
        n: images scored (the first n). image_size: (H, W) or an int to read a folder at.
        task, channel_dim: what is compared, see `sparsesearch.fidelity.FidelityEvaluator`.
        batch, device: of the forward passes (device None: the model's).
    The dense outputs are computed once per image, at the first call; each config's figure is cached.
    """

    metric = "fidelity"

    def __init__(
        self,
        data: Any,
        space: SearchSpace | None = None,
        n: int | None = 64,
        *,
        image_size: int | tuple[int, int] | None = None,
        task: str | None = None,
        channel_dim: int | None = None,
        batch: int = 16,
        device: str | None = None,
    ) -> None:
        super().__init__()
        from ..fidelity import dense_reference  # noqa: PLC0415

        self.data, self.n, self.task, self.channel_dim = data, n, task, channel_dim
        self.batch, self.device = batch, device
        self.reference = dense_reference(space) if space is not None else None
        if image_size is None and space is not None:
            image_size = max(space.resolutions, key=lambda r: r[0] * r[1])
        self.native_size = (image_size, image_size) if isinstance(image_size, int) else image_size
        if isinstance(data, (str, os.PathLike)) and self.native_size is None:
            raise SparseSearchError(f"FidelityAccuracy: give the space (or image_size) to read {data} at")

    def _dataset(self) -> Any:
        if not isinstance(self.data, (str, os.PathLike)):
            return self.data
        from ..data import build_dataset  # noqa: PLC0415

        assert self.native_size is not None
        return build_dataset(str(self.data), "val", self.native_size)[0]

    def _make(self, model: Any) -> Any:
        from ..fidelity import FidelityEvaluator, as_image_dataset  # noqa: PLC0415

        dataset = as_image_dataset(self._dataset())
        if self.native_size is None:
            self.native_size = tuple(int(v) for v in dataset[0][0].shape[-2:])  # type: ignore[assignment]
        return FidelityEvaluator(
            model,
            dataset,
            self.n,
            reference=self.reference,
            task=self.task,
            channel_dim=self.channel_dim,
            batch=self.batch,
            device=self.device,
        )
