"""The prunable Swin against the independent reference in tests/reference_swin.py."""

from __future__ import annotations

import pytest
import sparsesearch as ss
import torch
from sparsesearch import ops
from sparsesearch.models.swin import SwinBlock
from sparsesearch.ops import WindowGeometry, keep_count

from .reference_swin import (
    block_forward,
    crop_table,
    reference_kept_tokens,
    reference_window_scores,
    swin_forward,
)

TINY = dict(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4), num_classes=5)


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter (LayerNorm bias and position tables included) non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if "norm" in name or "bias_table" in name else 0.2
            p.copy_(
                torch.randn(p.shape, generator=g) * scale
                + (1.0 if name.endswith("norm.weight") or ".norm1.weight" in name or ".norm2.weight" in name else 0.0)
            )


def _model(**kw) -> ss.SwinTransformer:
    m = ss.create_model("swin_nano", **{**TINY, **kw}).eval()
    _randomise(m)
    return m


@pytest.mark.parametrize("size", [(64, 64), (72, 88), (100, 60)])
def test_dense_forward_equals_reference(size):
    torch.manual_seed(0)
    m = _model(window_size=4)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours = m(x)
        feats = m.forward_stages(x)
        ref, ref_feats = swin_forward(x, m.state_dict(), TINY["depths"], TINY["num_heads"], [4] * 4)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(feats, ref_feats):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_cached_attention_bias_one_entry_per_mask():
    """Two map sizes (two shift masks) in turn reuse their cached biases instead of rebuilding at every switch, and
    each equals a fresh build; the cache stays bounded."""
    from sparsesearch import ops  # noqa: PLC0415

    attn = _model(window_size=4).stages[0].swin_blocks[1].attn
    masks = [ops.shift_mask(ops.WindowGeometry.create(h, h, 4, True)) for h in (8, 12, 16, 20, 24, 28)]
    with torch.inference_mode():
        first = [attn.attention_bias(4, 4, mask) for mask in masks[:2]]
        for _ in range(2):
            for mask, want in zip(masks[:2], first):
                assert attn.attention_bias(4, 4, mask) is want
        for mask in masks:
            torch.testing.assert_close(attn.attention_bias(4, 4, mask), attn._build_bias(4, 4, mask), rtol=0, atol=0)
        assert len(attn._bias_cache) <= 8


def test_cached_attention_bias_follows_weight_changes():
    """In inference the position bias (+ shift mask) is cached per block; changing the tables in place or loading
    other weights must take effect on the next forward, as the reference built from the new weights shows."""
    torch.manual_seed(0)
    m = _model(window_size=4)
    x = torch.randn(2, 3, 64, 64)
    other = _model(window_size=4)
    _randomise(other, seed=1)

    def check() -> None:
        ref, _ = swin_forward(x, m.state_dict(), TINY["depths"], TINY["num_heads"], [4] * 4)
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4)

    with torch.inference_mode():
        check()
        assert all(blk.attn._bias_cache for s in m.stages for blk in s.swin_blocks)
        for s in m.stages:
            for blk in s.swin_blocks:
                blk.attn.relative_position_bias_table.mul_(-2.0)
        check()
    m.load_state_dict(other.state_dict())
    with torch.no_grad():
        check()
    with torch.inference_mode():  # a model built in inference mode (inference-tensor tables: never cached)
        built_inside = _model(window_size=4)
        built_inside.load_state_dict(m.state_dict())
        torch.testing.assert_close(built_inside(x), m(x))
    with torch.enable_grad():  # training-mode calls build the bias afresh (autograd reaches the table)
        m.train()
        m(x).sum().backward()
        assert m.stages[0].swin_blocks[1].attn.relative_position_bias_table.grad is not None


def test_timm_window_clamp_matches_reference():
    """A window larger than the feature map shrinks to it and stops shifting (timm's rule)."""
    m = _model(window_size=7)
    x = torch.randn(1, 3, 96, 96)  # stage maps 24, 12, 6, 3: the last two are smaller than the window
    with torch.no_grad():
        ref, _ = swin_forward(x, m.state_dict(), TINY["depths"], TINY["num_heads"], [7] * 4)
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4)


def _block(dim=24, heads=3, window=4, shifted=False, max_window=None, seed=0) -> SwinBlock:
    blk = SwinBlock(dim, heads, window, max_window or window, shifted).eval()
    _randomise(blk, seed)
    return blk


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("hw", [(16, 16), (14, 18), (9, 13)])
@pytest.mark.parametrize("p", [0.3, 0.5, 0.8, 0.99])
def test_pruned_block_equals_where_kept_dense(shifted, hw, p):
    torch.manual_seed(1)
    blk = _block(shifted=shifted)
    x = torch.randn(3, *hw, 24)
    x[:, : hw[0] // 2] *= 0.1  # make scores spread out so there are no near-ties
    blk.sparsity = p
    with torch.no_grad():
        ours = blk(x)
        sd = {("." + k): v for k, v in blk.state_dict().items()}
        dense = block_forward(x, sd, "", 3, 4, shifted)
    kept = reference_kept_tokens(x, 4, shifted, p)
    expected = torch.where(kept[..., None], dense, x)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    # pruned tokens are bit-for-bit unchanged, and the kept fraction is what keep_count says
    assert torch.equal(ours[~kept], x[~kept])
    geom = WindowGeometry.create(hw[0], hw[1], 4, shifted)
    assert int(kept.sum()) <= 3 * keep_count(p, geom.num_windows) * geom.window_area


def test_real_token_mlp_path_is_taken_and_exact(monkeypatch):
    """On a heavily padded map the pruned block runs its MLP on real tokens only; the output is unchanged."""
    calls = []
    original = SwinBlock._mlp_on_real_tokens
    monkeypatch.setattr(
        SwinBlock, "_mlp_on_real_tokens", lambda self, w, pad: calls.append(1) or original(self, w, pad)
    )
    torch.manual_seed(3)
    blk = _block(shifted=True)
    blk.fused_pruned_path = False  # the fused path (tests/test_pruned_path.py) runs the whole block on real tokens
    x = torch.randn(2, 9, 13, 24)  # 3 x 4 windows of 4 over a 12 x 16 grid: 39 % of it is padding
    blk.sparsity = 0.3
    with torch.no_grad():
        ours = blk(x)
        sd = {("." + k): v for k, v in blk.state_dict().items()}
        dense = block_forward(x, sd, "", 3, 4, True)
        blk.skip_padded_tokens = False
        full = blk(x)
    assert calls, "the real-token path was not taken"
    kept = reference_kept_tokens(x, 4, True, 0.3)
    torch.testing.assert_close(ours, torch.where(kept[..., None], dense, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, full, rtol=1e-6, atol=1e-6)


def test_zero_sparsity_block_is_exactly_dense():
    blk = _block(shifted=True)
    x = torch.randn(2, 12, 12, 24)
    with torch.no_grad():
        dense = blk(x)
        blk.sparsity = 0.0
        assert torch.equal(blk(x), dense)
        blk.sparsity = 0.01  # keeps every window: takes the dense path too
        assert torch.equal(blk(x), dense)


def test_window_scores_match_reference():
    x = torch.randn(2, 13, 11, 40)
    for shifted in (False, True):
        geom = WindowGeometry.create(13, 11, 4, shifted)
        ours = ops.score_windows(x, geom, backend="torch")
        torch.testing.assert_close(ours.double(), reference_window_scores(x, 4, shifted), rtol=1e-5, atol=1e-6)


def test_keep_count_rounds_half_up():
    assert keep_count(0.5, 9) == 5  # 4.5 -> 5
    assert keep_count(0.3, 10) == 7  # 0.7 * 10 is 6.999... in binary: still 7
    assert keep_count(0.7, 10) == 3
    assert keep_count(0.9, 5) == 1  # 0.5 -> 1
    assert keep_count(0.99, 4) == 1  # never below one window
    assert keep_count(0.0, 7) == 7


@pytest.mark.parametrize("shifted", [False, True])
def test_cropped_window_equals_native_window(shifted):
    """A block whose table is sized for 8 but runs at 6 equals a native window-6 block with the cropped table."""
    big = _block(window=6, max_window=8, shifted=shifted, seed=3)
    sd = {"." + k: v for k, v in big.state_dict().items()}
    sd_native = dict(sd)
    sd_native[".attn.relative_position_bias_table"] = crop_table(sd[".attn.relative_position_bias_table"], 8, 6, 6)
    native = _block(window=6, max_window=6, shifted=shifted)
    native.load_state_dict({k[1:]: v for k, v in sd_native.items()})
    x = torch.randn(2, 18, 15, 24)
    with torch.no_grad():
        torch.testing.assert_close(big(x), native(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(big(x), block_forward(x, sd_native, "", 3, 6, shifted), rtol=1e-5, atol=1e-5)
        big.sparsity = native.sparsity = 0.5
        torch.testing.assert_close(big(x), native(x), rtol=1e-6, atol=1e-6)


def test_model_with_window_config_matches_reference():
    m = _model(window_size=4, max_window_size=6)
    cfg = ss.SparsityConfig.dense(TINY["depths"], [6, 5, 4, 4])
    m.set_config(cfg)
    x = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        ref, _ = swin_forward(x, m.state_dict(), TINY["depths"], TINY["num_heads"], [6, 5, 4, 4], table_windows=[6] * 4)
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4)


def test_model_config_pruning_matches_blockwise_reference():
    """Whole model at a mixed config equals the reference run block by block with where(kept, dense, x)."""
    m = _model(window_size=4)
    cfg = ss.SparsityConfig([[0.5, 0.3], [0.6, 0.0], [0.4, 0.7], [0.0, 0.0]], [4, 4, 4, 4])
    m.set_config(cfg)
    img = torch.randn(2, 3, 64, 64)
    sd = m.state_dict()
    with torch.no_grad():
        x = m.patch_embed(img)
        for i, d in enumerate(TINY["depths"]):
            if i:
                x = m.layers[i].downsample(x)
            for j in range(d):
                p = cfg.sparsity[i][j]
                dense = block_forward(x, sd, f"layers.{i}.blocks.{j}", TINY["num_heads"][i], 4, j % 2 == 1)
                kept = (
                    reference_kept_tokens(x, 4, j % 2 == 1, p) if p > 0 else torch.ones(x.shape[:3], dtype=torch.bool)
                )
                x = torch.where(kept[..., None], dense, x)
        ref = m.head(m.norm(x))
        torch.testing.assert_close(m(img), ref, rtol=1e-4, atol=1e-4)


def test_forward_config_argument_is_temporary():
    m = _model(window_size=4)
    x = torch.randn(1, 3, 64, 64)
    cfg = ss.SparsityConfig.uniform(0.5, TINY["depths"], 4)
    with torch.no_grad():
        dense = m(x)
        pruned = m(x, config=cfg)
        assert m.config is None
        m.set_config(cfg)
        assert torch.equal(m(x), pruned)
        assert not torch.allclose(pruned, dense)


def test_gradients_reach_every_used_parameter():
    m = _model(window_size=4)
    m.train()
    m.set_config(ss.SparsityConfig([[0.5, 0.5], [0.5, 0.5], [0.3, 0.3], [0.0, 0.0]], [4, 4, 4, 4]))
    x = torch.randn(2, 3, 64, 72, requires_grad=True)
    m(x).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_pruned_block_gradient_matches_reference():
    blk = _block(shifted=True)
    x = torch.randn(2, 14, 10, 24)
    x[:, :6] *= 0.1
    blk.sparsity = 0.5
    x1 = x.clone().requires_grad_()
    blk(x1).sin().sum().backward()
    ours = {n: p.grad.clone() for n, p in blk.named_parameters()}
    kept = reference_kept_tokens(x, 4, True, 0.5)
    sd = {"." + k: v.detach().clone().requires_grad_() for k, v in blk.state_dict().items()}
    x2 = x.clone().requires_grad_()
    torch.where(kept[..., None], block_forward(x2, sd, "", 3, 4, True), x2).sin().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    for n, g in ours.items():
        torch.testing.assert_close(g, sd["." + n].grad, rtol=1e-4, atol=1e-5)


def test_segmentation_head_and_multiscale_features():
    m = ss.create_model("swin_nano", head="seg", num_classes=4)
    x = torch.randn(1, 3, 100, 68)
    feats = m.forward_stages(x)
    assert [tuple(f.shape[1:3]) for f in feats] == [(25, 17), (13, 9), (7, 5), (4, 3)]
    assert [f.shape[-1] for f in feats] == [32, 64, 128, 256]
    assert m(x).shape == (1, 4, 100, 68)


@pytest.mark.parametrize("name", ss.list_models())
def test_registered_models_build(name):
    with torch.device("meta"):  # structure and configs only: the big members' random init costs seconds
        m = ss.create_model(name, num_classes=3)
    assert m.model_name == name
    cfg = m.uniform_config(0.5)  # 0.5 in every block the family prunes, 0 in the others (SAM 2's q-pool blocks)
    m.set_config(cfg)
    assert m.config is cfg
    blocks = [b for row in m.config_rows() for b in row]
    assert [b.sparsity for b in blocks] == [0.5 if b.prunable else 0.0 for b in blocks]
    if all(b.prunable for b in blocks):
        assert cfg == ss.SparsityConfig.uniform(0.5, m.depths, m.default_window_size)


def test_inference_writes_in_place_only_into_owned_tensors():
    """In inference a pruned block may reuse its input's storage, but never a tensor the caller passed in."""
    m = _model(window_size=4)
    m.set_config(ss.SparsityConfig.uniform(0.5, TINY["depths"], 4))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = m(x)
        stage_in = m.patch_embed(x)
        kept = stage_in.clone()
        out = m.layers[0](stage_in)  # not owned: left untouched
        assert torch.equal(stage_in, kept)
        blk = m.layers[1].blocks[0]
        y = torch.randn(1, 8, 8, 48)
        y0 = y.clone()
        blk(y)
        assert torch.equal(y, y0)
        owned = blk(y, owns_input=True)
        assert owned.data_ptr() == y.data_ptr()  # written in place
    with torch.inference_mode():
        torch.testing.assert_close(m(x), expected, rtol=0, atol=0)
    assert out.shape == (1, 16, 16, 24)


def test_training_after_inference_mode_calls():
    """Index tensors cached during an inference-mode forward must not poison a later training step."""
    m = _model(window_size=4)
    m.set_config(ss.SparsityConfig.uniform(0.5, TINY["depths"], 4))
    x = torch.randn(1, 3, 40, 56)
    with torch.inference_mode():
        m(x)
    m.train()
    m(x).sum().backward()
    assert m.layers[0].blocks[1].attn.relative_position_bias_table.grad is not None
