"""The fused real-token path of a pruned Swin block (`models.pruned_path`) against the independent reference."""

from __future__ import annotations

import random

import pytest
import torch
from sparsesearch import ops
from sparsesearch.models import pruned_path, window_block
from sparsesearch.models.pruned_path import kept_tokens
from sparsesearch.models.swin import SwinBlock
from sparsesearch.ops import WindowGeometry, keep_count

from .reference_swin import block_forward, reference_kept_tokens


def _block(dim: int, heads: int, window: int, shifted: bool, seed: int) -> SwinBlock:
    """A block with non-trivial LayerNorm and position-bias parameters."""
    blk = SwinBlock(dim, heads, window, window, shifted).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in blk.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "norm" in name or "table" in name else 0.2))
            if name in ("norm1.weight", "norm2.weight"):
                p.add_(1.0)
    return blk


def _random_configs(n: int) -> list[tuple[int, int, bool, int, int, int, float]]:
    """(batch, H, W, shifted, window, heads, sparsity): padded and unpadded maps, k = 1 included."""
    rng = random.Random(16)
    out = [(1, 9, 13, True, 4, 2, 0.99), (2, 12, 12, False, 4, 3, 0.99), (2, 7, 7, True, 7, 1, 0.5)]
    for _ in range(n):
        window = rng.choice([3, 4, 5, 7])
        H, W = rng.randint(window, 3 * window + 2), rng.randint(window, 3 * window + 2)
        out.append((rng.choice([1, 2, 3]), H, W, rng.random() < 0.5, window, rng.choice([1, 2, 3]), rng.random()))
    return out


@pytest.mark.parametrize("cfg", _random_configs(9), ids=lambda c: "b{}_{}x{}_s{}_w{}_h{}_p{:.2f}".format(*c))
def test_fused_path_equals_where_kept_dense(cfg, monkeypatch):
    B, H, W, shifted, window, heads, p = cfg
    taken = []
    original = window_block.fused_pruned_forward
    monkeypatch.setattr(window_block, "fused_pruned_forward", lambda *a, **kw: taken.append(1) or original(*a, **kw))
    blk = _block(12 * heads, heads, window, shifted, seed=H * W)
    torch.manual_seed(H + W)
    x = torch.randn(B, H, W, 12 * heads)
    x[:, : H // 2] *= 0.2  # spread the scores: no near-ties
    blk.sparsity = p
    with torch.no_grad():
        ours = blk(x)
        dense = block_forward(x, {"." + k: v for k, v in blk.state_dict().items()}, "", heads, window, shifted)
    g = WindowGeometry.create(H, W, window, shifted)
    assert bool(taken) == (keep_count(p, g.num_windows) < g.num_windows)
    kept = reference_kept_tokens(x, window, shifted, p)
    torch.testing.assert_close(ours, torch.where(kept[..., None], dense, x), rtol=1e-5, atol=1e-5)
    assert torch.equal(ours[~kept], x[~kept])  # pruned tokens bit for bit


@pytest.mark.parametrize("shifted", [False, True])
def test_fused_path_equals_general_path_in_place_and_not(shifted):
    """Same output as the window-op path; writes into x only when the caller owns it."""
    blk = _block(24, 3, 4, shifted, seed=5)
    blk.sparsity = 0.6
    x = torch.randn(2, 10, 15, 24)
    x0 = x.clone()
    with torch.inference_mode():
        fused = blk(x)
        assert torch.equal(x, x0) and fused.data_ptr() != x.data_ptr()
        blk.fused_pruned_path = False
        general = blk(x)
        del blk.fused_pruned_path
        owned = x.clone()
        out = blk(owned, owns_input=True)
        assert out.data_ptr() == owned.data_ptr()
    torch.testing.assert_close(fused, general, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, fused, rtol=0, atol=0)


def test_fused_path_not_taken_with_grad(monkeypatch):
    """Autograd keeps the general path (named ops with gradients)."""
    taken = []
    monkeypatch.setattr(window_block, "fused_pruned_forward", lambda *a, **kw: taken.append(1))
    blk = _block(24, 3, 4, True, seed=1)
    blk.sparsity = 0.5
    x = torch.randn(1, 8, 8, 24, requires_grad=True)
    blk(x).sum().backward()
    assert not taken and x.grad is not None


def test_kept_tokens_index_the_real_tokens_of_kept_windows():
    g = WindowGeometry.create(9, 13, 4, True)  # 3 x 4 windows over a 12 x 16 grid
    idx = torch.tensor([[0, 5, 11], [2, 3, 7]])
    kt = kept_tokens(g, idx)
    token = ops.token_index(g)[idx]  # (B, k, N), H*W at padded slots
    real = token != g.H * g.W
    want = (token + torch.arange(2).view(2, 1, 1) * g.H * g.W)[real]
    assert torch.equal(kt.src, want)
    assert kt.slots is not None and torch.equal(kt.slots, real.reshape(-1).nonzero().squeeze(1))
    unpadded = kept_tokens(WindowGeometry.create(8, 12, 4, False), idx[:, :2])
    assert unpadded.slots is None and unpadded.src.numel() == 2 * 2 * 16


def test_carried_scores_equal_recomputed_scores(monkeypatch):
    """A stage of pruned blocks scoring from carried token scores gives the same output as one rescoring the map;
    the carried scores are those of the output."""
    import sparsesearch as ss  # noqa: PLC0415

    m = ss.create_model("swin_nano", embed_dim=24, depths=(2, 4, 2, 2), num_heads=(1, 2, 3, 4), window_size=4).eval()
    m.set_config(ss.SparsityConfig([[0.5, 0.3], [0.6, 0.0, 0.4, 0.7], [0.5, 0.5], [0.0, 0.0]], [4, 4, 4, 4]))
    x = torch.randn(2, 3, 72, 88)
    seen: list[torch.Tensor] = []
    original = window_block.window_scores
    monkeypatch.setattr(
        window_block, "window_scores", lambda tok, g, *rest: seen.append(tok.clone()) or original(tok, g, *rest)
    )
    with torch.no_grad():
        carried = m(x)
        SwinBlock.carry_scores = False
        try:
            fresh_seen = len(seen)
            fresh = m(x)
        finally:
            SwinBlock.carry_scores = True
        stage = m.layers[1]
        h = m.layers[0](m.patch_embed(x))
        h = stage.downsample(h)
        for blk in stage.blocks:  # the token scores every pruned block of stage 1 is given equal a fresh computation
            if blk.sparsity > 0:
                want = h.abs().mean(-1, dtype=torch.float32).reshape(h.shape[0], -1)
                assert any(t.shape == want.shape and torch.equal(t, want) for t in seen[:fresh_seen])
            h = blk(h)
    torch.testing.assert_close(carried, fresh, rtol=0, atol=0)


@pytest.mark.parametrize("hw,fused", [((8, 12), True), ((9, 11), False)])
def test_compiled_block_takes_the_fused_path_on_unpadded_maps(hw, fused):
    """Under torch.compile (no grad) a pruned block runs the fused path where its shapes are static (an unpadded
    map: every kept slot is a real token) and the general path of named window ops on a padded map; both equal
    eager bit for bit (aot_eager: the graph as traced, no kernel fusion)."""
    import warnings  # noqa: PLC0415

    import torch._dynamo  # noqa: PLC0415
    from torch._dynamo.backends.debugging import aot_eager  # noqa: PLC0415

    torch._dynamo.reset()
    blk = _block(8, 2, 4, True, seed=5)
    blk.sparsity = 0.5
    seen: list[str] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):  # type: ignore[no-untyped-def]
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return aot_eager(gm, example_inputs)

    x = torch.randn(2, *hw, 8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = torch.compile(blk, backend=backend, fullgraph=True)(x.clone())
        want = blk(x.clone())
    torch._dynamo.reset()
    assert torch.equal(got, want)
    named = any("sparsesearch" in name for name in seen)
    assert named != fused, seen


@pytest.mark.parametrize("wanted", [True, False])
def test_a_block_updates_carried_scores_only_when_wanted(wanted):
    """A stage's last block (carry.wanted False) leaves no scores behind; any other hands on those of its output.
    The output is the same either way."""
    blk = _block(8, 2, 4, True, seed=3)
    blk.sparsity = 0.5
    x = torch.randn(2, 9, 11, 8)
    carry = window_block.ScoreCarry()
    carry.wanted = wanted
    with torch.no_grad():
        want = blk(x.clone())
        got = blk(x.clone(), carry=carry)
    assert torch.equal(got, want)
    if wanted:
        assert carry.tok is not None and carry.get(got) is carry.tok
        assert torch.equal(carry.tok, got.abs().mean(-1, dtype=torch.float32).reshape(2, -1))
    else:
        assert carry.tok is None and carry.get(got) is None


@pytest.mark.parametrize("is_global", [False, True])
@pytest.mark.parametrize("hw,p", [((10, 7), 0.5), ((12, 12), 0.99), ((9, 13), 0.3)])
def test_samvit_block_fused_equals_general_path(hw, p, is_global, monkeypatch):
    """A SAM block (windowed or global) takes the fused path in inference; same output as the window-op path (which
    the SAM identity tests check against tests/reference_samvit.py)."""
    from sparsesearch.models import samvit  # noqa: PLC0415

    taken = []
    original = window_block.fused_pruned_forward
    monkeypatch.setattr(window_block, "fused_pruned_forward", lambda *a, **kw: taken.append(1) or original(*a, **kw))
    blk = samvit.SamBlock(16, 2, 4, hw if is_global else (4, 4), is_global).eval()
    g = torch.Generator().manual_seed(hw[0])
    with torch.no_grad():
        for p_ in blk.parameters():
            p_.copy_(torch.randn(p_.shape, generator=g) * 0.3)
    blk.sparsity = p
    x = torch.randn(2, *hw, 16, generator=g)
    with torch.no_grad():
        fused = blk(x)
        blk.fused_pruned_path = False
        general = blk(x)
    assert taken
    torch.testing.assert_close(fused, general, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_token_scores_are_the_mean_of_abs_bit_for_bit(dtype):
    """The fused path's token scores (a sum and a cached divisor) are mean_c |x| in float32, bit for bit, for every
    channel count, and inside inference mode as outside."""
    gen = torch.Generator().manual_seed(11)
    for C in (1, 3, 48, 96, 97, 384):
        x = (torch.randn(2, 5, 7, C, generator=gen) * torch.rand(2, 5, 7, C, generator=gen) * 9).to(dtype)
        want = x.abs().float().mean(dim=-1)
        assert torch.equal(pruned_path.token_scores(x), want)
        with torch.inference_mode():
            assert torch.equal(pruned_path.token_scores(x), want)


def test_selection_keeps_the_highest_scores_ties_to_the_lower_index():
    """`reference.select` (which the fused path calls directly) against a Python sort by (-score, index): exact
    ties, a single window and every k, ascending output."""
    gen = torch.Generator().manual_seed(5)
    scores = torch.randint(0, 4, (3, 9), generator=gen).float()  # many exact ties
    scores[2] = 1.0  # all tied
    for k in range(1, 10):
        got = ops.reference.select(scores, k)
        for b in range(3):
            want = sorted(sorted(range(9), key=lambda i: (-float(scores[b, i]), i))[:k])
            assert got[b].tolist() == want
    assert ops.reference.select(torch.tensor([[2.0]]), 1).tolist() == [[0]]
