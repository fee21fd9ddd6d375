"""Window ops for pruned blocks, behind one dispatch point.

`backend="auto"` (the default) uses the Triton kernels for CUDA tensors when they are available and the torch
reference otherwise. Override per call with `backend=` or globally with the environment variable
``SPARSESEARCH_KERNELS=torch|triton|auto``.
"""
from __future__ import annotations

import os
from typing import Literal

import torch

from ..errors import SparseSearchError
from . import reference
from .geometry import WindowGeometry, keep_count, relative_position_index, shift_mask, token_index

__all__ = [
    "WindowGeometry",
    "keep_count",
    "token_index",
    "shift_mask",
    "relative_position_index",
    "resolve_backend",
    "score_windows",
    "select_windows",
    "gather_windows",
    "scatter_windows",
]

Backend = Literal["auto", "torch", "triton"]
_BACKENDS = ("auto", "torch", "triton")


def _triton_ops():
    """The Triton kernel module, or None when Triton (or its kernels) cannot be used here."""
    try:
        from . import triton_kernels  # noqa: PLC0415  (optional: imports triton)
    except ImportError:
        return None
    return triton_kernels if triton_kernels.AVAILABLE else None


def resolve_backend(x: torch.Tensor, backend: Backend | None = None) -> str:
    """Pick "torch" or "triton" for tensor x from the argument, then SPARSESEARCH_KERNELS, then the device."""
    choice = backend or os.environ.get("SPARSESEARCH_KERNELS", "auto")
    if choice not in _BACKENDS:
        raise SparseSearchError(f"unknown kernel backend {choice!r}: use one of {', '.join(_BACKENDS)}")
    if choice == "torch":
        return "torch"
    kernels = _triton_ops()
    if choice == "triton":
        if kernels is None:
            raise SparseSearchError("the Triton backend was requested but triton is not installed or usable here")
        return "triton"
    return "triton" if kernels is not None and kernels.supports(x) else "torch"


def _impl(x: torch.Tensor, backend: Backend | None):
    return _triton_ops() if resolve_backend(x, backend) == "triton" else reference


def score_windows(x: torch.Tensor, geom: WindowGeometry, backend: Backend | None = None) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW) float32 window scores; see `reference.score_windows`."""
    return _impl(x, backend).score_windows(x, geom)


def select_windows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, nW) scores -> (B, k) int64 kept indices, ascending; ties go to the lower index."""
    return reference.select_windows(scores, k)


def gather_windows(
    x: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry, backend: Backend | None = None
) -> torch.Tensor:
    """(B, H, W, C), (B, k) -> (B*k, wh*ww, C) kept windows; see `reference.gather_windows`."""
    return _impl(x, backend).gather_windows(x, idx, geom)


def scatter_windows(
    x: torch.Tensor, windows: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry, backend: Backend | None = None
) -> torch.Tensor:
    """(B, H, W, C), (B*k, N, C), (B, k) -> (B, H, W, C); see `reference.scatter_windows`."""
    return _impl(x, backend).scatter_windows(x, windows, idx, geom)
