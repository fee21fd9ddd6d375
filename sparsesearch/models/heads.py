"""Task heads: timm-style classifier and a light FPN segmentation head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassifierHead", "FPNSegHead", "PyramidSegHead"]


class ClassifierHead(nn.Module):
    """Global average pool over (H, W) of NHWC features, then `fc` (timm's `head.fc`)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, num_classes)."""
        return self.fc(x.mean(dim=(1, 2)))


def _size(x: torch.Tensor) -> tuple[int, int]:
    """(h, w) of an NCHW map as ints: a traced graph (ONNX) then resizes to constants, without shape arithmetic."""
    return int(x.shape[-2]), int(x.shape[-1])


class FPNSegHead(nn.Module):
    """Light FPN (Panoptic-FPN style) semantic segmentation head over stride 4/8/16/32 NHWC features.

    Lateral 1x1 projections, top-down sum, one 3x3 conv per level, upsample-and-sum to stride 4,
    a 1x1 classifier, bilinear upsample to the input size.
    """

    def __init__(self, in_dims: Sequence[int], num_classes: int, dim: int = 128) -> None:
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, dim, 1) for c in in_dims])
        self.smooth = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.GroupNorm(8, dim), nn.GELU())
                for _ in in_dims
            ]
        )
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:
        """feats: NHWC per stage, finest first; returns (B, num_classes, *out_size) logits."""
        lat = [conv(f.permute(0, 3, 1, 2)) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=_size(lat[i - 1]), mode="nearest")
        size = _size(lat[0])
        fused = sum(
            F.interpolate(smooth(x), size=size, mode="bilinear", align_corners=False) if i else smooth(x)
            for i, (smooth, x) in enumerate(zip(self.smooth, lat))
        )
        return F.interpolate(self.classifier(fused), size=tuple(out_size), mode="bilinear", align_corners=False)


class PyramidSegHead(nn.Module):
    """Segmentation head for a single-scale (plain ViT) feature map: ViTDet's simple feature pyramid, then the
    light FPN above.

    From the stride-s map (s = the patch size, 16 for SAM) it builds stride s/4 and s/2 maps with 2x2 transposed
    convolutions, keeps stride s and max-pools to 2s, then `FPNSegHead` fuses them and upsamples to the input.
    """

    def __init__(self, in_dim: int, num_classes: int, dim: int = 128) -> None:
        super().__init__()
        half, quarter = max(in_dim // 2, 1), max(in_dim // 4, 1)
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, half, 2, stride=2),
            nn.GroupNorm(1, half),
            nn.GELU(),
            nn.ConvTranspose2d(half, quarter, 2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(in_dim, half, 2, stride=2)
        self.fpn = FPNSegHead((quarter, half, in_dim, in_dim), num_classes, dim)

    def forward(self, x: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
        """x: (B, C, h, w) NCHW features; returns (B, num_classes, *out_size) logits."""
        levels = [self.up4(x), self.up2(x), x, F.max_pool2d(x, 2, ceil_mode=True)]
        return self.fpn([f.permute(0, 2, 3, 1) for f in levels], out_size)
