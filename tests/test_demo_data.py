"""The demo's data: dense synthetic scenes from its default spec, deterministic, with the coverage it asks for."""

from __future__ import annotations

import numpy as np
from sparsesearch.data import build_dataset
from sparsesearch.data.build import parse_synthetic_spec
from sparsesearch.pipeline import DemoOptions


def test_demo_spec_is_dense_scenes() -> None:
    n, kw = parse_synthetic_spec(DemoOptions().data)
    assert n >= 256 and kw["objects"][0] >= 6 and kw["coverage"][0] >= 0.4


def test_demo_data_is_deterministic_and_order_free() -> None:
    spec = DemoOptions().data
    a, _ = build_dataset(spec, "train", 96)
    b, _ = build_dataset(spec, "train", 96)
    later = [b[i] for i in (5, 2)]  # another instance, another order
    for (xa, ya), (xb, yb) in zip([a[5], a[2]], later):
        assert np.array_equal(xa.numpy(), xb.numpy()) and np.array_equal(ya.numpy(), yb.numpy())
    test, _ = build_dataset(spec, "test", 96)  # the held-out split draws other scenes
    assert not np.array_equal(test[2][1].numpy(), a[2][1].numpy())


def test_demo_scenes_cover_what_the_spec_asks() -> None:
    """The drawn objects cover at most the spec's upper bound (objects that would overlap are redrawn, the last
    try painting over earlier ones, so a scene can cover less than drawn) and most windows hold foreground."""
    spec = DemoOptions().data
    _, kw = parse_synthetic_spec(spec)
    lo, hi = kw["coverage"]
    ds, _ = build_dataset(spec, "val", 256)
    fg = np.stack([ds.generate(i)[1] > 0 for i in range(16)])
    share = fg.mean(axis=(1, 2))
    assert share.max() <= hi + 0.01  # an object's area is rounded to pixels
    assert share.min() >= 0.5 * lo and share.mean() >= 0.75 * lo
    windows = fg.reshape(16, 8, 32, 8, 32).any(axis=(2, 4))  # the demo model's stage-1 windows at 256x256
    assert windows.mean() > 0.6
