"""The fused eager-inference path of a pruned window block: only the real tokens of the kept windows move.

The general pruned path (`ops.gather_windows` -> norm1 -> attention -> norm2 + MLP -> `ops.scatter_windows`)
copies every slot of the kept windows, padding included, several times: the gather, the zeroing of padded slots,
the residual adds, and a write-back that first re-orders the windows so padded slots carry a real token's value.
On CPU those copies cost as much as a good part of the arithmetic saved by pruning. This path instead

1. gathers the real tokens of the kept windows once, (M, C), straight from the block input (shift included),
2. runs norm1 on them and places them into a zeroed (B*k, N, C) window batch (padded slots enter attention as
   zeros after norm1, as in the dense path),
3. takes the attention output back at the real tokens only, and runs the residual, norm2, MLP and residual on
   those M rows, in place,
4. writes the M rows into the block input (or a copy of it) with one index_copy_.

The output is the same as the general path's (DESIGN.md's identity `where(kept, dense_block(x), x)`); only
the order of the rows fed to the same per-token ops differs. It uses plain aten ops with data-dependent shapes
(nonzero), so the blocks take it only in eager inference on the torch backend (see `SwinBlock._fused_ok`);
fvcore, which traces, sees the M-row linears and counts the FLOPs really done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from .. import ops
from ..ops import WindowGeometry

__all__ = ["KeptTokens", "kept_tokens", "fused_pruned_forward"]


class KeptTokens(NamedTuple):
    """Where the real tokens of the kept windows live.

    src: (M,) int64 row of each real token in the flat (B*H*W, C) block input, image-major, then window (in idx
        order), then position in the window.
    slots: (M,) int64 slot of each real token in the flat (B*k*N, C) window batch; None when no kept window has a
        padded slot (then M = B*k*N and slot i is row i).
    """

    src: torch.Tensor
    slots: torch.Tensor | None


def kept_tokens(g: WindowGeometry, idx: torch.Tensor) -> KeptTokens:
    """(B, k) kept window indices -> the real tokens' rows in the block input and in the window batch."""
    B = idx.shape[0]
    HW = g.H * g.W
    tables = ops.window_tables(g, idx.device)
    tok = tables.token[idx]  # (B, k, N), HW at padded slots
    if B > 1:
        tok = tok + ops.geometry.image_offsets(B, HW, idx.device)
    tok = tok.reshape(-1)
    if tables.pad is None:
        return KeptTokens(tok, None)
    pad = tables.pad[idx].reshape(-1)
    if not bool(pad.any()):
        return KeptTokens(tok, None)
    slots = (~pad).nonzero().squeeze(1)
    return KeptTokens(tok.index_select(0, slots), slots)


def fused_pruned_forward(
    x: torch.Tensor,
    g: WindowGeometry,
    idx: torch.Tensor,
    norm1: nn.Module,
    attend: Callable[[torch.Tensor], torch.Tensor],
    norm2: nn.Module,
    mlp: nn.Module,
    inplace: bool,
) -> torch.Tensor:
    """One pruned pre-norm block on the real tokens of the kept windows (no stochastic depth, no autograd).

    Args:
        x: (B, H, W, C) block input; written in place when `inplace` (the caller owns it), else copied once.
        idx: (B, k) kept window indices.
        attend: (B*k, N, C) normalised windows, zeros at padded slots -> (B*k, N, C) attention output.
    Returns:
        (B, H, W, C): x with the kept windows' real tokens replaced by the block's output.
    """
    B, H, W, C = x.shape
    k, N = idx.shape[1], g.window_area
    kt = kept_tokens(g, idx)
    flat = x.reshape(B * H * W, C)
    t = flat.index_select(0, kt.src)  # (M, C)
    y = norm1(t)
    if kt.slots is not None:
        y = y.new_zeros(B * k * N, C).index_copy_(0, kt.slots, y)
    a = attend(y.view(B * k, N, C)).reshape(B * k * N, C)
    t += a if kt.slots is None else a.index_select(0, kt.slots)
    t += mlp(norm2(t))
    out = x if inplace else x.clone(memory_format=torch.contiguous_format)
    out.view(B * H * W, C).index_copy_(0, kt.src, t.to(out.dtype))
    return out
