"""Scoring without labels ("fidelity"): how closely a pruned model reproduces the same model run dense on the same
images.

The dense model (the `reference` config, by default the model's dense config) is the reference. Per image, higher
is better, in percent:

- a segmentation head ("seg"): the mIoU of the pruned argmax against the dense argmax, over the classes present in
  either of the two;
- a classification head ("cls"): 100 if the top-1 classes agree, else 0;
- a backbone, a `features_only` model or the SAM encoder (its neck output) ("features"): the mean over levels (the
  tensors of the output) of the mean over positions of the cosine similarity between the pruned and the dense
  feature vectors, x100.

The figure is the mean over images; its leave-one-out values give the jackknife standard error (and
:func:`~sparsesearch.evaluate.paired_stderr`, the noise of a difference between two configs), as for mIoU. The
dense outputs are computed once per image and cached by :class:`FidelityEvaluator`, so a search over many configs
runs the dense model once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from .config import SparsityConfig
from .errors import DataError, SparseSearchError
from .evaluate import EvalResult, Evaluator, ScoringSettings, jackknife_stderr
from .options import settings_from

if TYPE_CHECKING:
    from .space import SearchSpace

__all__ = [
    "FIDELITY_KINDS",
    "FidelityError",
    "FidelityEvaluator",
    "FidelitySettings",
    "fidelity",
    "dense_reference",
    "as_image_dataset",
    "fidelity_kind",
    "output_tensors",
    "feature_channel_dim",
    "seg_agreement",
    "top1_agreement",
    "feature_agreement",
]

#: what is compared: "seg" (argmax maps), "cls" (top-1 classes), "features" (feature vectors at every position)
FIDELITY_KINDS = ("seg", "cls", "features")


class FidelityError(SparseSearchError):
    """A model's outputs cannot be compared with the dense model's (not tensors, or shapes that do not match)."""


def fidelity_kind(model: nn.Module, task: str | None = None) -> str:
    """What fidelity compares for `model`: `task` when given (one of FIDELITY_KINDS), else the model's head
    ("seg" or "cls" from its `head_type`), else "features" (a backbone, a `features_only` model, the SAM encoder)."""
    if task is not None:
        if task not in FIDELITY_KINDS:
            raise FidelityError(f"unknown fidelity kind {task!r}: use one of {', '.join(FIDELITY_KINDS)}")
        return task
    head = getattr(model, "head_type", None)
    return str(head) if head in ("seg", "cls") else "features"


def output_tensors(out: Any, name: str = "the model") -> list[torch.Tensor]:
    """A model output as a list of tensors: a tensor, or a list/tuple of tensors; FidelityError for anything else."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)) and out and all(isinstance(t, torch.Tensor) for t in out):
        return list(out)
    what = f"a dict (keys {', '.join(map(str, list(out)[:4]))})" if isinstance(out, dict) else type(out).__name__
    raise FidelityError(
        f"fidelity compares the model's outputs with the dense model's, but {name} returned {what}: it needs a "
        "tensor or a list of tensors (wrap the model so that it returns them, or score it with your own accuracy "
        "function, --accuracy module:function)"
    )


def feature_channel_dim(t: torch.Tensor, channels: int | None = None, channel_dim: int | None = None) -> int:
    """The channel dimension of a feature tensor: `channel_dim` when given; (B, N, C) tokens: 2; a 4-D map:
    3 when its last size is the model's `channels` (`num_features`) and its second is not (NHWC, as a Swin
    backbone's `forward_features`), else 1 (NCHW: timm's `features_only` maps, the SAM neck); otherwise 1."""
    if channel_dim is not None:
        return channel_dim % t.dim()
    if t.dim() == 3:
        return 2
    if t.dim() == 4 and channels is not None and t.shape[-1] == channels and t.shape[1] != channels:
        return 3
    return 1


def dense_reference(space: SearchSpace) -> SparsityConfig:
    """The dense run fidelity compares with for a model of `space`: its densest config (lowest sparsities, default
    windows) without a resolution, so that it runs on the images at their own size."""
    densest = space.densest()
    return SparsityConfig(densest.sparsity, densest.window_size)


# ---- per-image agreement -------------------------------------------------------------------------------------------
def seg_agreement(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B,) float64 percent: per image, the mIoU of argmax(`logits`) against `reference`, over the classes present
    in either map.

    logits: (B, C, h, w) (resized bilinearly to the reference's size first); reference: (B, H, W) class indices
    (the dense model's argmax).
    """
    if logits.dim() != 4 or reference.dim() != 3 or logits.shape[0] != reference.shape[0]:
        raise FidelityError(
            f"segmentation fidelity needs logits (B, C, H, W) and the dense argmax (B, H, W), got "
            f"{tuple(logits.shape)} and {tuple(reference.shape)}"
        )
    if logits.shape[-2:] != reference.shape[-2:]:
        logits = F.interpolate(logits.float(), size=reference.shape[-2:], mode="bilinear", align_corners=False)
    B, C = logits.shape[:2]
    pred = logits.argmax(1).reshape(B, -1).long()
    ref = reference.reshape(B, -1).long().to(pred.device)
    offset = torch.arange(B, device=pred.device)[:, None] * C * C
    cm = torch.bincount((offset + ref * C + pred).reshape(-1), minlength=B * C * C).reshape(B, C, C).double()
    inter = cm.diagonal(dim1=1, dim2=2)
    union = cm.sum(1) + cm.sum(2) - inter
    present = union > 0
    iou = inter / union.clamp(min=1)
    return ((iou * present).sum(1) / present.sum(1).clamp(min=1) * 100.0).cpu()


def top1_agreement(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B,) float64: 100 where argmax(`logits` (B, C)) equals `reference` (B,) (the dense top-1), else 0."""
    if logits.dim() != 2 or reference.shape != logits.shape[:1]:
        raise FidelityError(
            f"classification fidelity needs logits (B, C) and the dense top-1 (B,), got {tuple(logits.shape)} and "
            f"{tuple(reference.shape)}"
        )
    return ((logits.argmax(-1) == reference.to(logits.device)).double() * 100.0).cpu()


def _unit_channels_last(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, ..., C, ...) -> (B, *positions, C) float32 with unit-length feature vectors (zero vectors stay zero)."""
    return F.normalize(t.float().movedim(dim, -1), dim=-1)


def feature_agreement(
    outputs: Sequence[torch.Tensor], references: Sequence[torch.Tensor], dims: Sequence[int]
) -> torch.Tensor:
    """(B,) float64: per image, the mean over levels of the mean over positions of cos(pruned, dense), x100.

    outputs: the pruned model's tensors, each (B, ...) with its channels at `dims[i]`; references: the dense
    model's, each (B, *positions, C) with unit-length vectors (see `FidelityEvaluator`). A 2-D map of another size
    (another input resolution) is resized bilinearly to the reference's positions first.
    """
    if len(outputs) != len(references):
        raise FidelityError(f"the model returned {len(outputs)} feature levels here but {len(references)} dense")
    levels = []
    for t, ref, dim in zip(outputs, references, dims):
        v = t.float().movedim(dim, -1)
        if v.shape[1:-1] != ref.shape[1:-1] and v.dim() == 4 and ref.dim() == 4:
            v = F.interpolate(v.movedim(-1, 1), size=ref.shape[1:3], mode="bilinear", align_corners=False).movedim(
                1, -1
            )
        if v.shape != ref.shape:
            raise FidelityError(
                f"a feature level is {tuple(v.shape)} (channels last) but {tuple(ref.shape)} in the dense model"
            )
        cos = (F.normalize(v, dim=-1) * ref.to(v.device)).sum(-1)  # (B, *positions)
        levels.append(cos.reshape(cos.shape[0], -1).mean(1))
    return (torch.stack(levels).mean(0).double() * 100.0).cpu()


# ---- the evaluator ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _applied(model: nn.Module, config: SparsityConfig | None) -> Iterator[None]:
    """`config` applied to a model with `set_config` for the block (the previous one restored); others as they are."""
    set_config = getattr(model, "set_config", None)
    if set_config is None:
        yield
        return
    previous = getattr(model, "config", None)
    set_config(config)
    try:
        yield
    finally:
        set_config(previous)


@dataclass(kw_only=True)
class FidelitySettings(ScoringSettings):
    """How :class:`FidelityEvaluator` and :func:`fidelity` score: the
    :class:`~sparsesearch.evaluate.ScoringSettings` (batch, device, amp, preload, cache, workers) and what is
    compared with what.

    Attributes:
        reference: the config of the dense run (None: `set_config(None)`, the model's dense config); its
            resolution, if any, resizes the reference's inputs.
        reference_model: run the reference on this model instead (e.g. the pretrained weights a supernet was
            adapted from, to score fidelity to the original); None: the scored model itself.
        task: "seg", "cls" or "features" (None: from the model's head, see :func:`fidelity_kind`).
        channel_dim: the channel dimension of "features" outputs (None: see :func:`feature_channel_dim`).
    """

    reference: SparsityConfig | None = None
    reference_model: nn.Module | None = None
    task: str | None = None
    channel_dim: int | None = None


class FidelityEvaluator(Evaluator):
    """Scores configs of one model by fidelity to the model run under `reference` (default: dense) on the first
    ``n`` items of ``dataset`` (labels, if any, are ignored).

    The reference outputs are computed at the first call, once per image, and kept (on CPU: the argmax maps for
    "seg", the top-1 for "cls", the unit feature vectors for "features"). Results are cached per config as
    :class:`~sparsesearch.evaluate.Evaluator` does; `reference_images` counts the images the reference ran on.

    Args:
        model: any module whose output is a tensor or a list of tensors (a model of the zoo, a `features_only`
            model, your own); configs need its `set_config`.
        dataset: items (image (3, H, W) float, anything), e.g. an unlabelled image folder.
        n: number of items (None: all of them).
        settings: a :class:`FidelitySettings` (default: its defaults): reference, reference_model, task,
            channel_dim, and batch, device, amp, preload, cache, workers as for Evaluator; **overrides: its fields
            by name (``reference=dense_reference(space), batch=8``); an unknown name raises SparseSearchError.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset[Any],
        n: int | None = None,
        settings: FidelitySettings | None = None,
        **overrides: Any,
    ) -> None:
        s = settings_from(FidelitySettings, settings, overrides, "FidelityEvaluator")
        self.model = model
        self.reference = s.reference
        self.reference_model = s.reference_model
        self.channel_dim = s.channel_dim
        self.reference_images = 0
        self._refs: list[list[torch.Tensor]] | None = None
        self._dims: list[int] = []
        self.task = fidelity_kind(model, s.task)
        self.num_classes = 0
        self.ignore_index = None
        self._subset(dataset, n, s)

    @property
    def _name(self) -> str:
        return str(getattr(self.model, "model_name", type(self.model).__name__))

    def _run(self, config: SparsityConfig | None, resolution: Sequence[int] | None) -> EvalResult:
        if self._refs is None:
            self._refs = self._reference_outputs()
        return super()._run(config, resolution)

    @torch.inference_mode()
    def _reference_outputs(self) -> list[list[torch.Tensor]]:
        """The reference of every batch, in order: [argmax (B, H, W)] ("seg"), [top-1 (B,)] ("cls"), or one
        (B, *positions, C) tensor of unit vectors per level ("features"); on CPU."""
        model = self.reference_model if self.reference_model is not None else self.model
        was_training = model.training
        model.eval()
        refs = []
        res = self.reference.resolution if self.reference is not None else None
        try:
            with _applied(model, self.reference):
                for images, _ in self._batches if self._batches is not None else self._load():
                    out = self._forward(images, res, model)
                    refs.append(self._reference_of(output_tensors(out, self._name)))
                    self.reference_images += int(images.shape[0])
        finally:
            model.train(was_training)
        return refs

    def _reference_of(self, out: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.task == "features":
            channels = getattr(self.model, "num_features", None)
            self._dims = [feature_channel_dim(t, channels, self.channel_dim) for t in out]
            return [_unit_channels_last(t, d).cpu() for t, d in zip(out, self._dims)]
        if len(out) != 1:
            raise FidelityError(f"a {self.task} head gives one tensor of logits, {self._name} returned {len(out)}")
        logits = out[0]
        if self.task == "seg" and logits.dim() != 4:
            raise FidelityError(
                f"segmentation fidelity needs logits (B, C, H, W), {self._name} returned {tuple(logits.shape)}"
            )
        if self.task == "cls" and logits.dim() != 2:
            raise FidelityError(
                f"classification fidelity needs logits (B, C), {self._name} returned {tuple(logits.shape)}"
            )
        return [logits.argmax(1).cpu()]

    def _score_batch(
        self, index: int, images: torch.Tensor, targets: torch.Tensor, resolution: Sequence[int] | None
    ) -> list[torch.Tensor]:
        """[(B,) per-image fidelity] of batch `index` against its cached reference."""
        assert self._refs is not None
        out = output_tensors(self._forward(images, resolution), self._name)
        ref = self._refs[index]
        if self.task == "features":
            return [feature_agreement(out, ref, self._dims)]
        if len(out) != 1:
            raise FidelityError(f"a {self.task} head gives one tensor of logits, {self._name} returned {len(out)}")
        agree = seg_agreement if self.task == "seg" else top1_agreement
        return [agree(out[0], ref[0])]

    def _result(self, per_item: list[torch.Tensor]) -> EvalResult:
        values = torch.cat(per_item).double()
        left = (values.sum() - values) / max(1, self.n - 1)
        return EvalResult(
            "fidelity", float(values.mean()), self.n, stderr=jackknife_stderr(left), left_out=tuple(left.tolist())
        )


def as_image_dataset(data: Dataset[Any] | torch.Tensor) -> Dataset[Any]:
    """A dataset of (image, -1) items from a (N, 3, H, W) tensor of images; a dataset as it is."""
    if isinstance(data, torch.Tensor):
        if data.dim() != 4:
            raise DataError(f"images must be a (N, 3, H, W) tensor, got shape {tuple(data.shape)}")
        return TensorDataset(data, torch.full((data.shape[0],), -1, dtype=torch.long))
    return data


def fidelity(
    model: nn.Module,
    config: SparsityConfig | None,
    data: Dataset[Any] | torch.Tensor,
    n: int | None = None,
    *,
    resolution: Sequence[int] | None = None,
    settings: FidelitySettings | None = None,
    **overrides: Any,
) -> EvalResult:
    """How closely `model` under `config` reproduces `model` under `reference` (default: dense) on the first `n`
    images of `data`: an EvalResult with metric "fidelity" (percent, higher is better), its jackknife standard
    error and leave-one-out values.

    Args:
        data: a (N, 3, H, W) tensor of images, or a dataset of (image (3, H, W), anything) items (an unlabelled
            folder from `sparsesearch.data.build_dataset`, a labelled one: labels are ignored).
        resolution: (H, W) to resize the inputs of `config`'s run to (None: `config.resolution`, else as they
            are); the reference runs on the images as they are.
        settings: a :class:`FidelitySettings` (or its fields by name: ``reference=...``, ``task="features"``,
            ``batch=8``): the dense run's config (`reference`, None: `model.set_config(None)`), what is compared
            (`task`, `channel_dim`) and how it runs; its `cache` does not apply to one call.

    Raises FidelityError when the model's output is not a tensor or a list of tensors. To score many configs,
    keep one :class:`FidelityEvaluator` (the dense outputs are computed once).
    """
    s = settings_from(FidelitySettings, settings, overrides, "fidelity")
    ev = FidelityEvaluator(model, as_image_dataset(data), n, replace(s, cache=False))
    return ev(config, resolution)
