"""Loading weights: timm-format and original Microsoft Swin checkpoints, .pth/.pt/.bin and .safetensors."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

__all__ = ["read_state_dict", "convert_state_dict", "load_checkpoint", "LoadReport"]

_WRAPPER_KEYS = ("state_dict", "model", "model_state", "module", "ema")
_DROP = re.compile(r"(relative_position_index|attn_mask|relative_coords_table)$")


@dataclass
class LoadReport:
    """What load_checkpoint did beyond a plain strict load."""

    converted_from: str = "timm"
    resized: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)
    initialised_head: list[str] = field(default_factory=list)


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


def _is_microsoft(sd: Mapping[str, torch.Tensor]) -> bool:
    # Microsoft puts patch merging at the end of stages 0..2 and names the classifier `head`.
    return "head.weight" in sd or any(k.startswith("layers.0.downsample.") for k in sd)


def _resize_table(table: torch.Tensor, size: int) -> torch.Tensor:
    """((2m-1)^2, heads) -> (size, heads), bicubic over the 2-D grid as timm does."""
    src = int(round(table.shape[0] ** 0.5))
    dst = int(round(size**0.5))
    grid = table.T.reshape(1, -1, src, src).float()
    out = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return out.reshape(-1, dst * dst).T.to(table.dtype).contiguous()


def convert_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Turn a timm or Microsoft Swin state dict into this model's layout.

    Drops derived buffers, moves Microsoft's downsample to the start of the next stage, renames `head.` to
    `head.fc.`, resizes relative position tables to the model's, and drops a classifier the model does not have
    or whose class count differs (reported, never silent).
    """
    report = LoadReport()
    out: dict[str, torch.Tensor] = {}
    microsoft = _is_microsoft(sd)
    if microsoft:
        report.converted_from = "microsoft"
    for k, v in sd.items():
        if _DROP.search(k):
            continue
        if microsoft:
            m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
            if m:
                k = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
            elif k.startswith("head."):
                k = "head.fc." + k[len("head.") :]
        out[k] = v
    own = model.state_dict()
    for k, v in list(out.items()):
        if k.endswith("relative_position_bias_table") and k in own and own[k].shape != v.shape:
            if v.shape[1] == own[k].shape[1]:
                out[k] = _resize_table(v, own[k].shape[0])
                report.resized.append(k)
    for k in [k for k in out if k.startswith("head.")]:
        if k not in own or own[k].shape != out[k].shape:
            report.dropped_head.append(k)
            del out[k]
    if report.dropped_head:
        report.initialised_head = [k for k in own if k.startswith("head.")]
    for k in own:
        if k.startswith("seg_head.") and k not in out:
            report.initialised_head.append(k)
    return out, report


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
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)})")
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
