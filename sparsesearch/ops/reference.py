"""Torch reference implementation of window scoring, selection, gather and scatter.

This is the path used on CPU and the reference every other implementation is tested against. It never builds
a rolled or padded copy of the full feature map: everything goes through the precomputed token index.
"""

from __future__ import annotations

import torch

from .geometry import WindowGeometry, image_offsets, token_index, window_tables

__all__ = ["score_windows", "select_windows", "gather_windows", "scatter_windows"]


def score_windows(x: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """Window importance, DESIGN.md's rule.

    Args:
        x: (B, H, W, C) block input.
    Returns:
        (B, nW) float32: L2 norm over each window of the token scores mean_c |x| (padded positions score 0).
    """
    B, H, W, _ = x.shape
    # squared before indexing (the same values as squaring the indexed copy): nW*N >= H*W elements are indexed
    tok = (
        x.abs().mean(dim=-1, dtype=torch.float32).reshape(B, H * W).square()
    )  # (linalg.vector_norm(ord=1) is 30x slower on CPU)
    if geom.padded:
        tok = torch.cat([tok, tok.new_zeros(B, 1)], dim=1)  # slot H*W scores 0: padded positions
    per_window = tok[:, token_index(geom, x.device)]  # (B, nW, N)
    return per_window.sum(dim=-1).sqrt()


def select_windows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest-scoring windows of each image.

    Ties go to the lower window index. The result is sorted ascending so that gathered windows keep raster
    order, which every backend reproduces exactly.

    Args:
        scores: (B, nW) window scores.
    Returns:
        (B, k) int64 window indices, ascending within each row.
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.sort(order, dim=1).values


def _flat_token_index(geom: WindowGeometry, idx: torch.Tensor) -> torch.Tensor:
    """(B*k*N,) index into a (B*H*W + 1, C) buffer; padded positions map to the last row."""
    B = idx.shape[0]
    HW = geom.H * geom.W
    tok = token_index(geom, idx.device)[idx]  # (B, k, N)
    base = (torch.arange(B, device=idx.device) * HW).view(B, 1, 1)
    spare = base[-1:] + HW  # (1, 1, 1) = B*HW, the spare last row; a graph value when traced (dynamic batch)
    flat = torch.where(tok == HW, spare, tok + base)
    return flat.reshape(-1)


def gather_windows(x: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
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


def scatter_windows(x: torch.Tensor, windows: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """Write processed windows back to their (un-shifted) tokens; every other token keeps its value from x.

    Args:
        x: (B, H, W, C) block input.
        windows: (B*k, wh*ww, C) new values of the kept windows (padded positions are discarded).
        idx: (B, k) kept window indices, as given to gather_windows.
    Returns:
        (B, H, W, C) a new tensor (x is not modified).
    """
    B, H, W, C = x.shape
    flat = _flat_token_index(geom, idx)
    out = torch.cat([x.reshape(B * H * W, C), x.new_empty(1, C)], dim=0)
    out.index_copy_(0, flat, windows.reshape(-1, C).to(x.dtype))
    return out[: B * H * W].view(B, H, W, C)
