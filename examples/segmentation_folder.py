"""Bring your own segmentation data: build a small ADE20K/Cityscapes-style folder, then adapt and evaluate on it.

    .venv/bin/python examples/segmentation_folder.py [--root runs/seg_folder_example]

The folder layout sparsesearch reads (label PNGs hold class indices, 255 = ignore):

    ROOT/train/images/0000.jpg   ROOT/train/labels/0000.png
    ROOT/val/images/0000.jpg     ROOT/val/labels/0000.png

Here it is filled from the synthetic generator, so the example runs anywhere; point --data at your own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sparsesearch.cli import main as cli
from sparsesearch.data import SparseScenes


def build_folder(root: Path, n_train: int = 48, n_val: int = 12, size: int = 128) -> None:
    """Write JPEG images and PNG label maps (one pixel in 200 marked 255 = ignore, as real data has)."""
    for split, n in (("train", n_train), ("val", n_val)):
        scenes = SparseScenes(n, size=size, split=split, seed=1)
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(n):
            image, mask = scenes.generate(i)
            label = mask.astype(np.uint8)
            label[rng.random(label.shape) < 0.005] = 255
            Image.fromarray((np.asarray(image) * 255).astype(np.uint8)).save(
                root / split / "images" / f"{i:04d}.jpg", quality=95
            )
            Image.fromarray(label).save(root / split / "labels" / f"{i:04d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="runs/seg_folder_example")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    root = Path(args.root)
    data = root / "data"
    if not (data / "val" / "labels").is_dir():
        build_folder(data)
    rc = cli(
        [
            "adapt",
            "--space",
            "search_spaces/demo.yaml",
            "--data",
            str(data),
            "--image-size",
            "128",
            "--steps",
            str(args.steps),
            "--batch",
            "8",
            "--sampler",
            "sandwich",
            "--val-samples",
            "12",
            "--out",
            str(root / "adapt"),
            "--overwrite",
        ]
    )
    if rc == 0:
        rc = cli(
            [
                "eval",
                "--supernet",
                str(root / "adapt" / "supernet.pt"),
                "--config",
                "dense",
                "--config",
                "uniform:0.5",
                "--per-class",
            ]
        )
    raise SystemExit(rc)


if __name__ == "__main__":
    main()
