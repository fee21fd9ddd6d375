"""Loading weights: timm-format and original Microsoft Swin checkpoints, timm `samvit_*` and original SAM
checkpoints; .pth/.pt/.bin and .safetensors."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

__all__ = ["read_state_dict", "convert_state_dict", "load_checkpoint", "checkpoint_family", "LoadReport"]

_WRAPPER_KEYS = ("state_dict", "model", "model_state", "module", "ema")
_DROP = re.compile(r"(relative_position_index|attn_mask|relative_coords_table)$")


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


def checkpoint_family(sd: Mapping[str, torch.Tensor]) -> str | None:
    """ "SamViT" for timm samvit / original SAM state dicts, "SwinTransformer" for Swin ones, None if unsure."""
    if any(k.startswith("image_encoder.") for k in sd) or any(k.endswith("attn.rel_pos_h") for k in sd):
        return "SamViT"
    if any(k.startswith("layers.") or k.endswith("relative_position_bias_table") for k in sd):
        return "SwinTransformer"
    return None


def _model_family(model: nn.Module) -> str:
    from .samvit import SamViT  # noqa: PLC0415

    return "SamViT" if isinstance(model, SamViT) else "SwinTransformer"


_FAMILY_WORDS = {"SamViT": "a SAM / plain ViT (samvit_*)", "SwinTransformer": "a Swin Transformer (swin_*)"}


def _check_family(sd: Mapping[str, torch.Tensor], model: nn.Module) -> str:
    found, own = checkpoint_family(sd), _model_family(model)
    if found is not None and found != own:
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointError(
            f"the checkpoint is {_FAMILY_WORDS[found]} checkpoint but {name} is {_FAMILY_WORDS[own]}: "
            "pick a model of the checkpoint's family (sparsesearch models lists them)"
        )
    return own


def _resize_rel_pos(v: torch.Tensor, length: int) -> torch.Tensor:
    """(L, d) -> (length, d), linear along L (timm's get_rel_pos)."""
    out = F.interpolate(v.T.unsqueeze(0).float(), size=length, mode="linear")
    return out.squeeze(0).T.to(v.dtype).contiguous()


def _convert_sam(sd: Mapping[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """timm samvit or original SAM (`image_encoder.*`, `mlp.lin1/2`) -> this SamViT; resizes pos_embed (bicubic)
    and relative-position tables (linear) to the model's, as timm does for other input sizes."""
    from .samvit import resample_pos_embed  # noqa: PLC0415

    report = LoadReport()
    out: dict[str, torch.Tensor] = {}
    if any(k.startswith("image_encoder.") for k in sd):
        report.converted_from = "sam"
        dropped = sorted({k.split(".")[0] for k in sd if not k.startswith("image_encoder.")})
        if dropped:
            report.notes.append(f"dropped the SAM parts this backbone does not have: {', '.join(dropped)}")
        sd = {
            k[len("image_encoder.") :].replace("mlp.lin", "mlp.fc"): v
            for k, v in sd.items()
            if k.startswith("image_encoder.")
        }
    own = model.state_dict()
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            if k == "pos_embed" and v.dim() == 4 and v.shape[-1] == own[k].shape[-1]:
                v = resample_pos_embed(v, tuple(own[k].shape[1:3]))
                report.resized.append(k)
            elif re.search(r"attn\.rel_pos_[hw]$", k) and v.dim() == 2 and v.shape[1] == own[k].shape[1]:
                v = _resize_rel_pos(v, own[k].shape[0])
                report.resized.append(k)
        out[k] = v
    return out, report


def _heads(out: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], report: LoadReport) -> None:
    """Drop a classifier the model lacks or sizes differently; list the head tensors left at initialisation."""
    for k in [k for k in out if k.startswith("head.")]:
        if k not in own or own[k].shape != out[k].shape:
            report.dropped_head.append(k)
            del out[k]
    report.initialised_head = [k for k in own if k.startswith(("head.", "seg_head.")) and k not in out]


def convert_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Turn a timm or Microsoft Swin state dict (or a timm samvit / original SAM one, for a SamViT) into this
    model's layout; a checkpoint of the other family raises CheckpointError.

    Drops derived buffers, moves Microsoft's downsample to the start of the next stage, renames `head.` to
    `head.fc.`, resizes relative position tables to the model's, and drops a classifier the model does not have
    or whose class count differs (reported, never silent).
    """
    if _check_family(sd, model) == "SamViT":
        converted, report = _convert_sam(sd, model)
        _heads(converted, model.state_dict(), report)
        return converted, report
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
    _heads(out, own, report)
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
