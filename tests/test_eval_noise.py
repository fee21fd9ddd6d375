"""The evaluation's own noise: jackknife standard error of mIoU against a plain leave-one-out loop."""

from __future__ import annotations

import math

import torch
from sparsesearch.evaluate import miou_from_confusion, miou_stderr


def test_jackknife_stderr_matches_a_leave_one_out_loop():
    g = torch.Generator().manual_seed(0)
    per_item = torch.randint(0, 50, (9, 4, 4), generator=g)
    per_item[3, 2, :] = 0  # an image without class 2 in its labels
    per_item[:, 3, 3] = 0
    loo = []
    for i in range(9):
        rest = torch.cat([per_item[:i], per_item[i + 1 :]]).sum(0)
        loo.append(miou_from_confusion(rest)[0])
    mean = sum(loo) / 9
    expected = math.sqrt(8 / 9 * sum((v - mean) ** 2 for v in loo))
    assert math.isclose(miou_stderr(per_item), expected, rel_tol=1e-9)


def test_identical_images_have_no_noise_and_one_image_has_no_estimate():
    one = torch.randint(1, 9, (1, 3, 3))
    assert miou_stderr(one.repeat(5, 1, 1)) < 1e-9
    assert math.isnan(miou_stderr(one))
