"""Model registry: names -> constructors, timm-style."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..errors import SparseSearchError

__all__ = ["register_model", "register_models", "create_model", "list_models", "model_defaults", "model_family_name"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}
_FAMILIES: dict[str, str] = {}


def register_model(
    name: str, family: str, **defaults: Any
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register `fn(**kwargs) -> nn.Module` under `name`; `defaults` records its architecture arguments and
    `family` the model family (a `ModelFamily.name` registered with `sparsesearch.models.family.register_family`)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        _DEFAULTS[name] = dict(defaults)
        _FAMILIES[name] = family
        return fn

    return wrap


def register_models(archs: dict[str, dict[str, Any]], cls: Callable[..., nn.Module], family: str) -> None:
    """Register every `name: architecture kwargs` of `archs` as `cls(**{**kwargs, **overrides})` of `family`."""
    for name, arch in archs.items():
        _register_one(name, arch, cls, family)


def _register_one(name: str, arch: dict[str, Any], cls: Callable[..., nn.Module], family: str) -> None:
    @register_model(name, family=family, **arch)
    def build(**kwargs: Any) -> nn.Module:
        return cls(**{**arch, **kwargs})

    build.__name__ = name
    build.__doc__ = f"{name}: {getattr(cls, '__name__', cls)}({', '.join(f'{k}={v}' for k, v in arch.items())})."


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_defaults(name: str) -> dict[str, Any]:
    """The architecture arguments a registered model is built with."""
    _check(name)
    return dict(_DEFAULTS[name])


def model_family_name(name: str) -> str:
    """The name of the family a registered model belongs to."""
    _check(name)
    return _FAMILIES[name]


def _check(name: str) -> None:
    if name not in _REGISTRY:
        close = [n for n in _REGISTRY if name.split("_")[0] in n]
        hint = f" (did you mean one of {', '.join(close)}?)" if close else ""
        raise SparseSearchError(f"unknown model {name!r}{hint}; sparsesearch.list_models() lists them")


def create_model(
    name: str,
    checkpoint: str | None = None,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] | int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model; kwargs override its defaults. `checkpoint` loads weights (timm/Microsoft
    format, .pth or .safetensors) with `sparsesearch.load_checkpoint`.

    `features_only=True` returns a :class:`~sparsesearch.models.features.FeatureListNet`: the backbone's NCHW
    feature maps at `out_indices` (default: all), with timm's `feature_info` (`.channels()`, `.reduction()`),
    ready for an FPN; `set_config` still applies.
    """
    _check(name)
    if out_indices is not None and not features_only:
        raise SparseSearchError("out_indices needs features_only=True")
    model = _REGISTRY[name](**kwargs)
    model.model_name = name  # type: ignore[assignment]  # nn.Module's __setattr__ is typed for tensors/modules
    if checkpoint is not None:
        from .checkpoint import load_checkpoint  # noqa: PLC0415

        load_checkpoint(model, checkpoint)
    if features_only:
        from .features import FeatureListNet  # noqa: PLC0415

        features = FeatureListNet(model, out_indices)
        features.model_name = name  # type: ignore[assignment]  # as above
        return features
    return model
