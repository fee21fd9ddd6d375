"""Small image/label helpers shared by the datasets: decoding, resizing, cropping, normalising.

Everything here is pure Pillow/numpy/torch (no torchvision). Randomness always comes from an explicit
``numpy.random.Generator`` (see :func:`item_rng`), never from a global RNG, so an augmented item depends
only on (dataset seed, epoch, index): the result is the same whatever the loading order or worker count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sparsesearch.errors import DataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "Size",
    "as_hw",
    "item_rng",
    "load_rgb",
    "load_label",
    "to_tensor",
    "resize_image",
    "resize_label",
    "random_resized_crop_box",
    "pad_crop",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

Size = int | tuple[int, int]


def as_hw(size: Size) -> tuple[int, int]:
    """``224 -> (224, 224)``; ``(h, w) -> (h, w)``. Raises ValueError for non-positive sizes."""
    if isinstance(size, int):
        hw = (size, size)
    else:
        if len(size) != 2:
            raise ValueError(f"size must be an int or (height, width), got {size!r}")
        hw = (int(size[0]), int(size[1]))
    if hw[0] <= 0 or hw[1] <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return hw


def item_rng(*keys: int) -> np.random.Generator:
    """A fresh numpy Generator seeded from the non-negative integers ``keys`` alone."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def load_rgb(path: Path) -> Image.Image:
    """Decode ``path`` fully and return it as an RGB Pillow image; DataError naming the file if it can't."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}; replace or remove this file") from exc


def load_label(path: Path) -> np.ndarray:
    """Read a class-index label PNG as an integer array (H, W), values kept as stored.

    Accepted modes: ``L``/``P`` (uint8, palette indices for P), ``I``/``I;16`` (wider ints), ``1`` (0/1).
    Colour labels (RGB/RGBA) are refused: they would need a colour-to-class map.
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr", "HSV", "LAB"):
                raise DataError(
                    f"label {path} is a {mode} colour image; labels must be single-channel class-index "
                    "PNGs (mode L or P, one class id per pixel, 255 = ignore)"
                )
            arr = np.array(im)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read label {path}: {exc}; replace or remove this file") from exc
    if arr.ndim != 2:
        raise DataError(f"label {path} has shape {arr.shape}; expected a single-channel (H, W) PNG")
    return arr.astype(np.int64, copy=False)


def to_tensor(img: Image.Image | np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB image (Pillow, or float array (H, W, 3) in [0, 1]) -> normalised float32 tensor (3, H, W)."""
    if isinstance(img, Image.Image):
        arr = np.asarray(img, dtype=np.float32) / 255.0
    else:
        arr = np.asarray(img, dtype=np.float32)
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    arr = (arr - m) / s
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def resize_image(
    img: Image.Image, hw: tuple[int, int], box: tuple[float, float, float, float] | None = None
) -> Image.Image:
    """Bilinear (antialiased) resize of ``img`` (or of its ``box`` = (left, top, right, bottom)) to (h, w)."""
    h, w = hw
    return img.resize((w, h), Image.Resampling.BILINEAR, box=box)


def resize_label(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer label (H, W) to ``hw``; values are only ever copied."""
    h0, w0 = label.shape
    h, w = hw
    if (h0, w0) == (h, w):
        return label
    rows = np.minimum(((np.arange(h) + 0.5) * h0 / h).astype(np.int64), h0 - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * w0 / w).astype(np.int64), w0 - 1)
    return np.asarray(label[rows[:, None], cols[None, :]])


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Inception-style crop box ``(left, top, right, bottom)`` covering ``scale`` of the area at ``ratio``.

    Same algorithm as torchvision's RandomResizedCrop: 10 tries, then a centre crop clamped to ``ratio``.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def pad_crop(
    image: torch.Tensor, label: torch.Tensor, hw: tuple[int, int], rng: np.random.Generator, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop of image (C, H, W) and label (H, W) to ``hw``, padding first where they are smaller.

    The image is padded with 0 (the mean colour once normalised), the label with ``ignore_index``.
    """
    th, tw = hw
    _, h, w = image.shape
    ph, pw = max(th - h, 0), max(tw - w, 0)
    if ph or pw:
        image = torch.nn.functional.pad(image, (0, pw, 0, ph), value=0.0)
        label = torch.nn.functional.pad(label, (0, pw, 0, ph), value=ignore_index)
        h, w = h + ph, w + pw
    top = int(rng.integers(0, h - th + 1))
    left = int(rng.integers(0, w - tw + 1))
    return image[:, top : top + th, left : left + tw], label[top : top + th, left : left + tw]
