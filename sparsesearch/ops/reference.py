"""Torch bodies of the window ops: scoring, selection, gather, scatter (out of place and in place), zeroing.

The body of the torch backend (CPU, and whatever the kernels do not take) and the reference the Triton kernels
are tested against bit for bit (tests/test_kernels.py); this module itself is checked against plain roll / pad /
partition models in tests/test_ops_geometry.py and, through the pruned blocks, tests/reference_swin.py. It never
builds a rolled or padded copy of the full feature map: everything goes through the index tensors of `geometry`.
The public entry points are in `sparsesearch.ops`; these functions take no backend and do no shape checks.
"""

from __future__ import annotations

import torch

from .geometry import WindowGeometry, flat_token_index, image_offsets, token_index, window_tables

__all__ = ["score", "select", "gather", "scatter", "scatter_inplace", "zero_kept"]


def score(x: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """Window importance, the rule of the README's "Window pruning, exactly".

    Args:
        x: (B, H, W, C) block input.
    Returns:
        (B, nW) float32: L2 norm over each window of the token scores mean_c |x| (padded positions score 0).
    """
    B, H, W, _ = x.shape
    tok = x.abs().mean(dim=-1, dtype=torch.float32).reshape(B, H * W)  # (vector_norm(ord=1) is 30x slower on CPU)
    if geom.padded:
        tok = torch.cat([tok, tok.new_zeros(B, 1)], dim=1)  # slot H*W scores 0: padded positions
    return torch.linalg.vector_norm(tok[:, token_index(geom, x.device)], dim=-1)  # (B, nW, N) -> (B, nW)


def select(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest-scoring windows of each image.

    Ties go to the lower window index. The result is sorted ascending so that gathered windows keep raster
    order, which every backend reproduces exactly.

    Args:
        scores: (B, nW) window scores.
    Returns:
        (B, k) int64 window indices, ascending within each row.
    """
    if k == 1:  # the first of the highest scores: one op instead of two sorts
        return scores.argmax(dim=1, keepdim=True)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.sort(order, dim=1).values


def gather(x: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """Copy the kept windows of the shifted, padded partition into a dense batch.

    Args:
        x: (B, H, W, C).
        idx: (B, k) kept window indices.
    Returns:
        (B*k, wh*ww, C) windows, image-major then in idx order; padded positions are 0.
    """
    B, H, W, C = x.shape
    k, N = idx.shape[1], geom.window_area
    tables = window_tables(geom, x.device)
    flat = tables.safe[idx]  # (B, k, N); padded slots read a real token of their window, zeroed below
    if torch.jit.is_tracing():  # ONNX export: the batch size stays a graph value, not a constant of the trace
        flat = flat + (torch.arange(B, device=x.device) * (H * W)).view(-1, 1, 1)
    elif B > 1:
        flat = flat + image_offsets(B, H * W, x.device)
    out = x.reshape(B * H * W, C).index_select(0, flat.reshape(-1)).view(B * k, N, C)
    if tables.pad is not None:
        out = out.masked_fill(tables.pad[idx].view(B * k, N, 1), 0)
    return out


def scatter(x: torch.Tensor, windows: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """Write processed windows back to their (un-shifted) tokens; every other token keeps its value from x.

    Args:
        x: (B, H, W, C) block input.
        windows: (B*k, wh*ww, C) new values of the kept windows (padded positions are discarded).
        idx: (B, k) kept window indices, as given to `gather`.
    Returns:
        (B, H, W, C) a new tensor (x is not modified).
    """
    B, H, W, C = x.shape
    flat = flat_token_index(geom, idx)
    out = torch.cat([x.reshape(B * H * W, C), x.new_empty(1, C)], dim=0)
    out.index_copy_(0, flat, windows.reshape(-1, C).to(x.dtype))
    return out[: B * H * W].view(B, H, W, C)


def scatter_inplace(x: torch.Tensor, windows: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry) -> None:
    """Write the kept windows into x itself (index_copy_); tokens of pruned windows are neither read nor written.

    A padded position is redirected to position 0 of its window (always a real token: the top-left corner of every
    window lies inside the map), with that position's value as source, so every write lands on a kept token and
    duplicate writes carry equal values.

    Args:
        x: (B, H, W, C), contiguous; modified.
        windows: (B*k, wh*ww, C), cast to x's dtype (padded positions are discarded).
        idx: (B, k) kept window indices, as given to `gather`.
    """
    B, H, W, C = x.shape
    k, N = idx.shape[1], geom.window_area
    tables = window_tables(geom, x.device)
    tok = tables.safe[idx]  # (B, k, N)
    if B > 1:
        tok = tok + image_offsets(B, H * W, x.device)
    rows = windows.reshape(B * k * N, C).to(x.dtype)
    if tables.src is not None:
        src = tables.src[idx].view(B * k, N) + image_offsets(B * k, N, x.device).view(B * k, 1)
        rows = rows.index_select(0, src.reshape(-1))
    x.view(B * H * W, C).index_copy_(0, tok.reshape(-1), rows)


def zero_kept(x: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """(B, H, W, C), (B, k) -> a new (B, H, W, C): x with the tokens of the kept windows zeroed (the gradient of
    the scatter with respect to x)."""
    B, H, W, C = x.shape
    flat = flat_token_index(geom, idx)
    out = torch.cat([x.reshape(B * H * W, C), x.new_zeros(1, C)], dim=0)
    out.index_fill_(0, flat, 0)
    return out[: B * H * W].view(B, H, W, C)
