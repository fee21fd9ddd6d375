"""Accuracy of a model under a sparsity config: mIoU (segmentation) or top-1 (classification).

:func:`evaluate` is what ``sparsesearch eval`` and the search call. It always scores the same items (the first
``n`` of the data set, in order), under ``torch.inference_mode`` and in batches. :class:`Evaluator` does the
same but loads the items once and caches results per config, for searches that score many configs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .config import SparsityConfig
from .errors import ConfigError, DataError
from .options import settings_from

__all__ = [
    "EvalResult",
    "ScoringSettings",
    "EvalSettings",
    "Evaluator",
    "evaluate",
    "confusion_matrix",
    "miou_from_confusion",
    "miou_stderr",
    "miou_left_out",
    "jackknife_stderr",
    "paired_stderr",
    "resolve_config",
]

#: items kept in memory by Evaluator when preloading (bytes of image data), beyond which it streams.
PRELOAD_LIMIT_BYTES = 1 << 30


@dataclass(frozen=True)
class EvalResult:
    """One accuracy figure.

    Attributes:
        metric: "mIoU" (segmentation) or "top1" (classification).
        value: the figure in percent (0-100).
        n: number of items scored.
        per_class: IoU (percent) of each class for "mIoU", NaN where a class is absent from both prediction
            and labels; empty for "top1".
        stderr: the figure's standard error over the items (jackknife over images for mIoU, binomial for
            top-1): the noise of this one figure.
        left_out: (n,) the figure recomputed with each item left out (the jackknife's values), empty when not
            kept; two results on the same items give :func:`paired_stderr`, the noise of their *difference*
            (far smaller than either `stderr` when the configs err on the same images).
    """

    metric: str
    value: float
    n: int
    per_class: tuple[float, ...] = ()
    stderr: float = float("nan")
    left_out: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"metric": self.metric, "value": self.value, "n": self.n}
        if not math.isnan(self.stderr):
            d["stderr"] = self.stderr
        if self.per_class:
            d["per_class"] = [None if math.isnan(v) else v for v in self.per_class]
        return d

    def __str__(self) -> str:
        return f"{self.metric} {self.value:.2f} (n={self.n})"


# ---- metrics -------------------------------------------------------------------------------------------------
def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = 255
) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = label, columns = prediction.

    pred, target: integer tensors of the same shape (e.g. (B, H, W)). Pixels whose label is ``ignore_index``
    or outside [0, num_classes) are not counted.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    valid = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        valid &= t != ignore_index
    idx = t[valid] * num_classes + p[valid].clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def miou_from_confusion(cm: torch.Tensor) -> tuple[float, tuple[float, ...]]:
    """mIoU (percent) and per-class IoU (percent, NaN where the class is in neither labels nor predictions).

    IoU_c = cm[c, c] / (sum(cm[c, :]) + sum(cm[:, c]) - cm[c, c]); mIoU averages the classes that occur.
    """
    cm = cm.double()
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, float("nan"))) * 100.0
    present = ~torch.isnan(iou)
    value = float(iou[present].mean()) if bool(present.any()) else float("nan")
    return value, tuple(float(v) for v in iou)


def miou_left_out(per_item: torch.Tensor) -> torch.Tensor:
    """(n,) float64: the data-set mIoU (percent) recomputed with each item left out, from per-item confusion
    matrices (n, C, C); classes absent from what is left are skipped, as in :func:`miou_from_confusion`."""
    cm = per_item.double()
    left_out = cm.sum(0, keepdim=True) - cm  # (n, C, C)
    inter = left_out.diagonal(dim1=1, dim2=2)
    union = left_out.sum(1) + left_out.sum(2) - inter
    iou = inter / union.clamp(min=1)
    present = union > 0
    return (iou * present).sum(1) / present.sum(1).clamp(min=1) * 100.0


def jackknife_stderr(left_out: torch.Tensor | Sequence[float]) -> float:
    """Jackknife standard error from the n leave-one-out values m_i: sqrt((n-1)/n * sum((m_i - mean)^2)); NaN
    for n < 2."""
    m = torch.as_tensor(left_out, dtype=torch.float64)
    n = int(m.numel())
    if n < 2:
        return float("nan")
    return float(((n - 1) / n * ((m - m.mean()) ** 2).sum()).sqrt())


def miou_stderr(per_item: torch.Tensor) -> float:
    """Jackknife standard error (percent) of the data-set mIoU from per-item confusion matrices (n, C, C).

    The mIoU is recomputed with each item left out; SE = sqrt((n-1)/n * sum((m_i - mean)^2)). NaN for n < 2.
    """
    return jackknife_stderr(miou_left_out(per_item))


def paired_stderr(a: EvalResult, b: EvalResult) -> float:
    """Standard error (percent) of ``b.value - a.value`` when both were scored on the same items: the jackknife
    over items of the difference of their leave-one-out values. Two configs of one supernet mostly err on the
    same images, so this is several times smaller than either result's own `stderr` (the demo supernet: 0.02-0.04
    against 0.14 on 32 images). Raises ValueError when either result kept no leave-one-out values or their
    item counts differ."""
    if not a.left_out or not b.left_out:
        raise ValueError("paired_stderr needs results with leave-one-out values (Evaluator keeps them)")
    if len(a.left_out) != len(b.left_out):
        raise ValueError(f"paired_stderr needs results on the same items, got {len(a.left_out)} and {len(b.left_out)}")
    diff = torch.tensor(b.left_out, dtype=torch.float64) - torch.tensor(a.left_out, dtype=torch.float64)
    return jackknife_stderr(diff)


# ---- configs from strings ------------------------------------------------------------------------------------
def resolve_config(spec: str | SparsityConfig | None, space: Any) -> SparsityConfig | None:
    """A config from a CLI-style spec: "dense" (or "densest"), "sparsest", "uniform:P", or a JSON/YAML file.

    ``space`` is the model's SearchSpace (for the dense/sparsest/uniform shortcuts and to validate files).
    """
    if spec is None or isinstance(spec, SparsityConfig):
        return spec
    text = str(spec).strip()
    low = text.lower()
    if low in ("dense", "densest"):
        return space.densest()
    if low == "sparsest":
        return space.sparsest()
    if low.startswith("uniform:") or low.startswith("uniform="):
        try:
            p = float(text.split(":" if ":" in text else "=", 1)[1])
        except ValueError:
            raise ConfigError(
                f"config {text!r}: write uniform:P with P a sparsity in [0, 1), e.g. uniform:0.5"
            ) from None
        return space.uniform(p)
    from pathlib import Path  # noqa: PLC0415

    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"config {text!r} is neither dense, sparsest, uniform:P nor an existing JSON/YAML file")
    cfg = SparsityConfig.load(path)
    cfg.validate(space.depths, space.max_window_size)
    return cfg


# ---- evaluation ----------------------------------------------------------------------------------------------
def _task_of(model: nn.Module, dataset: Any, task: str | None) -> str:
    if task is not None:
        return task
    head = getattr(model, "head_type", None)
    if head in ("seg", "cls"):
        return str(head)
    return str(getattr(dataset, "task", "seg"))


def _num_classes(model: nn.Module, dataset: Any, num_classes: int | None) -> int:
    if num_classes is not None:
        return int(num_classes)
    n = getattr(model, "num_classes", None) or getattr(dataset, "num_classes", None)
    if not n:
        raise DataError("cannot tell the number of classes: pass num_classes")
    return int(n)


@dataclass(kw_only=True)
class ScoringSettings:
    """How an evaluator loads its items and runs the model (what `EvalSettings` and `FidelitySettings` share).

    Attributes:
        batch: items per forward pass.
        device: where to run (None: the model's device).
        amp: autocast (bf16 on CPU, fp16 on CUDA).
        preload: keep the subset in memory (None: when it takes less than 1 GiB), so repeated calls skip
            decoding/generation.
        cache: remember the result of each config (keyed by ``config.key()`` and resolution).
        workers: DataLoader workers for loading.
    """

    batch: int = 16
    device: str | torch.device | None = None
    amp: bool = False
    preload: bool | None = None
    cache: bool = True
    workers: int = 0


@dataclass(kw_only=True)
class EvalSettings(ScoringSettings):
    """How :class:`Evaluator` and :func:`evaluate` score: the `ScoringSettings` and the labelled metric's task,
    class count and ignore index.

    Attributes:
        task: "seg" (mIoU) or "cls" (top-1); None: the model's head, else the data set's task.
        num_classes: classes of the metric; None: the model's, else the data set's.
        ignore_index: the label value no metric counts; None: the data set's, else 255.
    """

    task: str | None = None
    num_classes: int | None = None
    ignore_index: int | None = None


class Evaluator:
    """Scores configs of one model on a fixed subset: the first ``n`` items of ``dataset``.

    Args:
        model: a model of the zoo (or any module taking ``(x, config=...)``), with a "seg" or "cls" head.
        dataset: items (image (3, H, W) float, mask (H, W) int64) or (image, class int).
        n: number of items (None: all of them).
        settings: an :class:`EvalSettings` (default: its defaults): batch, device, amp, task, num_classes,
            ignore_index, preload, cache, workers; **overrides: its fields by name (``batch=8, device="cuda"``);
            an unknown name raises SparseSearchError.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset[Any],
        n: int | None = None,
        settings: EvalSettings | None = None,
        **overrides: Any,
    ) -> None:
        s = settings_from(EvalSettings, settings, overrides, "Evaluator")
        self.model = model
        self._setup_task(dataset, s.task, s.num_classes, s.ignore_index)
        self._subset(dataset, n, s)

    def _subset(self, dataset: Dataset[Any], n: int | None, s: ScoringSettings) -> None:
        """Take the first `n` items of `dataset` (preloaded as `s.preload` says) and how to run them from `s`."""
        total = len(dataset)  # type: ignore[arg-type]
        if n is not None and n < 1:
            raise DataError(f"the number of evaluation items must be >= 1, got {n}")
        self.n = total if n is None else min(int(n), total)
        if self.n == 0:
            raise DataError("the evaluation data set is empty")
        self.dataset = Subset(dataset, range(self.n))
        self.batch = max(1, int(s.batch))
        device = s.device
        if device is None:
            first = next(self.model.parameters(), None)
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device)
        self.amp = s.amp
        self.workers = s.workers
        self._cache: dict[str, EvalResult] | None = {} if s.cache else None
        self._batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        preload = s.preload
        if preload is None:
            image = dataset[0][0]
            preload = image.numel() * image.element_size() * self.n < PRELOAD_LIMIT_BYTES
        if preload:
            self._batches = list(self._load())

    def _setup_task(
        self, dataset: Dataset[Any], task: str | None, num_classes: int | None, ignore_index: int | None
    ) -> None:
        """The task ("seg", "cls"), class count and ignore index of a labelled metric; DataError for data without
        labels or a model without a head (they are scored by `sparsesearch.fidelity` instead)."""
        if getattr(dataset, "labelled", True) is False:
            raise DataError(
                f"{getattr(dataset, 'root', 'the data set')} holds images without labels: mIoU and top-1 need "
                "labels (a segmentation or class-folder set); score without labels by fidelity to the dense model "
                "(--accuracy fidelity, sparsesearch.fidelity)"
            )
        self.task = _task_of(self.model, dataset, task)
        if self.task not in ("seg", "cls"):
            raise DataError(
                f"a model without a head ({self.task}) has no labelled metric: score it by fidelity to the dense "
                "model (--accuracy fidelity, sparsesearch.fidelity)"
            )
        self.num_classes = _num_classes(self.model, dataset, num_classes)
        self.ignore_index = ignore_index if ignore_index is not None else getattr(dataset, "ignore_index", 255)

    def _load(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(self.dataset, batch_size=self.batch, shuffle=False, num_workers=self.workers)
        for images, targets in loader:
            yield images, torch.as_tensor(targets)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.amp:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def __call__(self, config: SparsityConfig | None, resolution: Sequence[int] | None = None) -> EvalResult:
        """Score ``config`` (None: the model as it is). ``resolution`` (H, W) resizes the inputs first (the
        prediction is resized back to the labels for mIoU); None takes the config's own ``resolution`` and,
        when it has none, runs at the data set's size."""
        if resolution is None and config is not None and config.resolution is not None:
            resolution = config.resolution
        key = (config.key() if config is not None else "current") + f"|{tuple(resolution) if resolution else ''}"
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        result = self._run(config, resolution)
        if self._cache is not None:
            self._cache[key] = result
        return result

    @torch.inference_mode()
    def _run(self, config: SparsityConfig | None, resolution: Sequence[int] | None) -> EvalResult:
        model = self.model
        was_training = model.training
        previous = getattr(model, "config", None)
        model.eval()
        set_config = getattr(model, "set_config", None)
        if config is not None:
            if set_config is None:
                raise ConfigError(f"{type(model).__name__} has no set_config: it cannot run sparsity configs")
            set_config(config)
        per_item: list[torch.Tensor] = []  # (C, C) confusion of each image, or (B,) hits of each batch
        try:
            batches = self._batches if self._batches is not None else self._load()
            for i, (images, targets) in enumerate(batches):
                per_item += self._score_batch(i, images, targets, resolution)
        finally:
            if set_config is not None and config is not None:
                set_config(previous)
            model.train(was_training)
        return self._result(per_item)

    def _forward(self, images: torch.Tensor, resolution: Sequence[int] | None, model: nn.Module | None = None) -> Any:
        """The output of the model (or of `model`) on a batch (B, 3, H, W), resized first to `resolution` (H', W')
        when given."""
        images = images.to(self.device, non_blocking=True)
        if resolution is not None and tuple(images.shape[-2:]) != tuple(resolution):
            images = F.interpolate(images, size=tuple(resolution), mode="bilinear", align_corners=False)
        with self._autocast():
            return (self.model if model is None else model)(images)

    def _score_batch(
        self, index: int, images: torch.Tensor, targets: torch.Tensor, resolution: Sequence[int] | None
    ) -> list[torch.Tensor]:
        """Per-item outcomes of batch `index`: (C, C) confusion matrices ("seg") or one (B,) tensor of 0/1 hits."""
        targets = targets.to(self.device, non_blocking=True)
        logits = self._forward(images, resolution)
        if self.task != "seg":
            return [(logits.argmax(-1) == targets).double().cpu()]
        if logits.shape[-2:] != targets.shape[-2:]:
            logits = F.interpolate(logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
        pred = logits.argmax(1)
        return [confusion_matrix(p, t, self.num_classes, self.ignore_index) for p, t in zip(pred, targets)]

    def _result(self, per_item: list[torch.Tensor]) -> EvalResult:
        if self.task == "seg":
            stacked = torch.stack(per_item)
            value, per_class = miou_from_confusion(stacked.sum(0))
            left = miou_left_out(stacked)
            return EvalResult("mIoU", value, self.n, per_class, jackknife_stderr(left), tuple(left.tolist()))
        hits = torch.cat(per_item)
        top1 = float(hits.mean())
        # leaving item i out: (hits - hit_i) / (n - 1); its jackknife SE is the binomial one with n - 1
        left = (hits.sum() - hits) / max(1, self.n - 1) * 100.0
        return EvalResult(
            "top1",
            100.0 * top1,
            self.n,
            stderr=100.0 * math.sqrt(top1 * (1 - top1) / max(1, self.n - 1)),
            left_out=tuple(left.tolist()),
        )


def evaluate(
    model: nn.Module,
    config: SparsityConfig | None,
    dataset: Dataset[Any],
    n: int | None = None,
    *,
    resolution: Sequence[int] | None = None,
    settings: EvalSettings | None = None,
    **overrides: Any,
) -> EvalResult:
    """mIoU ("seg") or top-1 ("cls") of ``model`` under ``config`` on the first ``n`` items of ``dataset``.

    Images (B, 3, H, W) go through ``model`` with ``config`` applied for the call (the previous config is
    restored), resized first to ``resolution`` (H, W) when given (None: the config's own); segmentation logits
    (B, C, H, W) are compared with masks (B, H, W) through a confusion matrix that skips the ignore index (default:
    the data set's, else 255). ``settings``: an :class:`EvalSettings` (or its fields by name: ``batch=8``,
    ``num_classes=3``); its ``preload`` and ``cache`` do not apply to one call. Deterministic: same items, same
    order, inference mode. See :class:`Evaluator` to score many configs on one preloaded subset.
    """
    s = settings_from(EvalSettings, settings, overrides, "evaluate")
    ev = Evaluator(model, dataset, n, replace(s, preload=False, cache=False))
    return ev(config, resolution)
