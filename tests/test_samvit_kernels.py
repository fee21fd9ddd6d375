"""The Triton window kernels on SamViT's no-shift geometry (interpreted on CPU) against the torch reference, and
SamViT blocks (windowed and global) run with the Triton backend against the torch backend.

SAM never clamps a window to the map (a map smaller than the window is padded up to one window), so the geometries
here include windows larger than the map, which Swin never produces. TRITON_INTERPRET=1 must be set before the
kernels are first imported (see tests/test_kernels.py); it is set here too.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from sparsesearch import ops  # noqa: E402
from sparsesearch.models.samvit import SamBlock, sam_geometry  # noqa: E402
from sparsesearch.ops import reference  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed (Linux x86-64 only)")
from sparsesearch.ops import triton_backend, triton_impl  # noqa: E402

if not triton_backend.AVAILABLE:
    pytest.skip(f"Triton kernels unavailable: {triton_backend.UNAVAILABLE_REASON}", allow_module_level=True)
if not triton_impl.INTERPRET:
    pytest.skip(
        "triton_impl was imported before TRITON_INTERPRET=1 was set: run pytest with it in the environment",
        allow_module_level=True,
    )

pytestmark = pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")

# (H, W, window, batch): no padding, padding, a window larger than the map on one / both sides
GEOMS = [(8, 8, 4, 2), (10, 7, 4, 2), (3, 9, 4, 1), (3, 3, 5, 2)]


@pytest.mark.parametrize("H,W,w,B", GEOMS)
def test_gather_scatter_score_match_reference(H, W, w, B):
    g = sam_geometry(H, W, w)
    gen = torch.Generator().manual_seed(H * 100 + W)
    x = torch.randn(B, H, W, 8, generator=gen)
    k = max(1, g.num_windows // 2)
    idx = reference.select(reference.score(x, g), k)
    scores_t = ops.score_windows(x, g, "triton")
    torch.testing.assert_close(scores_t, reference.score(x, g), rtol=1e-6, atol=1e-6)
    got = ops.gather_windows(x, idx, g, "triton")
    assert torch.equal(got, reference.gather(x, idx, g))
    win = torch.randn(got.shape, generator=gen)
    assert torch.equal(ops.scatter_windows(x, win, idx, g, "triton"), reference.scatter(x, win, idx, g))
    with torch.no_grad():
        y = x.clone()
        out = ops.scatter_windows(y, win, idx, g, "triton", inplace=True)
        assert torch.equal(out, reference.scatter(x, win, idx, g))


@pytest.mark.parametrize("global_attn", [False, True])
@pytest.mark.parametrize("H,W,w,B", GEOMS[:3])
def test_samvit_blocks_triton_equal_torch(H, W, w, B, global_attn):
    torch.manual_seed(0)
    blk = SamBlock(16, 2, w, (H, W) if global_attn else (w, w), global_attn).eval()
    x = torch.randn(B, H, W, 16)
    blk.window_size = w
    for p in (0.3, 0.6, 0.99):
        blk.sparsity = p
        with torch.no_grad():
            blk.kernel_backend = "torch"
            want = blk(x)
            blk.kernel_backend = "triton"
            got = blk(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_global_block_gradients_triton_equal_torch():
    torch.manual_seed(1)
    blk = SamBlock(16, 2, 4, (10, 7), True)
    blk.sparsity = 0.5
    x = torch.randn(2, 10, 7, 16)
    grads = []
    for backend in ("torch", "triton"):
        blk.zero_grad()
        blk.kernel_backend = backend
        xi = x.clone().requires_grad_(True)
        blk(xi).square().sum().backward()
        grads.append((xi.grad, blk.attn.rel_pos_h.grad.clone()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-5)
