"""Loading weights: .pth/.pt/.bin and .safetensors, in timm's layout or an original release's (each family's
`checkpoint_filter_fn` converts its own), with a clear error for a checkpoint of another family."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from .family import ModelFamily, checkpoint_family, family_of_model

__all__ = ["read_state_dict", "convert_state_dict", "load_checkpoint", "LoadReport"]

_WRAPPER_KEYS = ("state_dict", "model", "model_state", "module", "ema")


@dataclass
class LoadReport:
    """What load_checkpoint did beyond a plain strict load."""

    converted_from: str = "timm"
    resized: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)
    initialised_head: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a tensor dict from .safetensors or a torch pickle (weights only), unwrapping common containers
    ('state_dict', 'model', ...) and a DDP 'module.' prefix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # noqa: PLC0415

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types for truncated or foreign files
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a checkpoint?): {reason}") from None
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict (expected a mapping of tensors)")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _family_of(sd: Mapping[str, torch.Tensor], model: nn.Module) -> ModelFamily:
    """The model's family, after checking the checkpoint is not another family's."""
    own = family_of_model(model)
    found = checkpoint_family(sd)
    if found is not None and found is not own:
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointError(
            f"the checkpoint is {found.label} checkpoint but {name} is {own.label}: "
            "pick a model of the checkpoint's family (sparsesearch models lists them)"
        )
    return own


def _heads(out: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], report: LoadReport) -> None:
    """Drop a classifier the model lacks or sizes differently; list the head tensors left at initialisation."""
    for k in [k for k in out if k.startswith("head.")]:
        if k not in own or own[k].shape != out[k].shape:
            report.dropped_head.append(k)
            del out[k]
    report.initialised_head = [k for k in own if k.startswith(("head.", "seg_head.")) and k not in out]


def convert_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Turn a state dict of the model's family (timm's layout or the original release's: the family's
    `checkpoint_filter_fn` converts it) into this model's layout; a checkpoint of another family raises
    CheckpointError. A classifier the model does not have, or has for another class count, is dropped (reported,
    never silent)."""
    converted, report = _family_of(sd, model).convert_checkpoint(sd, model)
    _heads(converted, model.state_dict(), report)
    return converted, report


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadReport:
    """Load weights into `model`. With strict=True every backbone tensor must match exactly; only a task head
    the checkpoint does not have (or has for another class count) is left at its initialisation."""
    sd, report = convert_state_dict(read_state_dict(path), model)
    own = model.state_dict()
    missing = [k for k in own if k not in sd and k not in report.initialised_head]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if strict and (missing or unexpected or mismatched):
        name = getattr(model, "model_name", type(model).__name__)
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{len(mismatched)} shape mismatches (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)})"
            )
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"checkpoint {path} does not fit {name}: {'; '.join(parts)}. Is it a checkpoint of another architecture?"
        )
    for k in mismatched:
        del sd[k]
    model.load_state_dict(sd, strict=False)
    return report
