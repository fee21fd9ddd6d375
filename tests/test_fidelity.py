"""Scoring without labels: fidelity of a pruned model to the same model run dense, checked against per-image values
computed here by hand (numpy loops), its standard error against a plain leave-one-out loop, the dense outputs
computed once, and outputs that cannot be compared refused in one line. Tiny models at 64x64 / 128x128."""

from __future__ import annotations

import numpy as np
import pytest
import sparsesearch as ss
import torch
import torch.nn.functional as F
from sparsesearch.fidelity import FidelityEvaluator, dense_reference
from torch import nn

from .tiny_spaces import SAM, SWIN


def _images(n: int, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _run(model: nn.Module, config: ss.SparsityConfig, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
    model.eval().set_config(config)
    try:
        return model(x)
    finally:
        model.set_config(None)


def _loo_stderr(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Leave-one-out means by a plain loop, and the jackknife standard error from them."""
    n = len(values)
    loo = np.array([np.mean(np.delete(values, i)) for i in range(n)])
    return loo, float(np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))


def _image_miou(pred: np.ndarray, ref: np.ndarray) -> float:
    """mIoU (percent) of one predicted map against the reference map, over the classes present in either."""
    ious = []
    for c in np.union1d(np.unique(pred), np.unique(ref)):
        inter = np.sum((pred == c) & (ref == c))
        union = np.sum((pred == c) | (ref == c))
        ious.append(inter / union)
    return 100.0 * float(np.mean(ious))


def _cosine_percent(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over positions of cos(a[p], b[p]) x100; a, b: (positions, C)."""
    cos = [np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)) for u, v in zip(a, b)]
    return 100.0 * float(np.mean(cos))


def test_segmentation_fidelity_is_the_per_image_miou_against_the_dense_argmax():
    space = ss.SearchSpace(SWIN)
    model = space.create_model(seed=0, head="seg", num_classes=5)
    x = _images(6)
    ref_cfg, cfg = dense_reference(space), space.uniform(0.5)
    dense = _run(model, ref_cfg, x).argmax(1).numpy()
    pruned = _run(model, cfg, x).argmax(1).numpy()
    per_image = np.array([_image_miou(p, d) for p, d in zip(pruned, dense)])
    assert 0 < per_image.min() < 100  # a real disagreement to measure

    r = ss.fidelity(model, cfg, x, reference=ref_cfg, batch=4)
    loo, se = _loo_stderr(per_image)
    assert r.metric == "fidelity" and r.n == 6
    assert r.value == pytest.approx(per_image.mean(), abs=1e-9)
    assert np.allclose(r.left_out, loo, atol=1e-9) and r.stderr == pytest.approx(se, rel=1e-9)
    assert ss.fidelity(model, ref_cfg, x, reference=ref_cfg).value == pytest.approx(100.0)
    assert model.config is None  # restored

    # another input size: the pruned logits are resized to the dense map before the argmax
    small = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    logits = F.interpolate(_run(model, cfg, small), size=(64, 64), mode="bilinear", align_corners=False)
    by_hand = np.mean([_image_miou(p, d) for p, d in zip(logits.argmax(1).numpy(), dense)])
    assert ss.fidelity(model, cfg, x, reference=ref_cfg, resolution=(32, 32)).value == pytest.approx(by_hand)


def test_classification_fidelity_is_top1_agreement():
    space = ss.SearchSpace(SWIN)
    model = space.create_model(seed=0, head="cls", num_classes=7)
    with torch.no_grad():  # a head that separates the classes sharply: pruning changes some top-1s
        model.head.fc.weight.mul_(200.0)
        model.head.fc.bias.zero_()
    x = _images(12, seed=3)
    ref_cfg, cfg = dense_reference(space), space.uniform(0.75)
    agree = (_run(model, cfg, x).argmax(-1) == _run(model, ref_cfg, x).argmax(-1)).numpy() * 100.0
    assert 0 < agree.mean() < 100
    r = ss.fidelity(model, cfg, x, reference=ref_cfg, batch=5)
    loo, se = _loo_stderr(agree)
    assert r.value == pytest.approx(agree.mean()) and r.stderr == pytest.approx(se)
    assert np.allclose(r.left_out, loo)
    typed = ss.fidelity(model, cfg, x, settings=ss.FidelitySettings(reference=ref_cfg, batch=5))
    assert typed.value == r.value and typed.left_out == r.left_out


def test_backbone_fidelity_is_the_mean_cosine_of_feature_vectors():
    space = ss.SearchSpace(SWIN)
    x = _images(4, seed=5)
    ref_cfg, cfg = dense_reference(space), space.uniform(0.75)

    backbone = space.create_model(seed=0, head=None)  # NHWC (B, 2, 2, 128): channels last, found by their count
    dense, pruned = _run(backbone, ref_cfg, x).numpy(), _run(backbone, cfg, x).numpy()
    per_image = np.array([_cosine_percent(p.reshape(-1, 128), d.reshape(-1, 128)) for p, d in zip(pruned, dense)])
    r = ss.fidelity(backbone, cfg, x, reference=ref_cfg)
    assert r.value == pytest.approx(per_image.mean(), abs=1e-5) and r.value < 100.0
    assert r.stderr == pytest.approx(_loo_stderr(per_image)[1], rel=1e-4)

    features = ss.create_model("swin_nano", features_only=True, **space.model_args())  # four NCHW levels
    features.backbone.load_state_dict(backbone.state_dict(), strict=False)
    levels_d, levels_p = _run(features, ref_cfg, x), _run(features, cfg, x)

    def by_hand(i: int) -> float:
        per_level = [
            _cosine_percent(
                p[i].permute(1, 2, 0).reshape(-1, p.shape[1]).numpy(),
                d[i].permute(1, 2, 0).reshape(-1, d.shape[1]).numpy(),
            )
            for p, d in zip(levels_p, levels_d)
        ]
        return float(np.mean(per_level))

    expected = np.mean([by_hand(i) for i in range(4)])
    assert ss.fidelity(features, cfg, x, reference=ref_cfg).value == pytest.approx(expected, abs=1e-5)


def test_sam_encoder_fidelity_compares_the_neck_embedding():
    space = ss.SearchSpace(SAM)
    encoder = space.create_model(seed=0, head=None)
    x = _images(3, size=128, seed=7)
    ref_cfg, cfg = dense_reference(space), space.uniform(0.75)
    dense, pruned = _run(encoder, ref_cfg, x), _run(encoder, cfg, x)
    assert dense.shape == (3, 16, 8, 8)  # the neck: NCHW
    per_image = [
        _cosine_percent(p.permute(1, 2, 0).reshape(-1, 16).numpy(), d.permute(1, 2, 0).reshape(-1, 16).numpy())
        for p, d in zip(pruned, dense)
    ]
    r = ss.fidelity(encoder, cfg, x, reference=ref_cfg)
    assert r.value == pytest.approx(np.mean(per_image), abs=1e-5) and r.value < 100.0


def test_the_dense_model_runs_once_per_image_and_the_paired_noise_is_the_jackknife_of_differences():
    space = ss.SearchSpace(SWIN)
    model = space.create_model(seed=0, head="seg", num_classes=5)
    x = _images(5)
    seen: list[int] = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(int(args[0].shape[0])))
    settings = ss.FidelitySettings(reference=dense_reference(space))
    ev = FidelityEvaluator(model, torch.utils.data.TensorDataset(x, torch.zeros(5)), settings=settings)
    configs = [space.uniform(0.25), space.uniform(0.5), space.sparsest()]
    results = [ev(c) for c in configs + configs]  # the second round comes from the cache
    assert ev.reference_images == 5 and sum(seen) == 5 * (1 + len(configs))

    acc = ss.FidelityAccuracy(x, space, n=5, batch=2)
    a, b = space.uniform(0.25), space.sparsest()
    assert acc(model, a) == pytest.approx(results[0].value) and acc(model, b) == pytest.approx(results[2].value)
    dense = _run(model, dense_reference(space), x).argmax(1).numpy()
    va, vb = (np.array([_image_miou(p, d) for p, d in zip(_run(model, c, x).argmax(1).numpy(), dense)]) for c in (a, b))
    _, se = _loo_stderr(vb - va)
    assert acc.noise_between(model, a, b) == pytest.approx(se, rel=1e-6)


class _DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"masks": self.conv(x)}


def test_outputs_that_are_not_tensors_are_refused_in_one_line():
    with pytest.raises(ss.FidelityError, match="returned a dict") as err:
        ss.fidelity(_DictModel(), None, _images(2))
    assert len(str(err.value).splitlines()) == 1 and "tensor or a list of tensors" in str(err.value)
    with pytest.raises(ss.FidelityError, match="unknown fidelity kind"):
        ss.fidelity(_DictModel(), None, _images(2), task="boxes")
