"""The window <-> token index tensors of `ops.geometry` and the torch bodies of `ops.reference` against a plain,
independent formulation: roll -> pad -> partition of the map (timm's order), written here with torch.roll and
F.pad and sharing no index arithmetic with the package."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sparsesearch import ops
from sparsesearch.ops import WindowGeometry, geometry, reference

# (H, W, window, shifted): shift / no shift, padding, a window clamped to the map (Swin), larger than it (SAM)
CASES = [(8, 8, 4, False), (8, 8, 4, True), (9, 11, 4, True), (10, 7, 4, False), (5, 13, 7, True), (3, 3, 7, True)]
IDS = [f"{h}x{w}-w{win}-{'s' if s else 'n'}" for h, w, win, s in CASES]
SAM = [WindowGeometry(3, 9, 4, 4, 0, 0), WindowGeometry(3, 3, 5, 5, 0, 0)]  # windows larger than the map


def _all_geoms() -> list[WindowGeometry]:
    return [WindowGeometry.create(h, w, win, s) for h, w, win, s in CASES] + SAM


def _partition(x: torch.Tensor, g: WindowGeometry) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW, wh*ww, C): roll by (-sh, -sw), zero-pad bottom/right, cut into windows."""
    B, H, W, C = x.shape
    x = torch.roll(x, shifts=(-g.sh, -g.sw), dims=(1, 2))
    x = F.pad(x, (0, 0, 0, g.Wp - W, 0, g.Hp - H))
    x = x.view(B, g.nWh, g.wh, g.nWw, g.ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, g.num_windows, g.window_area, C)


def _token_map(g: WindowGeometry) -> torch.Tensor:
    """(1, H, W, 1) holding 1 + h*W + w, so a partitioned copy reads 0 at padded positions."""
    return (torch.arange(g.H * g.W) + 1).view(1, g.H, g.W, 1)


@pytest.mark.parametrize("g", _all_geoms(), ids=IDS + ["sam-3x9-w4", "sam-3x3-w5"])
def test_index_tensors_match_roll_pad_partition(g):
    parts = _partition(_token_map(g), g)[0, :, :, 0]  # (nW, N): 1 + token, 0 at padded positions
    want = torch.where(parts == 0, g.H * g.W, parts - 1)
    assert torch.equal(ops.token_index(g), want)
    # the inverse: each token's window is the partition window it appears in
    window_of = torch.full((g.H * g.W,), -1)
    rows, _ = torch.nonzero(parts, as_tuple=True)
    window_of[parts[parts > 0] - 1] = rows
    assert torch.equal(geometry.token_window_index(g), window_of)
    # one slot per token of the batch, padded positions at the spare last row
    idx = torch.tensor([[0], [g.num_windows - 1]])
    flat = geometry.flat_token_index(g, idx).view(2, g.window_area)
    for b in range(2):
        tok = want[idx[b, 0]]
        assert torch.equal(flat[b], torch.where(tok == g.H * g.W, 2 * g.H * g.W, tok + b * g.H * g.W))


@pytest.mark.parametrize("g", _all_geoms(), ids=IDS + ["sam-3x9-w4", "sam-3x3-w5"])
def test_reference_bodies_match_roll_pad_partition(g):
    gen = torch.Generator().manual_seed(g.H * 100 + g.W)
    B, C = 2, 5
    x = torch.randn(B, g.H, g.W, C, generator=gen)
    parts = _partition(x, g)  # (B, nW, N, C)
    tok = x.abs().mean(-1, keepdim=True)
    want_scores = _partition(tok, g)[..., 0].square().sum(-1).sqrt()
    torch.testing.assert_close(reference.score(x, g), want_scores, rtol=1e-6, atol=0)
    k = max(1, g.num_windows // 2)
    idx = torch.stack([torch.randperm(g.num_windows, generator=gen)[:k].sort().values for _ in range(B)])
    kept = torch.stack([parts[b, idx[b]] for b in range(B)]).reshape(B * k, g.window_area, C)
    assert torch.equal(reference.gather(x, idx, g), kept)
    # scatter: a token of a kept window takes the new value at its (un-shifted) position, every other token its own
    new = torch.randn(B * k, g.window_area, C, generator=gen)
    in_kept = torch.zeros(B, g.num_windows, g.window_area, 1, dtype=torch.bool)
    values = parts.clone()
    for b in range(B):
        in_kept[b, idx[b]] = True
        values[b, idx[b]] = new.view(B, k, g.window_area, C)[b]
    want = _unpartition(torch.where(in_kept, values, parts), g)
    assert torch.equal(reference.scatter(x, new, idx, g), want)
    y = x.clone()
    reference.scatter_inplace(y, new, idx, g)
    assert torch.equal(y, want)
    assert torch.equal(reference.zero_kept(x, idx, g), _unpartition(parts.masked_fill(in_kept, 0), g))


def _unpartition(parts: torch.Tensor, g: WindowGeometry) -> torch.Tensor:
    """The inverse of `_partition`: (B, nW, N, C) -> (B, H, W, C), padded positions dropped, roll undone."""
    B, _, _, C = parts.shape
    x = parts.view(B, g.nWh, g.nWw, g.wh, g.ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, g.Hp, g.Wp, C)
    return torch.roll(x[:, : g.H, : g.W], shifts=(g.sh, g.sw), dims=(1, 2))


@pytest.mark.parametrize(
    "geom",
    [
        WindowGeometry.create(16, 16, 4, True),
        WindowGeometry.create(9, 11, 4, True),  # padded
        WindowGeometry.create(4, 12, 4, True),  # shifted along the width only
        WindowGeometry(4, 16, 4, 4, 2, 2),  # one window row, shifted along both dimensions
        WindowGeometry.create(16, 16, 4, False),
    ],
    ids=str,
)
def test_shift_mask_kinds_rebuild_the_shift_mask(geom):
    """The distinct masks and each window's kind give back the shift mask exactly; at most 4 kinds."""
    kinds = ops.shift_mask_kinds(geom)
    mask = ops.shift_mask(geom)
    if mask is None:
        assert kinds is None
        return
    assert kinds is not None
    masks, which = kinds
    assert masks.shape[0] <= 4 and which.shape == (geom.num_windows,) and which.dtype == torch.int64
    assert torch.equal(masks[which], mask)
