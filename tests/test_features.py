"""timm-style feature extraction: `create_model(name, features_only=True, out_indices=...)` for every registered
model that provides `feature_info` and `forward_stages`."""

from __future__ import annotations

import pytest
import sparsesearch as ss
import torch
import torch.nn.functional as F
from sparsesearch.models import FeatureListNet, supports_features
from torch import nn


def _side(info) -> int:
    return 2 * max(d["reduction"] for d in info)


@pytest.mark.parametrize("name", ss.list_models())
def test_features_only_shapes_info_equality_and_no_unused_parameters(name):
    """For each registered model that provides feature_info / forward_stages. Members over 150M parameters are
    checked for structure on the meta device (their random init alone costs seconds); their forward is the code of
    the smaller members of the same family, which are run."""
    torch.manual_seed(0)
    with torch.device("meta"):
        size = sum(p.numel() for p in ss.create_model(name).parameters())
    if size > 150e6:
        with torch.device("meta"):
            model = ss.create_model(name).eval()
    else:
        model = ss.create_model(name).eval()
    if not supports_features(model):
        pytest.skip(f"{name} provides no feature_info / forward_stages")
    info = [dict(d) for d in model.feature_info]
    assert all({"num_chs", "reduction", "module"} <= set(d) for d in info)
    assert [d["reduction"] for d in info] == sorted(d["reduction"] for d in info)  # finest first
    for d in info:  # the named module exists
        model.get_submodule(d["module"])
    if size > 150e6:
        feats = FeatureListNet(model, out_indices=tuple(range(len(info))))
        assert feats.feature_info.channels() == [d["num_chs"] for d in info]
        assert feats.feature_info.reduction() == [d["reduction"] for d in info]
        return
    side = _side(info)
    x = torch.randn(2, 3, side, side + side // 2)
    with torch.no_grad():
        ref = [r.clone() for r in model.forward_stages(x)]  # the reference, before wrapping
    big = sum(p.numel() for p in model.parameters()) > 40e6
    n = len(info)
    feats = FeatureListNet(model, out_indices=tuple(range(n))).eval()
    assert feats.feature_info.channels() == [d["num_chs"] for d in info]
    assert feats.feature_info.reduction() == [d["reduction"] for d in info]
    assert feats.feature_info.module_name() == [d["module"] for d in info]
    with torch.no_grad():
        out = feats(x)
    assert len(out) == n
    for o, r, d in zip(out, ref, info):
        assert o.shape == (2, d["num_chs"], x.shape[2] // d["reduction"], x.shape[3] // d["reduction"])
        torch.testing.assert_close(o, r.permute(0, 3, 1, 2), rtol=0, atol=0)
    if not big:  # no unused parameters (DDP's complaint): the classifier and final norm are dropped
        params = dict(feats.named_parameters())
        loss = sum(o.float().mean() for o in feats(x[:1]))
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        unused = [k for k, g in zip(params, grads) if g is None]
        assert not unused, unused[:5]


def test_out_indices_select_and_an_fpn_takes_the_maps_unchanged():
    feats = ss.create_model("swin_nano", features_only=True, out_indices=(1, 2, 3))
    assert [n for n, m in feats.backbone.named_children() if not isinstance(m, nn.Identity)] == [
        "patch_embed",
        "layers",
    ]
    assert feats.feature_info.channels() == [64, 128, 256] and feats.feature_info.reduction() == [8, 16, 32]
    assert ss.create_model("swin_nano", features_only=True, out_indices=2).feature_info.reduction() == [16, 32]
    assert ss.create_model("swin_nano", features_only=True, out_indices=(-1,)).feature_info.module_name() == [
        "layers.3"
    ]

    class FPN(nn.Module):  # the shape of torchvision's FeaturePyramidNetwork(in_channels_list, out_channels)
        def __init__(self, in_channels_list, out_channels):
            super().__init__()
            self.inner = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels_list)
            self.layer = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels_list)

        def forward(self, xs):
            last = self.inner[-1](xs[-1])
            outs = [self.layer[-1](last)]
            for i in range(len(xs) - 2, -1, -1):
                last = self.inner[i](xs[i]) + F.interpolate(last, size=xs[i].shape[-2:], mode="nearest")
                outs.insert(0, self.layer[i](last))
            return outs

    fpn = FPN(feats.feature_info.channels(), 32)
    outs = fpn(feats(torch.randn(2, 3, 96, 128)))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 12, 16), (2, 32, 6, 8), (2, 32, 3, 4)]
    for bad in ((4,), (1, 1), ()):
        with pytest.raises(ss.SparseSearchError, match="out_indices"):
            ss.create_model("swin_nano", features_only=True, out_indices=bad)
    with pytest.raises(ss.SparseSearchError, match="features_only"):
        ss.create_model("swin_nano", out_indices=(1,))


def test_set_config_prunes_the_feature_maps(tmp_path):
    space = ss.SearchSpace.load("search_spaces/demo.yaml")
    torch.manual_seed(0)
    feats = space.create_model(features_only=True)
    full = space.create_model().eval()
    full.load_state_dict(feats.backbone.state_dict(), strict=False)
    feats.eval()
    cfg = space.sparsest()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        dense = feats(x)
        feats.set_config(cfg)
        assert feats.config == cfg and feats.backbone.config == cfg
        pruned = feats(x)
        feats.set_config(None)
        once = feats(x, config=cfg)  # for one call only
        ref = full.forward_stages(x) if full.set_config(cfg) is None else None
    assert feats.config is None
    assert not torch.equal(pruned[0], dense[0])  # windows of stage 0 were pruned
    for p, o, r in zip(pruned, once, ref):
        torch.testing.assert_close(p, r.permute(0, 3, 1, 2), rtol=0, atol=0)
        torch.testing.assert_close(o, p, rtol=0, atol=0)


def test_a_model_without_feature_support_is_refused():
    with pytest.raises(ss.SparseSearchError, match="does not provide feature extraction"):
        FeatureListNet(nn.Linear(2, 2))


def test_family_of_model_by_class_and_through_a_features_wrapper() -> None:
    from sparsesearch.errors import SparseSearchError
    from sparsesearch.models.family import family_of_model

    sam = ss.create_model("samvit_nano", img_size=64)
    assert family_of_model(sam).name == "SamViT"
    assert family_of_model(ss.create_model("samvit_nano", img_size=64, features_only=True)).name == "SamViT"
    assert family_of_model(ss.create_model("swin_nano", img_size=64)).name == "SwinTransformer"
    with pytest.raises(SparseSearchError, match="not a model of a known family"):
        family_of_model(torch.nn.Linear(2, 2))
