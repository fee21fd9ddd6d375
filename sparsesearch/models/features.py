"""timm-style feature extraction for any family: `create_model(name, features_only=True, out_indices=...)`.

A family takes part by providing two members (as timm's models do):

- ``feature_info``: a list of dicts ``{"num_chs": C, "reduction": stride, "module": "layers.0"}``, one per
  feature map the model can return, finest first;
- ``forward_stages(x) -> list`` of NHWC tensors (B, H/stride, W/stride, C), one per ``feature_info`` entry;
- optionally ``fixed_input_size`` (H, W), for a family that only runs at one input size (used to probe which
  modules the maps need; by default a small input of twice the coarsest stride).

:class:`FeatureListNet` turns those into NCHW maps (what torchvision / detectron2 / mmdet FPNs take), keeps the
backbone's `set_config` (window pruning stays active), and drops the modules the feature maps do not use (the
classifier, the final norm), so DDP sees no unused parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..config import SparsityConfig
from ..errors import SparseSearchError
from .family import prunable
from .layers import config_applied

__all__ = ["FeatureInfo", "FeatureListNet", "supports_features"]


def supports_features(model: nn.Module) -> bool:
    """Whether `model` provides `feature_info` and `forward_stages` (every family of the zoo should)."""
    return isinstance(getattr(model, "feature_info", None), (list, tuple)) and callable(
        getattr(model, "forward_stages", None)
    )


@runtime_checkable
class _FeatureModel(Protocol):
    """What a family provides to take part (see the module docstring)."""

    feature_info: Sequence[dict[str, Any]]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> one NHWC map per `feature_info` entry."""


class FeatureInfo(list):
    """The selected feature maps' descriptions: a list of dicts (num_chs, reduction, module, index), with timm's
    accessors ``channels()``, ``reduction()``, ``module_name()`` and ``get_dicts()``."""

    def __init__(self, info: Iterable[dict[str, Any]]) -> None:
        super().__init__(dict(d) for d in info)

    def _get(self, key: str, idx: int | Sequence[int] | None) -> Any:
        if idx is None:
            return [d[key] for d in self]
        if isinstance(idx, Sequence):
            return [self[i][key] for i in idx]
        return self[idx][key]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        """Channels of each selected map (or of map `idx`)."""
        return self._get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        """Stride of each selected map relative to the input (or of map `idx`)."""
        return self._get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        """Name of the module that produces each selected map."""
        return self._get("module", idx)

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None) -> Any:
        """The dicts (restricted to `keys`), all or at `idx`."""
        pick = list(self) if idx is None else ([self[i] for i in idx] if isinstance(idx, Sequence) else [self[idx]])
        out = [d if keys is None else {k: d[k] for k in keys} for d in pick]
        return out[0] if isinstance(idx, int) else out


def _normalise_indices(out_indices: Sequence[int] | int | None, n: int, name: str) -> tuple[int, ...]:
    if out_indices is None:
        return tuple(range(n))
    if isinstance(out_indices, int):  # timm: an int n means the last n maps
        if not 1 <= out_indices <= n:
            raise SparseSearchError(f"out_indices={out_indices}: {name} has {n} feature maps")
        return tuple(range(n - out_indices, n))
    idx = []
    for i in out_indices:
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            raise SparseSearchError(
                f"out_indices {tuple(out_indices)}: {name} has feature maps 0..{n - 1} (or -{n}..-1)"
            )
        idx.append(i % n)
    if not idx or len(set(idx)) != len(idx):
        raise SparseSearchError(f"out_indices {tuple(out_indices)} must name distinct feature maps of {name}")
    return tuple(sorted(idx))


def _probe_size(model: nn.Module, info: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """A small input every family accepts: two of its coarsest strides, or its native size if it has one."""
    side = 2 * max(int(d["reduction"]) for d in info)
    fixed = getattr(model, "fixed_input_size", None)
    return (int(fixed[0]), int(fixed[1])) if fixed else (side, side)


def _unused_children(
    model: nn.Module, forward_stages: Callable[[torch.Tensor], Any], info: Sequence[dict[str, Any]]
) -> list[str]:
    """Top-level child modules that `forward_stages` never calls (found with hooks on one small forward);
    none if the probe fails (everything is kept then)."""
    top: dict[str, str] = {}
    for name, _ in model.named_modules():
        if name:
            top[name] = name.split(".")[0]
    called: set[str] = set()
    handles = [
        m.register_forward_pre_hook(lambda mod, args, n=top[name]: called.add(n))
        for name, m in model.named_modules()
        if name
    ]
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters(), None)
        x = torch.zeros(
            1,
            3,
            *_probe_size(model, info),
            device=p.device if p is not None else "cpu",
            dtype=p.dtype if p is not None else torch.float32,
        )
        with torch.no_grad():
            forward_stages(x)
    except Exception:  # a family with input constraints we do not know: keep every module
        return []
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [n for n, _ in model.named_children() if n not in called]


class FeatureListNet(nn.Module):
    """A backbone that returns NCHW feature maps (timm's `features_only=True`).

    Args:
        model: a model with ``feature_info`` and ``forward_stages`` (see the module docstring).
        out_indices: which maps to return (indices into the model's ``feature_info``; negative ones count from
            the end; an int n: the last n). None: all.
    Attributes:
        feature_info: :class:`FeatureInfo` of the returned maps (``.channels()``, ``.reduction()``).
        backbone: the wrapped model, without the modules the feature maps do not use.
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | int | None = None) -> None:
        super().__init__()
        name = getattr(model, "model_name", type(model).__name__)
        if not supports_features(model) or not isinstance(model, _FeatureModel):
            raise SparseSearchError(f"{name} does not provide feature extraction (feature_info and forward_stages)")
        info = list(model.feature_info)
        self.out_indices = _normalise_indices(out_indices, len(info), name)
        self.feature_info = FeatureInfo({**info[i], "index": i} for i in self.out_indices)
        for child in _unused_children(model, model.forward_stages, info):
            setattr(model, child, nn.Identity())
        self.backbone = model

    # ---- configs: the backbone's ------------------------------------------------------------------------------
    @property
    def config(self) -> SparsityConfig | None:
        return getattr(self.backbone, "config", None)

    def set_config(self, config: SparsityConfig | None) -> None:
        """Apply a sparsity config to the backbone (None: dense)."""
        prunable(self.backbone).set_config(config)

    def set_kernel_backend(self, backend: str | None) -> None:
        self.backbone.set_kernel_backend(backend)  # type: ignore[operator]

    def forward(self, x: torch.Tensor, config: SparsityConfig | None = None) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [(B, C_i, H / r_i, W / r_i)] for the selected maps, finest first.

        `config`, when given, is applied for this call only. The maps are NCHW views of the backbone's NHWC
        features (channels-last strides, which convolutions take as they are).
        """
        if config is not None:
            with config_applied(self, config):
                return self.forward(x)
        feats = self.backbone.forward_stages(x)
        return [feats[i].permute(0, 3, 1, 2) for i in self.out_indices]
