"""SamViT (SAM image encoder / ViTDet): dense equality with an independent reference, checkpoint formats, pruning
identities of the README, registered shapes, bad input."""

from __future__ import annotations

import random

import pytest
import sparsesearch as ss
import torch
from sparsesearch.config import SparsityConfig
from sparsesearch.errors import CheckpointError, ConfigError
from sparsesearch.models import load_checkpoint
from sparsesearch.models.samvit import block_groups

from .reference_samvit import RefImageEncoder, kept_window_mask, pruned_block, randomise

# 160 / 16 = 10 tokens a side: windows of 4 pad the map to 12 (3 x 3 windows)
SMALL = dict(img_size=160, embed_dim=32, depth=4, num_heads=2, global_attn_indexes=(1, 3), window_size=4, neck_chans=16)


def _reference(seed: int = 0) -> RefImageEncoder:
    ref = RefImageEncoder(160, 16, 32, 4, 2, 4, (1, 3), 16)
    randomise(ref, seed)
    return ref.eval()


def _sam_checkpoint(ref: RefImageEncoder, path) -> None:
    sd = {f"image_encoder.{k}": v for k, v in ref.state_dict().items()}
    sd["prompt_encoder.point_embeddings.0.weight"] = torch.zeros(1, 4)
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 4)
    torch.save({"model": sd}, path)


def _timm_checkpoint(ref: RefImageEncoder, path) -> None:
    torch.save({k.replace("mlp.lin", "mlp.fc"): v for k, v in ref.state_dict().items()}, path)


def _model(**kw):
    return ss.create_model("samvit_nano", **{**SMALL, "head": None, **kw}).eval()


@pytest.mark.parametrize("fmt", ["sam", "timm"])
def test_dense_matches_reference_both_formats(tmp_path, fmt):
    ref = _reference()
    path = tmp_path / "w.pth"
    (_sam_checkpoint if fmt == "sam" else _timm_checkpoint)(ref, path)
    model = _model()
    report = load_checkpoint(model, path)
    assert report.converted_from == ("sam" if fmt == "sam" else "timm")
    if fmt == "sam":
        assert any("prompt_encoder" in n and "mask_decoder" in n for n in report.notes)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.forward_features(x), ref(x), rtol=1e-4, atol=1e-4)


def test_other_input_size_resamples_like_reference(tmp_path):
    """A checkpoint for 160 loaded into a model built for 192: pos_embed resampled (bicubic) and the global
    blocks' tables resized (linear) on load; the reference resamples the same way at run time."""
    ref = _reference(1)
    path = tmp_path / "w.pth"
    _sam_checkpoint(ref, path)
    model = _model(img_size=192)
    report = load_checkpoint(model, path)
    assert "pos_embed" in report.resized and "blocks.1.attn.rel_pos_h" in report.resized
    x = torch.randn(1, 3, 192, 192)  # 12 x 12 tokens
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)


def _loaded(tmp_path, seed=0):
    ref = _reference(seed)
    path = tmp_path / "w.pth"
    _timm_checkpoint(ref, path)
    model = _model()
    load_checkpoint(model, path)
    return ref, model


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pruned_blocks_match_identity_reference(tmp_path, seed):
    ref, model = _loaded(tmp_path, seed)
    rng = random.Random(seed)
    x = torch.randn(2, 10, 10, 32) * (1 + 2 * torch.rand(2, 10, 10, 1))
    for i, (blk, rblk) in enumerate(zip(model.blocks, ref.blocks)):
        p = rng.choice([0.0, 0.3, 0.5, 0.7, 0.95])  # 0.95: k = 1
        w = rng.choice([3, 4])
        blk.sparsity, blk.window_size = p, w
        with torch.no_grad():
            got = blk(x.clone())
            want = pruned_block(rblk, x, w, p)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=f"block {i} p={p} w={w}")
        if p == 0.0:
            blk.window_size = 4
            with torch.no_grad():
                assert torch.equal(blk(x), blk._forward_dense(x, blk.geometry(10, 10)))


def test_global_block_single_window_keeps_only_it(tmp_path):
    """k = 1 in a global block: only the kept window's real tokens change, attending to each other alone."""
    ref, model = _loaded(tmp_path)
    blk = model.blocks[1]
    blk.sparsity, blk.window_size = 0.99, 4
    x = torch.randn(1, 10, 10, 32)
    kept = kept_window_mask(x, 4, 0.99)
    assert int(kept.sum()) in (4, 8, 16)
    with torch.no_grad():
        y = blk(x.clone())
    assert torch.equal(y[~kept], x[~kept])
    torch.testing.assert_close(y, pruned_block(ref.blocks[1], x, 4, 0.99), rtol=1e-4, atol=1e-4)


def test_whole_model_random_configs_match_chained_reference(tmp_path):
    ref, model = _loaded(tmp_path, 5)
    img = torch.randn(1, 3, 160, 160)
    for seed in range(3):
        rng = random.Random(seed)
        sp = [[rng.choice([0.0, 0.25, 0.5, 0.8]) for _ in range(d)] for d in model.depths]
        wins = [rng.choice([2, 3, 4]) for _ in model.depths]
        cfg = SparsityConfig(sp, wins)
        with torch.no_grad():
            got = model(img, cfg)
            x = ref.embed(img)
            flat = cfg.flat()
            for i, rblk in enumerate(ref.blocks):
                x = pruned_block(rblk, x, wins[model._group_of[i]], flat[i])
            want = ref.neck(x.permute(0, 3, 1, 2))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_p0_config_is_exactly_dense(tmp_path):
    _, model = _loaded(tmp_path)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(model(x, SparsityConfig.dense(model.depths, 4)), model(x))


def test_gradients_flow_through_pruned_global_block(tmp_path):
    _, model = _loaded(tmp_path)
    model.train()
    model.set_config(SparsityConfig.uniform(0.5, model.depths, 4))
    model(torch.randn(1, 3, 160, 160)).sum().backward()
    assert model.blocks[1].attn.rel_pos_h.grad is not None and model.blocks[1].attn.rel_pos_h.grad.abs().sum() > 0


# ---- structure ------------------------------------------------------------------------------------------------
def test_block_groups():
    assert block_groups(12, (2, 5, 8, 11)) == (3, 3, 3, 3)
    assert block_groups(24, (5, 11, 17, 23)) == (6, 6, 6, 6)
    assert block_groups(7, (2, 5)) == (3, 3, 1)
    assert block_groups(4, (0, 3)) == (1, 3)


@pytest.mark.parametrize(
    "name,dim,depth,globals_",
    [
        ("samvit_base_patch16", 768, 12, (2, 5, 8, 11)),
        ("samvit_large_patch16", 1024, 24, (5, 11, 17, 23)),
        ("samvit_huge_patch16", 1280, 32, (7, 15, 23, 31)),
    ],
)
def test_registered_shapes_match_timm(name, dim, depth, globals_):
    with torch.device("meta"):
        m = ss.create_model(name, num_classes=0)
    sd = m.state_dict()
    hd = dim // (12 if dim == 768 else 16)
    assert sd["pos_embed"].shape == (1, 64, 64, dim)
    assert sd["patch_embed.proj.weight"].shape == (dim, 3, 16, 16)
    for i in range(depth):
        n = 127 if i in globals_ else 27
        assert sd[f"blocks.{i}.attn.rel_pos_h"].shape == (n, hd)
        assert sd[f"blocks.{i}.attn.rel_pos_w"].shape == (n, hd)
        assert sd[f"blocks.{i}.mlp.fc1.weight"].shape == (4 * dim, dim)
    assert sd["neck.0.weight"].shape == (256, dim, 1, 1) and sd["neck.2.weight"].shape == (256, 256, 3, 3)
    assert sd["neck.1.weight"].shape == sd["neck.3.bias"].shape == (256,)
    assert m.depths == (depth // 4,) * 4
    assert len(m.feature_info) == depth and m.feature_info[0] == dict(num_chs=dim, reduction=16, module="blocks.0")


def test_forward_stages_and_heads():
    m = ss.create_model("samvit_nano", head="seg", num_classes=3).eval()
    x = torch.randn(1, 3, 192, 192)
    with torch.no_grad():
        feats = m.forward_stages(x)
        assert [tuple(f.shape) for f in feats] == [(1, 12, 12, 96)] * 6
        assert m(x, SparsityConfig.uniform(0.5, m.depths, 4)).shape == (1, 3, 192, 192)
        m.set_config(SparsityConfig.uniform(0.5, m.depths, 4))
        pruned = m.forward_stages(x)
        # every returned feature is the block's own output (later blocks never overwrite it in place)
        torch.testing.assert_close(pruned[1], m.blocks[1](pruned[0]))
        assert not torch.equal(pruned[-1], feats[-1]) and torch.isfinite(pruned[-1]).all()
    cls = ss.create_model("samvit_nano", num_classes=7).eval()
    assert cls(x).shape == (1, 7)


def test_smaller_window_reads_centre_crop(tmp_path):
    """A window of 3 in blocks whose tables were built for 4 reads the central 5 of 7 entries."""
    ref, model = _loaded(tmp_path)
    x = torch.randn(1, 10, 10, 32)
    with torch.no_grad():
        model.blocks[0].window_size = 3
        torch.testing.assert_close(model.blocks[0](x), ref.blocks[0](x, window=3), rtol=1e-4, atol=1e-4)


# ---- bad input ------------------------------------------------------------------------------------------------
def test_sam_checkpoint_for_swin_and_reverse(tmp_path):
    ref = _reference()
    sam = tmp_path / "sam.pth"
    _sam_checkpoint(ref, sam)
    swin = ss.create_model("swin_nano")
    with pytest.raises(CheckpointError, match="SAM .* checkpoint but .* Swin"):
        load_checkpoint(swin, sam)
    swin_ckpt = tmp_path / "swin.pth"
    torch.save(swin.state_dict(), swin_ckpt)
    with pytest.raises(CheckpointError, match="Swin .* checkpoint but .* SAM"):
        load_checkpoint(_model(), swin_ckpt)


def test_window_larger_than_tables_and_wrong_block_count():
    m = _model()
    with pytest.raises(ConfigError, match="allows at most 4"):
        m.set_config(SparsityConfig.dense(m.depths, [5, 4]))
    with pytest.raises(ConfigError, match="stage 1 of the model has 2 blocks"):
        m.set_config(SparsityConfig([[0.0, 0.0], [0.0, 0.0, 0.0]], [4, 4]))
    with pytest.raises(ConfigError, match="3 stages but the model has 2"):
        m.set_config(SparsityConfig([[0.0, 0.0]] * 3, [4, 4, 4]))
