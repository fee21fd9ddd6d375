"""A deterministic synthetic *sparse-scene* segmentation set.

Each image is a large, mostly empty canvas (a dim grey background with a slow illumination gradient and
low-amplitude pixel noise) holding a few textured objects: discs, ellipses, rotated rectangles and
triangles. Every foreground class has its own colour and its own stripe texture (period and orientation),
fixed by the class index alone, so a small model can learn to segment them; the shape is drawn at random
and carries no class information. Objects cover roughly 5-20 % of the canvas, so most attention windows
are empty: the regime where window pruning pays (driving and medical scenes look like this).

Item ``i`` is generated from ``(seed, split, i)`` alone with its own ``numpy.random.Generator``: any item
can be generated on its own, in any order, in any worker, and is always the same.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sparsesearch.data.transforms import Size, as_hw, item_rng, to_tensor
from sparsesearch.options import settings_from

__all__ = ["SparseScenes", "SceneSettings", "SPLITS"]

#: split name -> code mixed into the per-item seed (train and val never share an item).
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

_SHAPES = ("disc", "ellipse", "rect", "triangle")
_BACKGROUND = 0.30  # mean grey level of the empty canvas (raw pixel scale [0, 1])
_GOLDEN = math.pi * (3.0 - math.sqrt(5.0))  # golden angle: well-spread stripe orientations

PairTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class _ClassStyle:
    """Colour (RGB in [0, 1]) and stripe texture (period in pixels, orientation) of one foreground class."""

    def __init__(self, c: int, num_fg: int) -> None:
        hue = ((c - 1) / num_fg + 0.02) % 1.0
        sat = 0.75 if c % 2 else 0.55
        self.colour = np.array(colorsys.hsv_to_rgb(hue, sat, 0.95), dtype=np.float32)
        self.period = 4.0 + 2.5 * ((c - 1) % 4)  # 4, 6.5, 9, 11.5 px
        self.angle = ((c - 1) * _GOLDEN) % math.pi


@dataclass
class SceneSettings:
    """What the scenes of :class:`SparseScenes` hold (the options of a ``"synthetic:N:OPTIONS"`` data spec).

    Attributes:
        objects: inclusive (min, max) number of objects per image.
        coverage: (min, max) share of the canvas the objects of one image cover together, drawn uniformly per
            image; the default (0.06, 0.16) gives sparse scenes, e.g. (0.3, 0.5) dense ones (harder for pruning:
            most windows then hold part of an object).
        noise: standard deviation of the pixel noise, raw pixel scale [0, 1].
    """

    objects: tuple[int, int] = (1, 4)
    coverage: tuple[float, float] = (0.06, 0.16)
    noise: float = 0.04


class SparseScenes(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Synthetic sparse-scene segmentation: ``n`` items of (image (3, H, W) float32, mask (H, W) int64).

    Args:
        n: number of items.
        size: canvas size, an int or (height, width); at least 16 each.
        num_classes: classes including background 0 (so ``num_classes - 1`` object classes); 2 to 64.
        seed: non-negative seed; with ``split`` and the index it fixes every item.
        split: "train", "val" or "test"; each split draws different items.
        hflip: flip each item horizontally with probability 1/2, drawn from (seed, split, index, epoch);
            call :meth:`set_epoch` each epoch for fresh flips.
        transform: optional ``(image, mask) -> (image, mask)`` applied last, to the normalised tensors.
        settings: what the scenes hold (a :class:`SceneSettings`: objects, coverage, noise); **overrides: its
            fields by name (``objects=(4, 10), coverage=(0.3, 0.5)``).

    ``image`` is normalised with :attr:`mean`/:attr:`std` (the raw-pixel statistics of this generator);
    ``mask`` holds values in ``[0, num_classes)``, 0 exactly where no object was drawn. :meth:`generate`
    gives the raw arrays. :attr:`ignore_index` (255) is never produced here but is what losses should use.
    """

    task = "seg"
    ignore_index = 255
    #: per-channel mean and std of raw pixels, measured over 256 train items at 256x256 with the defaults.
    mean: tuple[float, float, float] = (0.3007, 0.2979, 0.3043)
    std: tuple[float, float, float] = (0.0860, 0.0925, 0.0898)

    def __init__(
        self,
        n: int,
        size: Size = 256,
        num_classes: int = 4,
        seed: int = 0,
        *,
        split: str = "train",
        hflip: bool = False,
        transform: PairTransform | None = None,
        settings: SceneSettings | None = None,
        **overrides: Any,
    ) -> None:
        scene = settings_from(SceneSettings, settings, overrides, "SparseScenes")
        objects, coverage, noise = scene.objects, scene.coverage, scene.noise
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.size = as_hw(size)
        if min(self.size) < 16:
            raise ValueError(f"size must be at least 16x16, got {size!r}")
        if not 2 <= num_classes <= 64:
            raise ValueError(f"num_classes must be in [2, 64] (background included), got {num_classes}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not 1 <= objects[0] <= objects[1]:
            raise ValueError(f"objects must be (min, max) with 1 <= min <= max, got {objects!r}")
        if not 0 < coverage[0] <= coverage[1] < 1:
            raise ValueError(f"coverage must be (min, max) with 0 < min <= max < 1, got {coverage!r}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        self.n = n
        self.num_classes = num_classes
        self.seed = seed
        self.objects = (int(objects[0]), int(objects[1]))
        self.coverage = (float(coverage[0]), float(coverage[1]))
        self.noise = float(noise)
        self.split = split
        self.hflip = hflip
        self.transform = transform
        self.epoch = 0
        self.class_names: list[str] = ["background"] + [f"class{c}" for c in range(1, num_classes)]
        self._styles = [_ClassStyle(c, num_classes - 1) for c in range(1, num_classes)]

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random flips :meth:`__getitem__` draws (no effect without ``hflip``)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``index``: image (3, H, W) float32 normalised, mask (H, W) int64."""
        index = self._check_index(index)
        raw, mask = self.generate(index)
        image = to_tensor(raw, self.mean, self.std)
        target = torch.from_numpy(mask)
        if self.hflip and item_rng(self.seed, SPLITS[self.split], index, self.epoch, 1).random() < 0.5:
            image, target = image.flip(-1), target.flip(-1)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def _check_index(self, index: int) -> int:
        i = int(index)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        return i

    # -- generation -------------------------------------------------------------------------------------

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw item ``index``: image float32 (H, W, 3) in [0, 1] and mask int64 (H, W), no augmentation."""
        index = self._check_index(index)
        rng = item_rng(self.seed, SPLITS[self.split], index, 0)
        h, w = self.size
        yy = np.arange(h, dtype=np.float32)[:, None]
        xx = np.arange(w, dtype=np.float32)[None, :]

        # background: dim grey with a gentle linear illumination gradient and a slight colour cast
        gy, gx = rng.uniform(-0.04, 0.04, size=2)
        shade = _BACKGROUND + gy * (yy / h - 0.5) * 2 + gx * (xx / w - 0.5) * 2
        cast = rng.uniform(-0.015, 0.015, size=3).astype(np.float32)
        image = np.empty((h, w, 3), dtype=np.float32)
        image[:] = shade[..., None] + cast
        mask = np.zeros((h, w), dtype=np.int64)

        count = int(rng.integers(self.objects[0], self.objects[1] + 1))
        coverage = rng.uniform(*self.coverage)
        weights = rng.dirichlet(np.full(count, 3.0))
        for k in range(count):
            cls = int(rng.integers(1, self.num_classes))
            area = max(coverage * weights[k] * h * w, 24.0)
            self._draw_object(image, mask, cls, area, rng, yy, xx)

        if self.noise > 0:
            image += rng.normal(0.0, self.noise, size=image.shape).astype(np.float32)
        np.clip(image, 0.0, 1.0, out=image)
        return image, mask

    def _draw_object(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        cls: int,
        area: float,
        rng: np.random.Generator,
        yy: np.ndarray,
        xx: np.ndarray,
    ) -> None:
        """Paint one object of class ``cls`` with about ``area`` pixels, avoiding others when it can."""
        h, w = mask.shape
        shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
        theta = rng.uniform(0, math.pi)
        if shape == "disc":
            r = math.sqrt(area / math.pi)
            params: tuple[float, ...] = (r, r)
        elif shape == "ellipse":
            e = rng.uniform(0.45, 1.0)
            a = math.sqrt(area / (math.pi * e))
            params = (a, a * e)
        elif shape == "rect":
            e = rng.uniform(0.4, 1.0)
            a = math.sqrt(area / e)
            params = (a / 2, a * e / 2)
        else:  # triangle: jittered vertices around a circle whose equilateral triangle has `area`
            r = math.sqrt(area / (0.75 * math.sqrt(3.0)))
            angles = theta + np.arange(3) * 2 * math.pi / 3 + rng.uniform(-0.35, 0.35, size=3)
            radii = r * rng.uniform(0.85, 1.15, size=3)
            params = tuple(np.concatenate([radii * np.cos(angles), radii * np.sin(angles)]).tolist())
        extent = self._extent(shape, params)
        ext = min(extent, (min(h, w) - 2) / 2)

        sel = None
        for _ in range(30):
            cy = rng.uniform(ext, h - ext)
            cx = rng.uniform(ext, w - ext)
            y0, y1 = max(int(cy - extent) - 1, 0), min(int(cy + extent) + 2, h)
            x0, x1 = max(int(cx - extent) - 1, 0), min(int(cx + extent) + 2, w)
            dy = yy[y0:y1] - cy
            dx = xx[:, x0:x1] - cx
            sel = self._inside(shape, params, theta, dy, dx)
            if not (mask[y0:y1, x0:x1][sel] > 0).any():
                break  # no overlap with earlier objects (else the last try is painted over them)
        assert sel is not None
        if not sel.any():
            return

        style = self._styles[cls - 1]
        phase = rng.uniform(0, 2 * math.pi)
        contrast = rng.uniform(0.75, 1.0)
        colour = np.clip(style.colour + rng.uniform(-0.04, 0.04, size=3), 0, 1).astype(np.float32)
        u = (xx[:, x0:x1] * math.cos(style.angle) + yy[y0:y1] * math.sin(style.angle)) / style.period
        stripes = np.sin(2 * math.pi * u + phase)
        level = 0.6 + 0.4 * contrast * stripes  # in [0.2, 1.0]
        region = image[y0:y1, x0:x1]
        region[sel] = (level[sel][:, None] * colour[None, :]).astype(np.float32)
        mask[y0:y1, x0:x1][sel] = cls

    @staticmethod
    def _extent(shape: str, params: tuple[float, ...]) -> float:
        if shape in ("disc", "ellipse"):
            return max(params[0], params[1])
        if shape == "rect":
            return math.hypot(params[0], params[1])
        return max(math.hypot(params[i], params[i + 3]) for i in range(3))

    @staticmethod
    def _inside(shape: str, params: tuple[float, ...], theta: float, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """Boolean (len(dy), len(dx)) of offsets (dy, dx) from the centre that fall inside the shape."""
        if shape == "triangle":
            px, py = params[:3], params[3:]
            inside = np.ones(np.broadcast_shapes(dy.shape, dx.shape), dtype=bool)
            orient = (px[1] - px[0]) * (py[2] - py[0]) - (py[1] - py[0]) * (px[2] - px[0])
            for i in range(3):
                j = (i + 1) % 3
                cross = (px[j] - px[i]) * (dy - py[i]) - (py[j] - py[i]) * (dx - px[i])
                inside &= cross * orient >= 0
            return inside
        c, s = math.cos(theta), math.sin(theta)
        u = dx * c + dy * s
        v = -dx * s + dy * c
        a, b = params
        if shape == "rect":
            return (np.abs(u) <= a) & (np.abs(v) <= b)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
