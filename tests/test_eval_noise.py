"""The evaluation's own noise: jackknife standard error of mIoU against a plain leave-one-out loop."""

from __future__ import annotations

import math

import pytest
import torch
from sparsesearch.evaluate import EvalResult, Evaluator, miou_from_confusion, miou_stderr, paired_stderr
from torch import nn


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


def _loo_miou(per_item: torch.Tensor) -> list[float]:
    n = per_item.shape[0]
    return [miou_from_confusion(torch.cat([per_item[:i], per_item[i + 1 :]]).sum(0))[0] for i in range(n)]


def test_paired_stderr_is_the_jackknife_of_the_difference():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 50, (7, 3, 3), generator=g)
    b = a.clone()
    b[:, 0, 1] += torch.randint(0, 20, (7,), generator=g)  # b errs more than a, by a different amount per image
    la, lb = _loo_miou(a), _loo_miou(b)
    diff = [y - x for x, y in zip(la, lb)]
    mean = sum(diff) / 7
    expected = math.sqrt(6 / 7 * sum((d - mean) ** 2 for d in diff))
    ra = EvalResult("mIoU", miou_from_confusion(a.sum(0))[0], 7, stderr=miou_stderr(a), left_out=tuple(la))
    rb = EvalResult("mIoU", miou_from_confusion(b.sum(0))[0], 7, stderr=miou_stderr(b), left_out=tuple(lb))
    assert math.isclose(paired_stderr(ra, rb), expected, rel_tol=1e-9)
    assert paired_stderr(ra, ra) == 0.0
    assert paired_stderr(ra, rb) < min(ra.stderr, rb.stderr)  # the same images: their noise cancels
    with pytest.raises(ValueError, match="leave-one-out"):
        paired_stderr(ra, EvalResult("mIoU", 1.0, 7))
    with pytest.raises(ValueError, match="same items"):
        paired_stderr(ra, EvalResult("mIoU", 1.0, 6, left_out=tuple(lb[:6])))


class _Pixels(nn.Module):
    """Segmentation logits from a fixed random 1x1 convolution: (B, 3, H, W) -> (B, 3, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Items(torch.utils.data.Dataset):
    task = "seg"

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(2)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = torch.randint(0, 3, (n, 8, 8), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def test_evaluator_keeps_the_leave_one_out_values_of_its_figure():
    r = Evaluator(_Pixels(), _Items(6), batch=4, num_classes=3)(None)
    assert len(r.left_out) == 6 and math.isclose(r.stderr, miou_stderr_from(r.left_out), rel_tol=1e-12)
    model = _Pixels()
    cms = []
    with torch.no_grad():
        pred = model(_Items(6).x).argmax(1)
    for p, t in zip(pred, _Items(6).y):
        cms.append(torch.bincount((t * 3 + p).reshape(-1), minlength=9).reshape(3, 3))
    assert r.left_out == pytest.approx(_loo_miou(torch.stack(cms)), rel=1e-12)


def miou_stderr_from(left_out: tuple[float, ...]) -> float:
    n = len(left_out)
    mean = sum(left_out) / n
    return math.sqrt((n - 1) / n * sum((v - mean) ** 2 for v in left_out))


def test_top1_leave_one_out_values_give_the_binomial_stderr():
    class _Cls(torch.utils.data.Dataset):
        task = "cls"

        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.tensor([float(i % 3 == 0), 0.5]), 0  # items 0, 3, 6, 9 predicted class 0 (right)

    r = Evaluator(nn.Identity(), _Cls(), batch=4, num_classes=2)(None)
    assert r.value == pytest.approx(40.0) and len(r.left_out) == 10
    assert miou_stderr_from(r.left_out) == pytest.approx(r.stderr, rel=1e-12)
    assert r.left_out[0] == pytest.approx(300 / 9) and r.left_out[1] == pytest.approx(400 / 9)
