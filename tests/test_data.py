"""Datasets: the synthetic sparse-scene generator, folder loaders, build_dataset and make_loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sparsesearch.data import (
    DEFAULT_SYNTHETIC_SIZE,
    ImageFolderClassification,
    LoaderPlacement,
    SceneSettings,
    SegmentationFolder,
    SegmentationLayout,
    SparseScenes,
    build_dataset,
    make_loader,
    parse_synthetic_spec,
)
from sparsesearch.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sparsesearch.errors import DataError, SparseSearchError

# ---------------------------------------------------------------------------------------------------------
# helpers


def _denorm(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) raw pixel array."""
    arr = image.numpy().transpose(1, 2, 0)
    return arr * np.asarray(std, dtype=np.float32) + np.asarray(mean, dtype=np.float32)


def _chroma(raw: np.ndarray) -> np.ndarray:
    return raw.max(axis=-1) - raw.min(axis=-1)


def _local_std(grey: np.ndarray, k: int = 5) -> np.ndarray:
    """Standard deviation over each k x k neighbourhood (valid part only): a texture response."""
    win = np.lib.stride_tricks.sliding_window_view(grey, (k, k))
    return win.std(axis=(-1, -2))


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels whose whole (2r+1)^2 neighbourhood is in ``mask`` (valid part, like _local_std with k=2r+1)."""
    win = np.lib.stride_tricks.sliding_window_view(mask, (2 * r + 1, 2 * r + 1))
    return np.asarray(win.all(axis=(-1, -2)))


class IndexDataset(torch.utils.data.Dataset[int]):
    """Item i is i: makes loader order visible."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _write_rgb(path: Path, w: int, h: int, seed: int = 0, colour: tuple[int, int, int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if colour is None:
        arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    else:
        arr = np.empty((h, w, 3), dtype=np.uint8)
        arr[:] = colour
    Image.fromarray(arr).save(path)


def _write_label(path: Path, arr: np.ndarray, mode: str = "L") -> None:
    """Save an integer array as a label PNG, grey (mode L) or palette (mode P, indices stored as given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(arr.astype(np.uint8))
    im = Image.frombytes(mode, (data.shape[1], data.shape[0]), data.tobytes())
    if mode == "P":
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


def _block_label(h: int, w: int, block: int, seed: int = 0, values: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """A label made of block x block squares of random values from ``values``."""
    grid = np.random.default_rng(seed).choice(values, size=(h // block, w // block))
    return np.kron(grid, np.ones((block, block), dtype=np.int64))


def _seg_folder(
    root: Path,
    n: int = 3,
    h: int = 32,
    w: int = 48,
    img_dir: str = "images",
    lab_dir: str = "labels",
    values: tuple[int, ...] = (0, 1, 2, 255),
) -> Path:
    for i in range(n):
        ext = ".jpg" if i % 2 else ".png"
        _write_rgb(root / img_dir / f"img{i}{ext}", w, h, seed=i)
        label = _block_label(h, w, 8, seed=i, values=values)
        _write_label(root / lab_dir / f"img{i}.png", label, "P" if i == 2 else "L")  # one palette label
    return root


def _cls_folder(root: Path, size: tuple[int, int] = (40, 30)) -> Path:
    _write_rgb(root / "dog" / "a.jpg", *size, seed=1)
    _write_rgb(root / "dog" / "b.png", *size, seed=2)
    _write_rgb(root / "cat" / "c.jpeg", *size, seed=3)
    _write_rgb(root / "cat" / "sub" / "d.bmp", *size, seed=4)
    _write_rgb(root / "cat" / "e.WEBP", *size, seed=5)
    (root / "cat" / "notes.txt").write_text("not an image")
    _write_rgb(root / ".cache" / "x.png", *size, seed=6)  # hidden: not a class
    return root


# ---------------------------------------------------------------------------------------------------------
# synthetic sparse scenes


def test_synthetic_items_are_deterministic() -> None:
    a = SparseScenes(8, 64, seed=3)
    b = SparseScenes(8, 64, seed=3)
    for i in range(8):
        xa, ya = a[i]
        xb, yb = b[i]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0], a[1][0])
    assert not torch.equal(a[0][0], SparseScenes(8, 64, seed=4)[0][0])
    assert not torch.equal(a[0][0], SparseScenes(8, 64, seed=3, split="val")[0][0])
    assert torch.equal(a[-1][0], a[7][0])
    with pytest.raises(IndexError):
        a[8]


def test_synthetic_item_independent_of_order_and_workers() -> None:
    ds = SparseScenes(12, 48, seed=1, hflip=True)
    alone = SparseScenes(12, 48, seed=1, hflip=True)[5]
    iterated = [ds[i] for i in range(len(ds))][5]
    assert torch.equal(alone[0], iterated[0]) and torch.equal(alone[1], iterated[1])
    # shuffled loaders with 0 and 2 workers give the same batches
    serial = [(x.clone(), y.clone()) for x, y in make_loader(ds, 4, shuffle=True, seed=7, epoch=2)]
    parallel = list(make_loader(ds, 4, shuffle=True, seed=7, workers=2, epoch=2))
    assert len(serial) == len(parallel) == 3
    for (xs, ys), (xp, yp) in zip(serial, parallel):
        assert torch.equal(xs, xp) and torch.equal(ys, yp)


def test_synthetic_shapes_dtypes_and_values() -> None:
    ds = SparseScenes(4, (40, 72), num_classes=6, seed=0)
    assert ds.num_classes == 6 and len(ds.class_names) == 6 and ds.ignore_index == 255 and ds.task == "seg"
    for i in range(4):
        x, y = ds[i]
        assert x.shape == (3, 40, 72) and x.dtype == torch.float32
        assert y.shape == (40, 72) and y.dtype == torch.int64
        assert int(y.min()) >= 0 and int(y.max()) < 6
        raw, mask = ds.generate(i)
        assert raw.shape == (40, 72, 3) and raw.dtype == np.float32 and 0 <= raw.min() and raw.max() <= 1
        assert np.array_equal(mask, y.numpy())


def test_synthetic_mask_is_exactly_the_coloured_pixels() -> None:
    # without noise the canvas is a smooth near-grey plane and every object pixel is saturated colour,
    # so "mask > 0" must coincide pixel for pixel with "chroma above the canvas's"
    ds = SparseScenes(12, 64, num_classes=5, noise=0.0, seed=2)
    for i in range(len(ds)):
        raw, mask = ds.generate(i)
        assert np.array_equal(_chroma(raw) > 0.06, mask > 0), f"item {i}"
    # the same holds for flipped train items, through the normalisation
    flipped = SparseScenes(12, 64, num_classes=5, noise=0.0, seed=2, hflip=True)
    n_flipped = 0
    for i in range(len(ds)):
        x, y = flipped[i]
        raw = _denorm(x, flipped.mean, flipped.std)
        assert np.array_equal(_chroma(raw) > 0.06, y.numpy() > 0)
        n_flipped += not torch.equal(y, torch.from_numpy(ds.generate(i)[1]))
    assert 0 < n_flipped < len(ds)


def test_synthetic_objects_are_textured_and_classes_distinct() -> None:
    k = 4
    ds = SparseScenes(24, 96, num_classes=k, seed=0)
    fg_resp, bg_resp = [], []
    colours: dict[int, list[np.ndarray]] = {c: [] for c in range(1, k)}
    for i in range(len(ds)):
        raw, mask = ds.generate(i)
        resp = _local_std(raw.mean(axis=-1), 5)
        fg_in = _erode(mask > 0, 2)
        bg_in = _erode(mask == 0, 2)
        fg_resp.append(resp[fg_in])
        bg_resp.append(resp[bg_in])
        for c in range(1, k):
            if (mask == c).any():
                colours[c].append(raw[mask == c].mean(axis=0))
    fg, bg = np.concatenate(fg_resp), np.concatenate(bg_resp)
    # objects carry stripe texture, the canvas only pixel noise
    assert fg.mean() > 3 * bg.mean()
    assert np.median(fg) > np.percentile(bg, 99)
    # every class appears, and the classes have clearly different colour statistics
    assert all(len(v) > 0 for v in colours.values())
    means = {c: np.mean(v, axis=0) for c, v in colours.items()}
    for a in range(1, k):
        for b in range(a + 1, k):
            assert np.abs(means[a] - means[b]).max() > 0.15, (a, b, means[a], means[b])
        # and each class's colour is consistent across images
        assert np.std(colours[a], axis=0).max() < 0.06


def test_synthetic_scenes_are_sparse() -> None:
    ds = SparseScenes(32, 256, seed=5)
    fractions, empty = [], []
    for i in range(len(ds)):
        _, mask = ds.generate(i)
        fractions.append((mask > 0).mean())
        windows = (mask > 0).reshape(8, 32, 8, 32).any(axis=(1, 3))
        empty.append(1.0 - windows.mean())
    f = np.array(fractions)
    assert f.min() >= 0.03 and f.max() <= 0.25
    assert 0.05 <= f.mean() <= 0.20
    assert min(empty) >= 0.4 and np.mean(empty) > 0.55


def test_synthetic_coverage_makes_dense_scenes() -> None:
    sparse = SparseScenes(16, 128, seed=3)
    dense = SparseScenes(16, 128, seed=3, objects=(4, 10), coverage=(0.3, 0.5))

    def stats(ds: SparseScenes) -> tuple[float, float]:
        fg = np.stack([ds.generate(i)[1] > 0 for i in range(len(ds))])
        windows = fg.reshape(len(ds), 4, 32, 4, 32).any(axis=(2, 4))
        return float(fg.mean()), float(windows.mean())

    (cov_s, occ_s), (cov_d, occ_d) = stats(sparse), stats(dense)
    assert 0.05 <= cov_s <= 0.2 and 0.25 <= cov_d <= 0.5
    assert occ_s < 0.6 and occ_d > 0.8  # dense scenes: most 32x32 windows hold part of an object
    # the default coverage draws exactly what the sparse set drew before the option existed
    assert np.array_equal(sparse.generate(5)[1], SparseScenes(16, 128, seed=3, coverage=(0.06, 0.16)).generate(5)[1])
    with pytest.raises(ValueError, match="coverage"):
        SparseScenes(4, coverage=(0.5, 0.2))
    # the options as a settings object draw the same scenes; a name that is no option is refused
    typed = SparseScenes(16, 128, seed=3, settings=SceneSettings(objects=(4, 10), coverage=(0.3, 0.5)))
    assert np.array_equal(typed.generate(5)[1], dense.generate(5)[1])
    with pytest.raises(SparseSearchError, match="unknown setting"):
        SparseScenes(4, object=(1, 2))


def test_synthetic_normalisation_and_epoch_flips() -> None:
    ds = SparseScenes(16, 128, seed=0, hflip=True)
    x = torch.stack([ds[i][0] for i in range(16)])
    m, s = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    assert (m.abs() < 0.2).all() and ((s > 0.7) & (s < 1.4)).all()
    before = [ds[i][1] for i in range(16)]
    ds.set_epoch(1)
    after = [ds[i][1] for i in range(16)]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    ds.set_epoch(0)
    assert all(torch.equal(a, ds[i][1]) for i, a in enumerate(before))


def test_synthetic_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        SparseScenes(4, split="bogus")
    with pytest.raises(ValueError, match="num_classes"):
        SparseScenes(4, num_classes=1)
    with pytest.raises(ValueError, match="size"):
        SparseScenes(4, size=8)


# ---------------------------------------------------------------------------------------------------------
# classification folders


def test_classification_folder_reads_imagenet_layout(tmp_path: Path) -> None:
    root = _cls_folder(tmp_path / "cls")
    ds = ImageFolderClassification(root, 24, train=False)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2 and ds.task == "cls"
    assert len(ds) == 5 and ds.targets == [0, 0, 0, 1, 1]
    for i in range(len(ds)):
        x, t = ds[i]
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and isinstance(t, int)
    assert torch.equal(ds[0][0], ds[0][0])  # eval is deterministic
    train = ImageFolderClassification(root, (16, 20), train=True, seed=1)
    x0, _ = train[0]
    assert x0.shape == (3, 16, 20)
    assert torch.equal(x0, ImageFolderClassification(root, (16, 20), train=True, seed=1)[0][0])
    train.set_epoch(1)
    assert any(not torch.equal(ImageFolderClassification(root, (16, 20), seed=1)[i][0], train[i][0]) for i in range(5))


def test_classification_eval_is_a_centre_crop(tmp_path: Path) -> None:
    # a 300x100 image: red | green | blue thirds; the eval crop (resize short side to 18, crop 16x16)
    # covers only the middle of the green third
    arr = np.zeros((100, 300, 3), dtype=np.uint8)
    arr[:, :100, 0] = 255
    arr[:, 100:200, 1] = 255
    arr[:, 200:, 2] = 255
    (tmp_path / "c" / "only").mkdir(parents=True)
    Image.fromarray(arr).save(tmp_path / "c" / "only" / "x.png")
    x, t = ImageFolderClassification(tmp_path / "c", 16, train=False)[0]
    raw = _denorm(x, IMAGENET_MEAN, IMAGENET_STD)[:, 1:-1]
    assert t == 0
    assert np.allclose(raw, [0.0, 1.0, 0.0], atol=0.02)


# ---------------------------------------------------------------------------------------------------------
# segmentation folders


def test_segmentation_folder_eval_keeps_label_values(tmp_path: Path) -> None:
    root = _seg_folder(tmp_path / "seg")
    ds = SegmentationFolder(root, (16, 24), train=False)
    assert len(ds) == 3 and ds.task == "seg" and ds.ignore_index == 255
    assert ds.num_classes == 3  # inferred: max non-ignore value + 1; 255 not counted
    for i in range(3):
        x, y = ds[i]
        assert x.shape == (3, 16, 24) and x.dtype == torch.float32
        assert y.shape == (16, 24) and y.dtype == torch.int64
        # halving 8x8 blocks with nearest neighbour gives exactly the 4x4 blocks: no value is blended
        expected = _block_label(16, 24, 4, seed=i, values=(0, 1, 2, 255))
        assert np.array_equal(y.numpy(), expected), i
    # palette (mode P) labels give their indices, not colours
    assert set(ds[2][1].unique().tolist()) <= {0, 1, 2, 255}
    # at a non-integer ratio, on a per-pixel random label, the result is Pillow's nearest-neighbour resize
    # (odd source sizes: no target pixel centre falls exactly on a source pixel border, so no ties)
    fine = tmp_path / "fine"
    _write_rgb(fine / "images" / "a.png", 49, 33)
    _write_label(fine / "labels" / "a.png", _block_label(33, 49, 1, seed=9, values=(0, 1, 2, 3, 255)))
    stored = Image.open(fine / "labels" / "a.png")
    expected = np.asarray(stored.resize((30, 20), Image.Resampling.NEAREST))
    assert np.array_equal(SegmentationFolder(fine, (20, 30), train=False)[0][1].numpy(), expected)


def test_segmentation_folder_train_pads_with_ignore(tmp_path: Path) -> None:
    root = _seg_folder(tmp_path / "seg", values=(0, 1, 2))
    ds = SegmentationFolder(root, 32, train=True, scale=(0.5, 0.5), seed=3)
    for i in range(3):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and y.shape == (32, 32) and y.dtype == torch.int64
        pad = y == 255
        # the 16x16 resized image sits somewhere in the 32x32 crop; the rest is padding
        assert int(pad.sum()) == 32 * 32 - 16 * 16
        assert (x[:, pad] == 0).all()
        assert set(y[~pad].unique().tolist()) <= {0, 1, 2}
    x1, y1 = SegmentationFolder(root, 32, train=True, scale=(0.5, 0.5), seed=3)[1]
    assert torch.equal(x1, ds[1][0]) and torch.equal(y1, ds[1][1])
    big = SegmentationFolder(root, 24, train=True, scale=(1.5, 2.0))
    x, y = big[0]
    assert x.shape == (3, 24, 24) and not (y == 255).any()


def test_segmentation_folder_layouts(tmp_path: Path) -> None:
    mm = _seg_folder(tmp_path / "mm", img_dir="img_dir", lab_dir="ann_dir")
    assert len(SegmentationFolder(mm, 16, train=False)) == 3
    city = tmp_path / "city"
    _write_rgb(city / "images" / "aachen" / "a_000_leftImg8bit.png", 32, 16)
    _write_label(city / "labels" / "aachen" / "a_000_gtFine_labelTrainIds.png", _block_label(16, 32, 8))
    ds = SegmentationFolder(city, 16, train=False, image_suffix="_leftImg8bit", label_suffix="_gtFine_labelTrainIds")
    assert len(ds) == 1 and ds[0][1].shape == (16, 16)
    (city / "classes.txt").write_text("road\ncar\nperson\nsky\n")
    layout = SegmentationLayout(image_suffix="_leftImg8bit", label_suffix="_gtFine_labelTrainIds")
    named = SegmentationFolder(city, 16, train=False, layout=layout)
    assert named.num_classes == 4 and named.class_names == ["road", "car", "person", "sky"]


def test_segmentation_custom_ignore_index(tmp_path: Path) -> None:
    root = _seg_folder(tmp_path / "seg", values=(0, 1, 7))
    ds = SegmentationFolder(root, (32, 48), train=False, ignore_index=7)
    assert ds.num_classes == 2
    assert set(ds[0][1].unique().tolist()) <= {0, 1, 7}


# ---------------------------------------------------------------------------------------------------------
# errors: each names the offending path


def test_error_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for make in (
        lambda: ImageFolderClassification(missing, 16),
        lambda: SegmentationFolder(missing, 16),
        lambda: build_dataset(str(missing), "train", 16),
    ):
        with pytest.raises(DataError, match="does not exist") as err:
            make()
        assert str(missing) in str(err.value)


def test_error_empty_and_classless_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class sub-folders") as err:
        ImageFolderClassification(empty, 16)
    assert str(empty) in str(err.value)
    (tmp_path / "flat").mkdir()
    _write_rgb(tmp_path / "flat" / "a.png", 8, 8)
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolderClassification(tmp_path / "flat", 16)
    (tmp_path / "noimg" / "cat").mkdir(parents=True)
    (tmp_path / "noimg" / "cat" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images") as err:
        ImageFolderClassification(tmp_path / "noimg", 16)
    assert str(tmp_path / "noimg") in str(err.value)
    root = _cls_folder(tmp_path / "cls")
    (root / "zebra").mkdir()
    with pytest.raises(DataError, match="has no images") as err:
        ImageFolderClassification(root, 16)
    assert str(root / "zebra") in str(err.value)
    seg = tmp_path / "seg"
    (seg / "images").mkdir(parents=True)
    (seg / "labels").mkdir()
    with pytest.raises(DataError, match="no images") as err:
        SegmentationFolder(seg, 16)
    assert str(seg / "images") in str(err.value)
    with pytest.raises(DataError, match="no image and label folders"):
        SegmentationFolder(tmp_path / "flat", 16)


def test_error_image_without_label(tmp_path: Path) -> None:
    root = _seg_folder(tmp_path / "seg")
    _write_rgb(root / "images" / "orphan.jpg", 16, 16)
    with pytest.raises(DataError, match="has no label") as err:
        SegmentationFolder(root, 16)
    assert str(root / "images" / "orphan.jpg") in str(err.value)
    assert str(root / "labels" / "orphan.png") in str(err.value)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_error_corrupt_image(tmp_path: Path, kind: str) -> None:
    root = _cls_folder(tmp_path / "cls")
    bad = root / "cat" / "c.jpeg"
    data = bad.read_bytes()
    bad.write_bytes(b"this is not an image" if kind == "garbage" else data[: len(data) // 2])
    ds = ImageFolderClassification(root, 16, train=False)
    index = [p for p, _ in ds.samples].index(bad)
    with pytest.raises(DataError, match="cannot read image") as err:
        ds[index]
    assert str(bad) in str(err.value)
    seg = _seg_folder(tmp_path / "seg")
    (seg / "labels" / "img1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="cannot read label") as err:
        SegmentationFolder(seg, 16, train=False, num_classes=3)[1]
    assert str(seg / "labels" / "img1.png") in str(err.value)


def test_error_label_values_and_modes(tmp_path: Path) -> None:
    root = _seg_folder(tmp_path / "seg", values=(0, 1, 2))
    ds = SegmentationFolder(root, 16, train=False, num_classes=2)
    with pytest.raises(DataError, match="num_classes") as err:
        ds[0]
    assert str(root / "labels" / "img0.png") in str(err.value)
    assert SegmentationFolder(root, 16, train=False, num_classes=3)[0][1].max() <= 2
    Image.new("RGB", (48, 32), (1, 2, 3)).save(root / "labels" / "img1.png")
    with pytest.raises(DataError, match="colour image") as err:
        SegmentationFolder(root, 16, train=False, num_classes=3)[1]
    assert str(root / "labels" / "img1.png") in str(err.value)
    _write_label(root / "labels" / "img2.png", np.zeros((10, 10)))
    with pytest.raises(DataError, match="same size") as err:
        SegmentationFolder(root, 16, train=False, num_classes=3)[2]
    assert str(root / "labels" / "img2.png") in str(err.value)


# ---------------------------------------------------------------------------------------------------------
# build_dataset and make_loader


def test_build_dataset_synthetic() -> None:
    train, task = build_dataset("synthetic:40", "train", 32)
    val, _ = build_dataset("synthetic:40", "val", 32)
    assert task == "seg" and isinstance(train, SparseScenes) and len(train) == 40 and train.hflip
    assert isinstance(val, SparseScenes) and len(val) == 16 and not val.hflip and val.split == "val"
    big_val, _ = build_dataset("synthetic:400", "val", 32, num_classes=6)
    assert len(big_val) == 100 and big_val.num_classes == 6
    default, _ = build_dataset("synthetic", "train", 32)
    assert len(default) > 0
    for bad in ("synthetic:0", "synthetic:abc"):
        with pytest.raises(DataError, match="synthetic:N"):
            build_dataset(bad, "train", 32)
    with pytest.raises(DataError, match="segmentation"):
        build_dataset("synthetic", "train", 32, task="cls")


def test_synthetic_spec_options() -> None:
    assert parse_synthetic_spec("synthetic") == (DEFAULT_SYNTHETIC_SIZE, {})
    assert parse_synthetic_spec("synthetic:12") == (12, {})
    n, kw = parse_synthetic_spec("synthetic:64:objects=4-10,coverage=0.3-0.5,noise=0.02")
    assert n == 64 and kw == {"objects": (4, 10), "coverage": (0.3, 0.5), "noise": 0.02}
    assert parse_synthetic_spec("synthetic::objects=3")[1] == {"objects": (3, 3)}
    ds, _ = build_dataset("synthetic:64:objects=4-10,coverage=0.3-0.5", "val", 32)
    assert isinstance(ds, SparseScenes) and len(ds) == 16
    assert ds.objects == (4, 10) and ds.coverage == (0.3, 0.5)
    bad = {
        "synthetic:8:colour=red": "unknown option 'colour'",
        "synthetic:8:objects": "not key=value",
        "synthetic:8:objects=a-b": "objects wants MIN-MAX",
        "synthetic:8:noise=loud": "noise wants a number",
        "synthetic:8:coverage=0.6-0.2": "coverage must be",
        "synthetic:8:objects=2:3": "synthetic:N",
    }
    for spec, message in bad.items():
        with pytest.raises(DataError, match=message):
            build_dataset(spec, "train", 32)


def test_build_dataset_detects_folder_layouts(tmp_path: Path) -> None:
    seg = _seg_folder(tmp_path / "seg")
    ds, task = build_dataset(str(seg), "train", 16)
    assert task == "seg" and isinstance(ds, SegmentationFolder) and ds.train
    ds, task = build_dataset(str(seg), "val", 16)
    # no split folders: the same images, with the eval transform
    assert task == "seg" and isinstance(ds, SegmentationFolder) and not ds.train

    cls = _cls_folder(tmp_path / "cls")
    ds, task = build_dataset(str(cls), "val", 16)
    assert task == "cls" and isinstance(ds, ImageFolderClassification) and not ds.train

    split = tmp_path / "split"
    _cls_folder(split / "train")
    _write_rgb(split / "val" / "cat" / "v.png", 20, 20)
    _write_rgb(split / "val" / "dog" / "w.png", 20, 20)
    tr, task = build_dataset(str(split), "train", 16)
    va, _ = build_dataset(str(split), "val", 16)
    assert task == "cls" and len(tr) == 5 and len(va) == 2
    with pytest.raises(DataError, match="no test") as err:
        build_dataset(str(split), "test", 16)
    assert str(split) in str(err.value)

    ade = tmp_path / "ade"
    _seg_folder(ade, n=2, lab_dir="annotations")
    for sub in ("training", "validation"):
        (ade / "images" / sub).mkdir()
        (ade / "annotations" / sub).mkdir()
    for p in sorted((ade / "images").glob("*.*")):
        p.rename(ade / "images" / "training" / p.name)
    for p in sorted((ade / "annotations").glob("*.png")):
        p.rename(ade / "annotations" / "training" / p.name)
    _write_rgb(ade / "images" / "validation" / "v.jpg", 48, 32)
    _write_label(ade / "annotations" / "validation" / "v.png", _block_label(32, 48, 8))
    tr, task = build_dataset(str(ade), "train", 16)
    va, _ = build_dataset(str(ade), "val", 16, num_classes=3)
    assert task == "seg" and len(tr) == 2 and len(va) == 1 and va.num_classes == 3

    with pytest.raises(DataError, match="classification"):
        build_dataset(str(cls), "train", 16, task="seg")
    with pytest.raises(DataError, match="num_classes"):
        build_dataset(str(cls), "train", 16, num_classes=5)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "readme.txt").write_text("?")
    with pytest.raises(DataError, match="cannot tell the layout") as err:
        build_dataset(str(odd), "train", 16)
    assert str(odd) in str(err.value)


def test_make_loader_is_seeded_and_resumable() -> None:
    def order(epoch: int = 0, seed: int = 1, skip_batches: int = 0, rank: int = 0, world_size: int = 1) -> list[int]:
        loader = make_loader(
            IndexDataset(10), 3, True, seed, epoch=epoch, skip_batches=skip_batches, rank=rank, world_size=world_size
        )
        return [int(i) for b in loader for i in b]

    assert order() == order() and sorted(order()) == list(range(10))
    assert order(epoch=1) != order(epoch=0)
    assert order(seed=2) != order(seed=1)
    assert order(epoch=3, skip_batches=2) == order(epoch=3)[6:]
    ranks = [order(rank=r, world_size=3) for r in range(3)]
    assert all(len(r) == 4 for r in ranks) and set(sum(ranks, [])) == set(range(10))
    unshuffled = [int(i) for b in make_loader(IndexDataset(10), 4, shuffle=False, drop_last=True) for i in b]
    assert unshuffled == list(range(8))
    placed = make_loader(IndexDataset(10), 3, True, 1, epoch=3, placement=LoaderPlacement(rank=1, world_size=3))
    assert [int(i) for b in placed for i in b] == order(epoch=3, rank=1, world_size=3)
    ds_flip = SparseScenes(10, 16, seed=0, hflip=True)
    make_loader(ds_flip, 2, shuffle=False, epoch=5)
    assert ds_flip.epoch == 5
