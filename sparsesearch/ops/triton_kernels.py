"""Triton backend of the window ops: availability, the per-tensor support test, and the ops themselves.

`sparsesearch.ops` imports this module lazily and only uses it where `AVAILABLE` and `supports(x)` allow. The
functions below have the signatures of `reference` and are differentiable: they call the ``sparsesearch::*``
custom ops (`custom_ops`) with the Triton bodies, whose backward reuses the same kernels. The kernels live in
`triton_impl`.

Set ``TRITON_INTERPRET=1`` before this module is first imported to run the kernels on CPU tensors with the
Triton interpreter (tests); `INTERPRET` records what was in effect.
"""

from __future__ import annotations

import torch

from . import custom_ops
from .geometry import WindowGeometry

__all__ = [
    "AVAILABLE",
    "INTERPRET",
    "UNAVAILABLE_REASON",
    "supports",
    "score_windows",
    "gather_windows",
    "scatter_windows",
]

UNAVAILABLE_REASON: str | None = None
"""Why the kernels cannot be used here (None when AVAILABLE)."""

try:
    from . import triton_impl as _impl
except Exception as exc:  # noqa: BLE001  (triton missing, or a broken installation: fall back to torch)
    AVAILABLE: bool = False
    INTERPRET: bool = False
    UNAVAILABLE_REASON = f"triton could not be imported ({type(exc).__name__}: {exc})"
    _DTYPES: tuple[torch.dtype, ...] = ()
else:
    AVAILABLE = True
    INTERPRET = _impl.INTERPRET
    _DTYPES = _impl.DTYPES


def supports(x: torch.Tensor) -> bool:
    """True when the kernels can run on x: a float32/float16/bfloat16 CUDA tensor, or a CPU tensor when the
    kernels are interpreted (TRITON_INTERPRET=1 at import)."""
    if not AVAILABLE or x.dtype not in _DTYPES:
        return False
    if x.device.type == "cuda":
        return torch.cuda.is_available()
    return INTERPRET and x.device.type == "cpu"


def score_windows(x: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW) float32 window scores; see `reference.score_windows` (equal up to rounding)."""
    return custom_ops.score_windows(x, geom, use_triton=True)


def gather_windows(x: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """(B, H, W, C), (B, k) -> (B*k, wh*ww, C) kept windows, 0 at padded positions; see `reference`."""
    return custom_ops.gather_windows(x, idx, geom, use_triton=True)


def scatter_windows(x: torch.Tensor, windows: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """(B, H, W, C), (B*k, N, C), (B, k) -> a new (B, H, W, C); see `reference.scatter_windows`."""
    return custom_ops.scatter_windows(x, windows, idx, geom, use_triton=True)
