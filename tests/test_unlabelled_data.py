"""A folder of images without labels: found by `build_dataset` (nested folders included), read deterministically,
and refused in one clear line where labels are needed (a labelled metric, label-trained adaptation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sparsesearch.adapt import AdaptOptions, adapt
from sparsesearch.data import UNLABELLED, ImageFolderUnlabelled, build_dataset
from sparsesearch.errors import DataError
from sparsesearch.evaluate import Evaluator
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def image_folder(root: Path, n: int = 5) -> Path:
    """n images: loose ones at the top, the rest in nested folders; a hidden folder and a text file beside them."""
    for i in range(n):
        sub = Path(*(["trip", "day2"] if i % 3 == 2 else ["trip"] if i % 3 == 1 else []))
        _write(root / sub / f"img{i}.{'png' if i % 2 else 'jpg'}", 40 + i, 30 + 2 * i, seed=i)
    _write(root / ".thumbs" / "x.png", 8, 8, seed=99)
    (root / "notes.txt").write_text("not an image")
    return root


def test_a_folder_of_images_is_a_set_without_labels(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "imgs")
    ds, task = build_dataset(str(root), "val", (32, 48))
    assert task == UNLABELLED and isinstance(ds, ImageFolderUnlabelled) and not ds.labelled
    assert len(ds) == 5 and all(".thumbs" not in str(p) for p in ds.samples)
    x, target = ds[3]
    assert x.shape == (3, 32, 48) and x.dtype == torch.float32 and target == -1
    assert torch.equal(ds[3][0], x)  # eval: a plain resize, the same every time

    train, _ = build_dataset(str(root), "train", (32, 48), seed=4)
    assert torch.equal(train[1][0], build_dataset(str(root), "train", (32, 48), seed=4)[0][1][0])
    train.set_epoch(1)
    assert not torch.equal(train[1][0], build_dataset(str(root), "train", (32, 48), seed=4)[0][1][0])

    only = tmp_path / "only"  # a lone images/ folder (no labels/) is images without labels, not one class
    _write(only / "images" / "a.png", 20, 20, seed=1)
    assert build_dataset(str(only), "val", 16)[1] == UNLABELLED


def test_a_labelled_metric_on_images_without_labels_is_one_clear_line(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "imgs")
    for task, need in (("seg", "images/ + labels/"), ("cls", "one sub-folder per class")):
        with pytest.raises(DataError, match="without labels") as err:
            build_dataset(str(root), "val", 16, task=task)
        msg = str(err.value)
        assert need in msg and "--accuracy fidelity" in msg and len(msg.splitlines()) == 1
    ds, _ = build_dataset(str(root), "val", 16)
    with pytest.raises(DataError, match="without labels") as err:
        Evaluator(nn.Conv2d(3, 2, 1), ds, 2, num_classes=2)
    assert "fidelity" in str(err.value)


def test_an_empty_folder_is_one_clear_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("?")
    with pytest.raises(DataError, match="holds no images") as err:
        build_dataset(str(empty), "val", 16)
    assert str(empty) in str(err.value) and len(str(err.value).splitlines()) == 1
    with pytest.raises(DataError, match="holds no images"):
        ImageFolderUnlabelled(empty, 16)


def test_adapting_on_labels_refuses_images_without_labels(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "imgs", n=8)
    opts = AdaptOptions(
        space=str(ROOT / "search_spaces" / "demo.yaml"), data=str(root), out=str(tmp_path / "run"), steps=1, batch=2
    )
    with pytest.raises(DataError, match="--teacher frozen") as err:
        adapt(opts, progress=False)
    assert "without labels" in str(err.value)
