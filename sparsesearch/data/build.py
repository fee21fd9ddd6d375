"""``build_dataset``: a dataset from a spec string; ``make_loader``: a deterministic, resumable DataLoader."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sparsesearch.data.folders import (
    ImageFolderClassification,
    ImageFolderUnlabelled,
    SegmentationFolder,
    find_segmentation_dirs,
)
from sparsesearch.data.synthetic import SparseScenes
from sparsesearch.data.transforms import IMAGE_EXTENSIONS, Size
from sparsesearch.errors import DataError
from sparsesearch.options import settings_from

__all__ = [
    "build_dataset",
    "parse_synthetic_spec",
    "make_loader",
    "LoaderPlacement",
    "EpochSampler",
    "AnyDataset",
    "DEFAULT_SYNTHETIC_SIZE",
    "SPLIT_ALIASES",
    "UNLABELLED",
]

#: train items of the spec "synthetic" (val/test get max(16, N // 4)).
DEFAULT_SYNTHETIC_SIZE = 256
#: folder names accepted for each split.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "validation", "valid"),
    "test": ("test", "testing"),
}
TASKS = ("seg", "cls")
#: the task build_dataset returns for a folder of images without labels.
UNLABELLED = "unlabelled"
#: what build_dataset returns.
AnyDataset = SparseScenes | SegmentationFolder | ImageFolderClassification | ImageFolderUnlabelled


_SYNTH_HELP = (
    "use 'synthetic', 'synthetic:N' (N >= 1 train images) or 'synthetic:N:OPTIONS' with OPTIONS such as "
    "objects=4-10,coverage=0.3-0.5,noise=0.04"
)


def _range(key: str, value: str, cast: type, spec: str) -> tuple[Any, Any]:
    lo, sep, hi = value.partition("-")
    try:
        a = cast(lo)
        return (a, cast(hi) if sep else a)
    except ValueError:
        raise DataError(f"bad data spec {spec!r}: {key} wants MIN-MAX (or one value), got {value!r}") from None


def parse_synthetic_spec(spec: str) -> tuple[int, dict[str, Any]]:
    """``"synthetic[:N][:key=value,...]"`` -> (train items, :class:`SparseScenes` keyword arguments).

    Options: ``objects=MIN-MAX`` (objects per image), ``coverage=MIN-MAX`` (share of the canvas the objects
    cover), ``noise=SD``. E.g. ``"synthetic:512:objects=4-10,coverage=0.3-0.5"`` gives dense scenes.
    """
    parts = spec.split(":")
    if parts[0] != "synthetic" or len(parts) > 3:
        raise DataError(f"bad data spec {spec!r}: {_SYNTH_HELP}")
    n = DEFAULT_SYNTHETIC_SIZE
    if len(parts) > 1 and parts[1]:
        try:
            n = int(parts[1])
        except ValueError:
            n = -1
        if n < 1:
            raise DataError(f"bad data spec {spec!r}: {_SYNTH_HELP}")
    kw: dict[str, Any] = {}
    for item in parts[2].split(",") if len(parts) > 2 and parts[2] else []:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise DataError(f"bad data spec {spec!r}: option {item!r} is not key=value; {_SYNTH_HELP}")
        if key == "objects":
            kw[key] = _range(key, value, int, spec)
        elif key == "coverage":
            kw[key] = _range(key, value, float, spec)
        elif key == "noise":
            try:
                kw[key] = float(value)
            except ValueError:
                raise DataError(f"bad data spec {spec!r}: noise wants a number, got {value!r}") from None
        else:
            raise DataError(f"bad data spec {spec!r}: unknown option {key!r} (known: objects, coverage, noise)")
    return n, kw


def _synthetic(
    spec: str, split: str, size: Size, seed: int, num_classes: int | None, kw: dict[str, Any]
) -> SparseScenes:
    n, options = parse_synthetic_spec(spec)
    if split != "train":
        n = max(16, n // 4)
    kw = {**kw, **options}
    kw.setdefault("hflip", split == "train")
    try:
        return SparseScenes(n, size, num_classes=num_classes or 4, seed=seed, split=split, **kw)
    except ValueError as e:
        raise DataError(f"synthetic data {spec!r}: {e}") from None  # a bad option, or a size it cannot draw


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()


def _has_class_dirs(root: Path) -> bool:
    """Two or more visible sub-folders holding images, and no images loose in ``root``: a class-folder layout (a
    single sub-folder of images, e.g. ``images/`` alone, is a folder of images without labels)."""
    if any(_is_image(p) for p in root.iterdir()):
        return False
    with_images = [
        d
        for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(".") and any(_is_image(p) for p in d.rglob("*"))
    ]
    return len(with_images) >= 2


def _has_images(root: Path) -> bool:
    return any(
        _is_image(p) and not any(part.startswith(".") for part in p.relative_to(root).parts) for p in root.rglob("*")
    )


def _find_split(root: Path, split: str) -> tuple[Path | None, list[str]]:
    """The folder of ``split`` under ``root`` and the names of all split folders found there."""
    found = [n for names in SPLIT_ALIASES.values() for n in names if (root / n).is_dir()]
    wanted = next((root / n for n in SPLIT_ALIASES[split] if (root / n).is_dir()), None)
    return wanted, found


def build_dataset(
    spec: str,
    split: str,
    size: Size,
    *,
    task: str | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    **kw: Any,
) -> tuple[AnyDataset, str]:
    """Build the ``split`` ("train", "val" or "test") of the dataset named by ``spec``.

    ``spec``:
      * ``"synthetic"``, ``"synthetic:N"`` or ``"synthetic:N:OPTIONS"``: :class:`SparseScenes` with N train
        items (default :data:`DEFAULT_SYNTHETIC_SIZE`) and ``max(16, N // 4)`` val/test items; flips on for
        train; OPTIONS as in :func:`parse_synthetic_spec` (e.g. ``objects=4-10,coverage=0.3-0.5``).
      * a directory, layout auto-detected. If it holds split folders (``train``/``val``, also
        ``training``/``validation``), the one for ``split`` is used (DataError if it is missing). Then
        ``images/`` + ``labels/`` (or ``img_dir``/``ann_dir``, ``annotations``) -> segmentation
        (:class:`SegmentationFolder`; a ``images/<split>`` + ``labels/<split>`` layout is also found);
        class sub-folders holding images -> classification (:class:`ImageFolderClassification`).
        A directory without split folders serves the same images for every split.

        Any other folder holding images (jpg/png, nested folders included) is a set without labels
        (:class:`ImageFolderUnlabelled`, task "unlabelled"): for fidelity scoring and label-free adaptation.

    ``task`` ("seg"/"cls") forces the task; a layout of the other kind, or images without labels, is a
    DataError. Train datasets get random augmentation, others the deterministic eval transform. Extra ``kw`` go
    to the dataset class.

    Returns ``(dataset, task)``; items are (image (3, H, W) float32, mask (H, W) int64) for "seg",
    (image (3, H, W) float32, int) for "cls" and (image (3, H, W) float32, -1) for "unlabelled".
    """
    if split not in SPLIT_ALIASES:
        raise ValueError(f"split must be one of {sorted(SPLIT_ALIASES)}, got {split!r}")
    if task is not None and task not in TASKS:
        raise DataError(f"unknown task {task!r}; use 'seg' (segmentation) or 'cls' (classification)")
    train = split == "train"
    if spec == "synthetic" or spec.startswith("synthetic:"):
        if task == "cls":
            raise DataError("the synthetic data set is a segmentation set; use --task seg or a classification folder")
        return _synthetic(spec, split, size, seed, num_classes, kw), "seg"

    root = _split_root(Path(spec).expanduser(), split)
    detected, subdir = _detect_layout(root, split)
    if detected == UNLABELLED:
        if task is not None:
            raise DataError(_unlabelled_message(root, task))
        return ImageFolderUnlabelled(root, size, train=train, seed=seed), UNLABELLED
    if task is not None and task != detected:
        kind = {"seg": "segmentation", "cls": "classification"}[detected]
        raise DataError(f"data folder {root} looks like a {kind} set but task {task!r} was asked for")

    if detected == "seg":
        ds_seg = SegmentationFolder(root, size, train=train, num_classes=num_classes, seed=seed, subdir=subdir, **kw)
        return ds_seg, "seg"
    ds_cls = ImageFolderClassification(root, size, train=train, seed=seed, **kw)
    if num_classes is not None and num_classes != ds_cls.num_classes:
        raise DataError(
            f"data folder {root} has {ds_cls.num_classes} class folders but num_classes={num_classes} was given"
        )
    return ds_cls, "cls"


def _unlabelled_message(root: Path, task: str) -> str:
    need = "mIoU (segmentation) needs images/ + labels/" if task == "seg" else "top-1 needs one sub-folder per class"
    return (
        f"data folder {root} holds images without labels, but {need}: score without labels by fidelity to the "
        "dense model (--accuracy fidelity), or adapt without labels (--teacher frozen)"
    )


def _split_root(root: Path, split: str) -> Path:
    """The folder that holds ``split``: ``root``'s split folder for it when ``root`` has split folders, else
    ``root`` itself; DataError if ``root`` is not a directory or lacks that split."""
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass 'synthetic[:N]' or an existing directory")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a directory; pass 'synthetic[:N]' or a dataset directory")
    split_dir, found = _find_split(root, split)
    if not found:
        return root
    if split_dir is None:
        names = "/".join(SPLIT_ALIASES[split])
        raise DataError(f"data folder {root} has split folders ({', '.join(found)}) but no {names} folder")
    return split_dir


def _detect_layout(root: Path, split: str) -> tuple[str, str | None]:
    """("seg", images sub-folder of ``split`` or None), ("cls", None) or ("unlabelled", None); DataError for a
    folder without images."""
    seg_dirs = find_segmentation_dirs(root)
    if seg_dirs is not None:
        img_split, img_found = _find_split(seg_dirs[0], split)
        if not img_found:
            return "seg", None
        if img_split is None:
            raise DataError(
                f"image folder {seg_dirs[0]} has split folders ({', '.join(img_found)}) but no "
                f"{'/'.join(SPLIT_ALIASES[split])} folder"
            )
        return "seg", img_split.name
    if _has_class_dirs(root):
        return "cls", None
    if _has_images(root):
        return UNLABELLED, None
    raise DataError(
        f"cannot tell the layout of data folder {root}: it holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
        "expected images/ + labels/ (segmentation), one sub-folder of images per class (classification), "
        "images alone (no labels), or train/ and val/ folders of these"
    )


def _mix(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint32)[0])


class EpochSampler(Sampler[int]):
    """Indices of one epoch for one rank: order fixed by (seed, epoch), optionally starting part-way in.

    With ``shuffle`` the order is a permutation drawn from (seed, epoch) alone; without it, 0..n-1. For
    ``world_size`` > 1 the order is padded by wrapping round to a multiple of ``world_size`` and rank r
    takes positions r, r + world_size, ... (as DistributedSampler does), so every rank gets the same count.
    ``start`` skips the first ``start`` indices of this rank (resuming mid-epoch).
    """

    def __init__(
        self, n: int, shuffle: bool, seed: int, epoch: int = 0, rank: int = 0, world_size: int = 1, start: int = 0
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, epoch
        self.rank, self.world_size, self.start = rank, world_size, max(0, start)
        self.per_rank = math.ceil(n / world_size) if n else 0

    def __iter__(self) -> Iterator[int]:
        if self.n == 0:
            return iter(())
        if self.shuffle:
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return iter(order[self.rank : total : self.world_size][self.start :])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


@dataclass
class LoaderPlacement:
    """Where batches are loaded (none of it changes which batches a loader gives).

    Attributes:
        workers: DataLoader worker processes (0: in this process).
        rank, world_size: this process's rank of ``world_size`` DDP processes; the ranks split each epoch's order.
        pin_memory: put batches in pinned memory (faster copies to a GPU).
    """

    workers: int = 0
    rank: int = 0
    world_size: int = 1
    pin_memory: bool = False


def make_loader(
    dataset: Dataset[Any],
    batch: int,
    shuffle: bool,
    seed: int = 0,
    *,
    epoch: int = 0,
    skip_batches: int = 0,
    drop_last: bool = False,
    placement: LoaderPlacement | None = None,
    **overrides: Any,
) -> DataLoader[Any]:
    """A DataLoader over one epoch whose batches depend on (dataset, seed, epoch) alone.

    Build one loader per epoch. The order comes from an :class:`EpochSampler` seeded with (seed, epoch);
    the dataset's own random augmentation is drawn per item from (its seed, epoch, index) after
    ``dataset.set_epoch(epoch)`` is called here; so the batches do not depend on ``workers``, and a run
    resumed at (epoch, skip_batches) sees exactly the batches an uninterrupted run would. ``placement`` (or its
    fields by name: ``workers=2``, ``rank=1, world_size=4`` for DDP, ``pin_memory=True``): a
    :class:`LoaderPlacement`; the DDP ranks split the epoch's order and get equal batch counts.
    """
    where = settings_from(LoaderPlacement, placement, overrides, "make_loader")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    set_epoch = getattr(dataset, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)
    if not isinstance(dataset, Sized):
        raise TypeError("make_loader needs a map-style dataset with __len__")
    n = len(dataset)
    sampler = EpochSampler(n, shuffle, seed, epoch, where.rank, where.world_size, start=skip_batches * batch)
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=where.workers,
        drop_last=drop_last,
        pin_memory=where.pin_memory,
        generator=torch.Generator().manual_seed(_mix(seed, epoch)),
        persistent_workers=False,
    )
