"""SAM 2 Hiera trunk (models/hiera.py), dense: checkpoint formats and equality with the independent reference
(tests/reference_hiera.py) at unpadded, padded and odd sizes; position embedding resizing; architecture numbers;
heads. The pruning references are checked against the window ops here; the pruned model against them is in
tests/test_hiera_pruning.py."""

from __future__ import annotations

import pytest
import torch
from sparsesearch import ops
from sparsesearch.errors import CheckpointError
from sparsesearch.models.hiera import ARCHS, HieraDet, checkpoint_filter_fn

from .reference_hiera import RefHiera, kept_window_mask, pruned_block, pruned_forward, randomise, sam2_checkpoint

# the tiny member's layout (12 blocks: q-pool 1, 3, 10; global 5, 7, 9; windows 8, 4, 14, 7) at a sixth of its width
TINY = ARCHS["sam2_hiera_tiny"]
NARROW = dict(TINY, embed_dim=16)


def _reference(seed: int = 0, **kw) -> RefHiera:
    a = {**NARROW, **kw}
    ref = RefHiera(
        a["embed_dim"], a["num_heads"], a["stages"], a["global_att_blocks"], a["window_spec"], a["global_pos_size"]
    )
    randomise(ref, seed)
    return ref.double().eval()


def _model(**kw) -> HieraDet:
    return HieraDet(**{**NARROW, "head": None, **kw}).double().eval()


def _load(model: HieraDet, ckpt, path) -> list[str]:
    torch.save(ckpt, path)
    sd, notes = checkpoint_filter_fn(torch.load(path, weights_only=True), model)
    model.load_state_dict(sd, strict=True)
    return notes


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    ref = _reference()
    model = _model()
    notes = _load(model, sam2_checkpoint(ref), tmp_path_factory.mktemp("ckpt") / "sam2.pt")
    return ref, model, notes


def test_original_sam2_checkpoint_converts(loaded):
    _, model, notes = loaded
    assert notes[0].startswith("converted an original SAM 2 checkpoint")
    dropped = notes[1]
    for part in ("image_encoder.neck", "memory_attention", "memory_encoder", "sam_mask_decoder", "maskmem_tpos_enc"):
        assert part in dropped
    assert "blocks.0.mlp.fc1.weight" in model.state_dict() and "blocks.1.proj.weight" in model.state_dict()


# 224: no padding (56, 28, 14, 7 tokens a side); 320: stages 3 and 4 padded (20 -> 28 with windows of 14, 10 -> 14
# with 7) and the stage-4 q-pool block pools a padded 28x28 map; 200: beyond SAM 2 (50 is no multiple of the window
# table's 8, the stage-3 q-pool block sees an odd 25x25 map).
@pytest.mark.parametrize("size", [224, 320, 200])
def test_dense_stage_maps_match_reference(loaded, size):
    ref, model, _ = loaded
    img = torch.randn(
        2 if size == 224 else 1, 3, size, size, generator=torch.Generator().manual_seed(size), dtype=torch.float64
    )
    with torch.no_grad():
        want = ref(img)
        got = model.forward_stages(img)
        trunk = model.forward_features(img)
    assert [tuple(f.shape) for f in got] == [tuple(f.shape) for f in want]
    assert [f.shape[-1] for f in got] == [d["num_chs"] for d in model.feature_info]
    for s, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=f"stage {s + 1} at {size}")
    torch.testing.assert_close(trunk, want[-1], rtol=1e-9, atol=1e-9)


def test_float32_matches_reference(loaded):
    ref, model, _ = loaded
    img = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref.float()(img)[-1]
        got = model.float().forward_features(img)
    ref.double(), model.double()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [64, 256, 320, 200, 96])
def test_position_embedding_resized_like_reference(loaded, size):
    """The 7x7 background table resized (bicubic) to the token grid plus the 8x8 window table tiled over it;
    96 -> a 24x24 grid (the window table does not tile it, SAM 2 would refuse)."""
    ref, model, _ = loaded
    img = torch.randn(1, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(img), ref.embed(img), rtol=1e-12, atol=1e-12)


def test_timm_state_dict_loads_strict(loaded, tmp_path):
    """A timm-named state dict (the model's own, re-saved with timm's classifier norm beside it) loads with
    strict=True into a fresh model and gives the reference's maps."""
    ref, model, _ = loaded
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["head.norm.weight"], sd["head.norm.bias"] = torch.ones(128), torch.zeros(128)
    fresh = _model()
    notes = _load(fresh, sd, tmp_path / "timm.pth")
    assert len(notes) == 1 and "head.norm.weight" in notes[0]
    img = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fresh.forward_features(img), ref(img)[-1], rtol=1e-9, atol=1e-9)


def test_position_table_of_another_size_is_resized(tmp_path):
    """A 7x7 `pos_embed` loaded into a model built for 14x14 (base+'s size) is resized bicubically."""
    ref = _reference(1)
    model = _model(global_pos_size=(14, 14))
    notes = _load(model, sam2_checkpoint(ref), tmp_path / "sam2.pt")
    assert any("resized pos_embed from (7, 7) to (14, 14)" in n for n in notes)
    want = torch.nn.functional.interpolate(ref.pos_embed.detach(), size=(14, 14), mode="bicubic")
    torch.testing.assert_close(model.pos_embed.detach(), want)


def test_sam1_checkpoint_is_refused():
    with pytest.raises(CheckpointError, match="not a SAM 2 checkpoint"):
        checkpoint_filter_fn({"image_encoder.blocks.0.norm1.weight": torch.ones(16)}, _model())


def test_global_qpool_block_matches_reference(tmp_path):
    """A layout SAM 2's defaults never use: the stage-3 q-pool block (3) attends globally, queries pooled over the
    whole map; block 6 global too."""
    ref = _reference(2, global_att_blocks=(3, 6))
    model = _model(global_att_blocks=(3, 6))
    _load(model, sam2_checkpoint(ref), tmp_path / "sam2.pt")
    assert model.window_stage_of == tuple(ref.window_stage) and model.stage_of == tuple(ref.stage_of)
    img = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        for g, w in zip(model.forward_stages(img), ref(img)):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_classifier_of_other_class_count_is_dropped():
    model = HieraDet(**{**NARROW, "num_classes": 5})
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["head.fc.weight"], sd["head.fc.bias"] = torch.zeros(7, 128), torch.zeros(7)
    out, notes = checkpoint_filter_fn(sd, model)
    assert "head.fc.weight" not in out and "head.fc.weight" in notes[0]


# ---- structure ------------------------------------------------------------------------------------------------
# (q-pool blocks, per-block windows with 0 = global, channels) from SAM 2's Hiera rules written out by hand
EXPECTED = {
    "sam2_hiera_tiny": ((1, 3, 10), [8, 8, 4, 4, 14, 0, 14, 0, 14, 0, 14, 7], (96, 192, 384, 768)),
    "sam2_hiera_small": (
        (1, 3, 14),
        [8, 8, 4, 4] + [14, 14, 14, 0, 14, 14, 0, 14, 14, 0] + [14, 7],
        (96, 192, 384, 768),
    ),
    "sam2_hiera_base_plus": (
        (2, 5, 21),
        [8, 8, 8, 4, 4, 4] + [14] * 6 + [0, 14, 14, 14, 0, 14, 14, 14, 0] + [14, 7, 7],
        (112, 224, 448, 896),
    ),
    "sam2_hiera_large": (
        (2, 8, 44),
        [8, 8, 8] + [4] * 5 + [4] + [16] * 14 + [0] + [16] * 9 + [0] + [16] * 9 + [0] + [16, 8, 8, 8],
        (144, 288, 576, 1152),
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_architecture_numbers(name):
    qpool, windows, chans = EXPECTED[name]
    with torch.device("meta"):
        model = HieraDet(**ARCHS[name], head=None)
    assert model.q_pool_blocks == qpool
    assert [0 if b.global_attn else b.window_size for b in model.hiera_blocks] == windows
    assert model.embed_dims == chans
    assert [d["reduction"] for d in model.feature_info] == [4, 8, 16, 32]
    assert [d["module"] for d in model.feature_info] == [f"blocks.{e}" for e in model.stage_ends]
    # a global block's window is its stage's: the tiling it will be pruned with
    for blk, s in zip(model.hiera_blocks, model.stage_of):
        if blk.global_attn:
            assert blk.window_size == model.default_window_size[s]


def test_nano_member_and_heads():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    seg = HieraDet(**ARCHS["sam2_hiera_nano"], num_classes=3, head="seg", seg_dim=16).eval()
    cls = HieraDet(**ARCHS["sam2_hiera_nano"], num_classes=7, head="cls").eval()
    with torch.no_grad():
        assert seg(x).shape == (2, 3, 64, 64)
        assert cls(x).shape == (2, 7)
        maps = cls.forward_stages(x)
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 16, 32), (8, 8, 64), (4, 4, 128), (2, 2, 256)]


# ---- the pruning references (the model's pruned blocks: tests/test_hiera_pruning.py) ---------------------------
def test_reference_kept_windows_match_the_window_ops():
    """The reference's window choice equals score + select of sparsesearch.ops on a padded, unshifted tiling."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 10, 10, 8, generator=gen) * (1 + 3 * torch.rand(2, 10, 10, 1, generator=gen))
    for p in (0.0, 0.3, 0.5, 0.9):
        geom = ops.WindowGeometry(10, 10, 7, 7, 0, 0)  # 2x2 windows, padded to 14
        idx = ops.select_windows(ops.score_windows(x, geom, "torch"), ops.keep_count(p, 4), "torch")
        want = torch.zeros(2, 14, 14, dtype=torch.bool)
        for b in range(2):
            for wi in idx[b].tolist():
                r, c = divmod(wi, 2)
                want[b, r * 7 : (r + 1) * 7, c * 7 : (c + 1) * 7] = True
        assert torch.equal(kept_window_mask(x, 7, p), want[:, :10, :10])


def test_reference_pruned_blocks_identities(loaded):
    """p = 0 is the dense model; pruned tokens leave a block unchanged; q-pool blocks refuse sparsity."""
    ref, _, _ = loaded
    gen = torch.Generator().manual_seed(4)
    img = torch.randn(1, 3, 320, 320, dtype=torch.float64, generator=gen)
    windows = list(NARROW["window_spec"])
    # windowed (stage 2, 40x40), global (20x20 tiled by 14: padded), windowed (10x10 by 7: padded)
    cases = {2: (40, 32), 5: (20, 64), 11: (10, 128)}
    with torch.no_grad():
        got = pruned_forward(ref, img, [0.0] * 12, windows)
        assert all(torch.equal(a, b) for a, b in zip(got, ref(img)))
        for i, (hw, c) in cases.items():
            x = torch.randn(1, hw, hw, c, dtype=torch.float64, generator=gen)
            x = x * (1 + 3 * torch.rand(1, hw, hw, 1, dtype=torch.float64, generator=gen))
            w = windows[ref.window_stage[i]]
            kept = kept_window_mask(x, w, 0.5)
            y = pruned_block(ref.blocks[i], x, w, 0.5)
            assert torch.equal(y[~kept], x[~kept]) and not torch.equal(y[kept], x[kept])
    with pytest.raises(ValueError, match="never pruned"):
        pruned_block(ref.blocks[3], torch.zeros(1, 28, 28, 32, dtype=torch.float64), 4, 0.5)
