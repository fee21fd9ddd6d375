"""Datasets: the synthetic sparse-scene set, image-folder classification, segmentation folders.

Items are ``(image, target)``: image a normalised float32 tensor (3, H, W); target an int64 mask (H, W)
for segmentation (``ignore_index`` 255 marks unlabelled pixels), an int class index for classification, or -1
for a folder of images without labels.
:func:`build_dataset` turns a spec ("synthetic", "synthetic:N[:OPTIONS]" or a directory) into a dataset and its task;
:func:`make_loader` gives deterministic, resumable per-epoch loaders.
"""

from __future__ import annotations

from sparsesearch.data.build import (
    DEFAULT_SYNTHETIC_SIZE,
    SPLIT_ALIASES,
    UNLABELLED,
    AnyDataset,
    EpochSampler,
    LoaderPlacement,
    build_dataset,
    make_loader,
    parse_synthetic_spec,
)
from sparsesearch.data.folders import (
    ImageFolderClassification,
    ImageFolderUnlabelled,
    SegmentationFolder,
    SegmentationLayout,
)
from sparsesearch.data.synthetic import SceneSettings, SparseScenes
from sparsesearch.data.transforms import IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "parse_synthetic_spec",
    "SparseScenes",
    "SceneSettings",
    "ImageFolderClassification",
    "SegmentationFolder",
    "SegmentationLayout",
    "ImageFolderUnlabelled",
    "UNLABELLED",
    "build_dataset",
    "make_loader",
    "EpochSampler",
    "LoaderPlacement",
    "AnyDataset",
    "DEFAULT_SYNTHETIC_SIZE",
    "SPLIT_ALIASES",
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
