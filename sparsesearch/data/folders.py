"""Datasets read from folders: ImageNet-layout classification, image/label-PNG segmentation, and images alone.

Decoding is Pillow; augmentation is Pillow/numpy/torch (no torchvision). Random augmentation of item ``i``
is drawn from ``(seed, epoch, i)`` alone (see :meth:`set_epoch`), so it does not depend on loading order or
on the number of workers. A missing, empty or malformed folder or file raises :class:`DataError` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from sparsesearch.data.transforms import (
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Size,
    as_hw,
    item_rng,
    load_label,
    load_rgb,
    pad_crop,
    random_resized_crop_box,
    resize_image,
    resize_label,
    to_tensor,
)
from sparsesearch.errors import DataError
from sparsesearch.options import settings_from

__all__ = [
    "ImageFolderUnlabelled",
    "ImageFolderClassification",
    "SegmentationFolder",
    "SegmentationLayout",
    "IMAGE_DIR_NAMES",
    "LABEL_DIR_NAMES",
    "find_segmentation_dirs",
]

#: accepted names of the image and label folders of a segmentation set (first match wins).
IMAGE_DIR_NAMES: tuple[str, ...] = ("images", "img_dir")
LABEL_DIR_NAMES: tuple[str, ...] = ("labels", "ann_dir", "annotations")


def _check_root(root: str | Path, what: str) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data folder {path} does not exist; {what}")
    if not path.is_dir():
        raise DataError(f"data path {path} is not a directory; {what}")
    return path


def _visible(path: Path, base: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(base).parts)


def _files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """Files under ``folder`` (recursively, hidden ones skipped) whose suffix is in ``extensions``, sorted."""
    exts = {e.lower() for e in extensions}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts and _visible(p, folder))


def find_segmentation_dirs(root: Path) -> tuple[Path, Path] | None:
    """``(image_dir, label_dir)`` of a segmentation layout directly under ``root``, or None."""
    images = next((root / n for n in IMAGE_DIR_NAMES if (root / n).is_dir()), None)
    labels = next((root / n for n in LABEL_DIR_NAMES if (root / n).is_dir()), None)
    if images is None or labels is None:
        return None
    return images, labels


class _Folder:
    """What the folder datasets share: the checked root, size, train flag, seed, scale range and epoch of the
    random augmentation, the items in :attr:`samples`, and normalisation with the ImageNet mean/std."""

    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    samples: Sequence[Any]

    def _setup(
        self, root: str | Path, hint: str, size: Size, train: bool, seed: int, scale: tuple[float, float]
    ) -> None:
        """Check `root` (DataError with `hint` when it is no folder) and keep the settings every folder set has."""
        self.root = _check_root(root, hint)
        self.size = as_hw(size)
        self.train = train
        self.seed = seed
        self.scale = scale
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random augmentation :meth:`__getitem__` draws."""
        self.epoch = int(epoch)

    def _crop_and_flip(self, img: Image.Image, index: int) -> Image.Image:
        """The train augmentation of an image set: a random resized crop (scale :attr:`scale`, ratio 3/4-4/3) to
        :attr:`size` and a random horizontal flip, drawn from (seed, epoch, index)."""
        rng = item_rng(self.seed, self.epoch, index)
        box = random_resized_crop_box(img.width, img.height, rng, self.scale)
        img = resize_image(img, self.size, box=box)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img


class ImageFolderClassification(_Folder, Dataset[tuple[torch.Tensor, int]]):
    """ImageNet-layout classification: ``root/<class>/<image>`` -> (image (3, H, W) float32, class int).

    Class indices follow the sorted class folder names (:attr:`class_names`); images are found
    recursively with extensions jpg/jpeg/png/bmp/webp (case-insensitive) and decoded to RGB.

    Train: random resized crop (scale 0.08-1, ratio 3/4-4/3) to ``size`` and a random horizontal flip.
    Eval: resize so the image covers ``size / crop_ratio`` (the shorter side for a square size: 224 -> 256),
    then a centre crop to ``size``. Both normalise with the ImageNet mean/std.
    """

    task = "cls"

    def __init__(
        self,
        root: str | Path,
        size: Size = 224,
        train: bool = True,
        seed: int = 0,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        crop_ratio: float = 0.875,
        scale: tuple[float, float] = (0.08, 1.0),
    ) -> None:
        hint = "expected ImageNet layout ROOT/<class>/<image>"
        self._setup(root, hint, size, train, seed, scale)
        self.crop_ratio = crop_ratio
        class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise DataError(f"data folder {self.root} has no class sub-folders; {hint}")
        self.class_names: list[str] = [p.name for p in class_dirs]
        self.samples: list[tuple[Path, int]] = []
        empty: list[Path] = []
        for idx, d in enumerate(class_dirs):
            files = _files(d, extensions)
            if not files:
                empty.append(d)
            self.samples.extend((f, idx) for f in files)
        if not self.samples:
            raise DataError(
                f"data folder {self.root} has no images (extensions {', '.join(extensions)}) in its "
                f"class sub-folders; {hint}"
            )
        if empty:
            raise DataError(
                f"class folder {empty[0]} has no images"
                + (f" (and {len(empty) - 1} more empty class folders)" if len(empty) > 1 else "")
                + "; add images or remove the folder"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def targets(self) -> list[int]:
        """Class index of every item, in order."""
        return [t for _, t in self.samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Item ``index``: image (3, H, W) float32 normalised, class index int."""
        path, target = self.samples[index]
        img = load_rgb(path)
        th, tw = self.size
        if self.train:
            img = self._crop_and_flip(img, index % len(self.samples))
        else:
            s = max(th / self.crop_ratio / img.height, tw / self.crop_ratio / img.width)
            nh, nw = max(th, round(img.height * s)), max(tw, round(img.width * s))
            img = resize_image(img, (nh, nw))
            top, left = (nh - th) // 2, (nw - tw) // 2
            img = img.crop((left, top, left + tw, top + th))
        return to_tensor(img, self.mean, self.std), target


@dataclass
class SegmentationLayout:
    """Where :class:`SegmentationFolder` finds its files under ``root/images`` and ``root/labels``.

    Attributes:
        image_suffix, label_suffix: endings of the file names (before the extension) left out when an image is
            paired with its label, e.g. Cityscapes' ``"_leftImg8bit"`` and ``"_gtFine_labelTrainIds"``.
        subdir: read ``images/<subdir>`` and ``labels/<subdir>`` (the ADE20K/mmseg split layout); None: the two
            folders themselves.
    """

    image_suffix: str = ""
    label_suffix: str = ""
    subdir: str | None = None


class SegmentationFolder(_Folder, Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Segmentation from ``root/images/*`` + ``root/labels/*.png`` -> (image (3, H, W) float32, label (H, W) int64).

    Folder names ``img_dir``/``ann_dir`` (mmseg) and ``annotations`` (ADE20K) are accepted too. Images
    (jpg/jpeg/png/bmp/webp) and labels are found recursively and paired by their path relative to their
    folder, without extension and without ``image_suffix``/``label_suffix`` (e.g. Cityscapes'
    ``"_leftImg8bit"`` and ``"_gtFine_labelTrainIds"``). Labels are single-channel PNGs (mode L or P, or
    16-bit) holding class ids as stored; ``ignore_index`` (255) marks pixels that no loss or metric counts.

    Train: resize to ``size`` times a random factor in ``scale``, random crop to ``size`` (padding the
    image with 0 (the mean colour) and the label with ``ignore_index`` where it is smaller), random
    horizontal flip. Eval: resize to ``size``. Images are resized bilinearly, labels with nearest neighbour
    (values are never blended). Both normalise with the ImageNet mean/std.

    ``num_classes``: when not given, read from ``root/classes.txt`` (one class name per line) if present,
    else inferred on first access to :attr:`num_classes` by scanning every label (max non-ignore value + 1):
    a one-off pass over the label files, so pass it for large sets, and pass the train set's value to the
    val set (which may lack the highest class). A label value >= ``num_classes`` (other than the ignore
    index) raises DataError naming the file when the item is loaded.

    ``layout`` (or its fields by name: ``subdir="training"``, ``image_suffix=...``): a :class:`SegmentationLayout`;
    ``subdir`` reads ``images/<subdir>`` and ``labels/<subdir>`` (the ADE20K/mmseg split layout).
    """

    task = "seg"

    def __init__(
        self,
        root: str | Path,
        size: Size = 512,
        train: bool = True,
        ignore_index: int = 255,
        num_classes: int | None = None,
        seed: int = 0,
        scale: tuple[float, float] = (0.5, 2.0),
        *,
        layout: SegmentationLayout | None = None,
        **overrides: Any,
    ) -> None:
        files = settings_from(SegmentationLayout, layout, overrides, "SegmentationFolder")
        image_suffix, label_suffix, subdir = files.image_suffix, files.label_suffix, files.subdir
        hint = (
            f"expected ROOT/{{{'|'.join(IMAGE_DIR_NAMES)}}}/<name>.jpg|png and "
            f"ROOT/{{{'|'.join(LABEL_DIR_NAMES)}}}/<name>.png"
        )
        self._setup(root, hint, size, train, seed, scale)
        self.ignore_index = ignore_index
        dirs = find_segmentation_dirs(self.root)
        if dirs is None:
            raise DataError(f"data folder {self.root} has no image and label folders; {hint}")
        self.image_dir, self.label_dir = dirs
        if subdir is not None:
            self.image_dir, self.label_dir = self.image_dir / subdir, self.label_dir / subdir
            for d in (self.image_dir, self.label_dir):
                if not d.is_dir():
                    raise DataError(f"split folder {d} does not exist; {hint} with one sub-folder per split")

        images = _files(self.image_dir, IMAGE_EXTENSIONS)
        if not images:
            raise DataError(
                f"image folder {self.image_dir} has no images (extensions {', '.join(IMAGE_EXTENSIONS)}); {hint}"
            )
        labels = {self._key(p, self.label_dir, label_suffix): p for p in _files(self.label_dir, (".png",))}
        self.samples: list[tuple[Path, Path]] = []
        for img in images:
            key = self._key(img, self.image_dir, image_suffix)
            lab = labels.get(key)
            if lab is None:
                expected = self.label_dir / f"{key}{label_suffix}.png"
                raise DataError(f"image {img} has no label: expected {expected}")
            self.samples.append((img, lab))

        self._class_names: list[str] | None = None
        names_file = self.root / "classes.txt"
        if names_file.is_file():
            names = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
            if not names:
                raise DataError(f"class names file {names_file} is empty; list one class name per line")
            self._class_names = names
            if num_classes is None:
                num_classes = len(names)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self._num_classes = num_classes

    @staticmethod
    def _key(path: Path, base: Path, suffix: str) -> str:
        rel = path.relative_to(base).with_suffix("").as_posix()
        if suffix and rel.endswith(suffix):
            rel = rel[: -len(suffix)]
        return rel

    @property
    def num_classes(self) -> int:
        """Number of classes (background included); scans every label once when it was not given."""
        if self._num_classes is None:
            top = -1
            for _, lab_path in self.samples:
                lab = load_label(lab_path)
                valid = lab[lab != self.ignore_index]
                if valid.size:
                    top = max(top, int(valid.max()))
            if top < 0:
                raise DataError(
                    f"every label pixel under {self.label_dir} is {self.ignore_index} (ignore); "
                    "cannot infer num_classes"
                )
            self._num_classes = top + 1
        return self._num_classes

    @property
    def class_names(self) -> list[str]:
        if self._class_names is not None:
            return self._class_names
        return [str(i) for i in range(self.num_classes)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``index``: image (3, H, W) float32 normalised, label (H, W) int64 (``ignore_index`` kept)."""
        img_path, lab_path = self.samples[index]
        index = index % len(self.samples)
        img = load_rgb(img_path)
        lab = load_label(lab_path)
        if lab.shape != (img.height, img.width):
            raise DataError(
                f"label {lab_path} is {lab.shape[1]}x{lab.shape[0]} but image {img_path} is "
                f"{img.width}x{img.height}; they must have the same size"
            )
        self._check_values(lab, lab_path)
        if not self.train:
            img = resize_image(img, self.size)
            lab = resize_label(lab, self.size)
            return to_tensor(img, self.mean, self.std), torch.from_numpy(np.ascontiguousarray(lab))
        rng = item_rng(self.seed, self.epoch, index)
        s = rng.uniform(self.scale[0], self.scale[1])
        hw = (max(1, round(self.size[0] * s)), max(1, round(self.size[1] * s)))
        image = to_tensor(resize_image(img, hw), self.mean, self.std)
        label = torch.from_numpy(np.ascontiguousarray(resize_label(lab, hw)))
        image, label = pad_crop(image, label, self.size, rng, self.ignore_index)
        if rng.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image.contiguous(), label.contiguous()

    def _check_values(self, lab: np.ndarray, path: Path) -> None:
        if self._num_classes is None:
            return
        valid = lab[lab != self.ignore_index]
        if valid.size and int(valid.max()) >= self._num_classes:
            raise DataError(
                f"label {path} has class value {int(valid.max())} but num_classes is {self._num_classes}; "
                f"pass a larger num_classes or set such pixels to the ignore index {self.ignore_index}"
            )


class ImageFolderUnlabelled(_Folder, Dataset[tuple[torch.Tensor, int]]):
    """Images without labels: every image under ``root`` (jpg/jpeg/png/bmp/webp, nested folders included, hidden
    ones skipped, sorted by path) -> (image (3, H, W) float32, -1).

    For scoring without labels (fidelity to the dense model) and adaptation without labels (distillation from a
    frozen teacher). Train: random resized crop (scale 0.25-1, ratio 3/4-4/3) to ``size`` and a random horizontal
    flip, drawn from (seed, epoch, index). Eval: resize to ``size``. Both normalise with the ImageNet mean/std.
    The target -1 says "no label"; :attr:`labelled` is False, so labelled metrics refuse the set.
    """

    task = "unlabelled"
    labelled = False

    def __init__(
        self,
        root: str | Path,
        size: Size = 224,
        train: bool = True,
        seed: int = 0,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        scale: tuple[float, float] = (0.25, 1.0),
    ) -> None:
        self._setup(root, "expected a folder of images (jpg/png, nested folders are fine)", size, train, seed, scale)
        self.samples: list[Path] = _files(self.root, extensions)
        if not self.samples:
            raise DataError(
                f"data folder {self.root} holds no images (extensions {', '.join(extensions)}, nested folders "
                "included): put the images to score or train on there"
            )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Item ``index``: image (3, H, W) float32 normalised, and -1 (no label)."""
        path = self.samples[index]
        img = load_rgb(path)
        img = self._crop_and_flip(img, index % len(self.samples)) if self.train else resize_image(img, self.size)
        return to_tensor(img, self.mean, self.std), -1
